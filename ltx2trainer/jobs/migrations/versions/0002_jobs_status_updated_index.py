"""jobs: an index on status and updated_at for the lost-job sweep

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 09:44:27.702479
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_updated', ['status', 'updated_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_updated')

