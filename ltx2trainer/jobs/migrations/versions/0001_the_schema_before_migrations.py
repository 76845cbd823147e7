"""The schema before migrations: what `create_all` made (databases without a version table are stamped here).

Revision ID: 0001
Revises: 
Create Date: 2026-12-03 09:44:15.893282
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ltx2trainer.jobs.db

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('secret_hash', sa.String(length=128), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('spend_limit_nano_usd', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_owner'), ['owner'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('api_key_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=True),
    sa.Column('app_id', sa.String(length=128), nullable=True),
    sa.Column('input', sa.JSON(), nullable=False),
    sa.Column('adjustments', sa.JSON(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=True),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('usage', sa.JSON(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('webhook_url', sa.String(length=2048), nullable=True),
    sa.Column('fal_webhook', sa.String(length=2048), nullable=True),
    sa.Column('public_base_url', sa.String(length=2048), nullable=True),
    sa.Column('idempotency_key', sa.String(length=256), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('cancel_requested_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=256), nullable=True),
    sa.Column('lease_expires_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'idempotency_key', name='uq_jobs_owner_idempotency_key')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_owner_created', ['owner', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)

    op.create_table('workers',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('model', sa.JSON(), nullable=True),
    sa.Column('model_error', sa.Text(), nullable=True),
    sa.Column('started_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('seen_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_seen_at'), ['seen_at'], unique=False)

    op.create_table('job_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.create_index('ix_job_events_job_id_id', ['job_id', 'id'], unique=False)

    op.create_table('settlements',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('api_key_id', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('steps_completed', sa.Integer(), nullable=False),
    sa.Column('steps_billed', sa.Integer(), nullable=False),
    sa.Column('unit_price_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('amount_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('settled_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('settlements', schema=None) as batch_op:
        batch_op.create_index('ix_settlements_owner_settled', ['owner', 'settled_at'], unique=False)

    op.create_table('usage_records',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('api_key_id', sa.String(length=64), nullable=True),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('unit_price_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'step', name='uq_usage_records_job_step')
    )
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.create_index('ix_usage_records_owner_created', ['owner', 'created_at'], unique=False)

    op.create_table('webhook_messages',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('flavor', sa.String(length=16), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_messages', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_messages_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_messages_job_id'), ['job_id'], unique=False)

    op.create_table('webhook_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', ltx2trainer.jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['webhook_messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_attempts_message_id'), ['message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_attempts_message_id'))

    op.drop_table('webhook_attempts')
    with op.batch_alter_table('webhook_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_messages_job_id'))
        batch_op.drop_index('ix_webhook_messages_due')

    op.drop_table('webhook_messages')
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_records_owner_created')

    op.drop_table('usage_records')
    with op.batch_alter_table('settlements', schema=None) as batch_op:
        batch_op.drop_index('ix_settlements_owner_settled')

    op.drop_table('settlements')
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index('ix_job_events_job_id_id')

    op.drop_table('job_events')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_seen_at'))

    op.drop_table('workers')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created')
        batch_op.drop_index('ix_jobs_owner_created')

    op.drop_table('jobs')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_owner'))

    op.drop_table('api_keys')
