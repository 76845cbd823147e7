"""a dataset's last time on the queue (the lost-message sweep) and a job's dataset as an indexed column

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ltx2trainer.jobs.db

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dataset_id', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_jobs_owner_dataset', ['owner', 'dataset_id'], unique=False)

    # Existing rows: a dataset was last queued when it was created; a job's dataset is in its stored input.
    bind = op.get_bind()
    datasets = sa.table('datasets', sa.column('id', sa.String), sa.column('created_at', sa.DateTime),
                        sa.column('queued_at', sa.DateTime))
    bind.execute(datasets.update().values(queued_at=datasets.c.created_at))
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('input', sa.JSON),
                    sa.column('dataset_id', sa.String))
    # Read in Python: JSON path syntax differs between SQLite and PostgreSQL, and this runs once.
    for job_id, stored in bind.execute(sa.select(jobs.c.id, jobs.c.input)).all():
        dataset_id = (stored or {}).get('dataset_id')
        if dataset_id:
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(dataset_id=dataset_id))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner_dataset')
        batch_op.drop_column('dataset_id')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('queued_at')
