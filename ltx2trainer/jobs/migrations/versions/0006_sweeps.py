"""sweeps: a grid of trainings on one dataset (jobs/sweeps.py)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:54:24.845482
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ltx2trainer.jobs.db

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('dataset_id', sa.String(length=64), nullable=False),
    sa.Column('base', sa.JSON(), nullable=False),
    sa.Column('grid', sa.JSON(), nullable=False),
    sa.Column('points', sa.JSON(), nullable=False),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index('ix_sweeps_owner_created', ['owner', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index('ix_sweeps_owner_created')

    op.drop_table('sweeps')

