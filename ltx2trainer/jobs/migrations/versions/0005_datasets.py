"""datasets: a training's data prepared once and trained on by many jobs (jobs/datasets.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 15:43:21.908231
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ltx2trainer.jobs.db

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=True),
    sa.Column('adjustments', sa.JSON(), nullable=False),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('files', sa.JSON(), nullable=True),
    sa.Column('encoded', sa.JSON(), nullable=False),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_expires_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.create_index('ix_datasets_owner_created', ['owner', 'created_at'], unique=False)
        batch_op.create_index('ix_datasets_owner_source', ['owner', 'source_sha256'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index('ix_datasets_owner_source')
        batch_op.drop_index('ix_datasets_owner_created')

    op.drop_table('datasets')
