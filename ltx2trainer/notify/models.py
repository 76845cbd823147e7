"""Tables of what reacts to job transitions: the webhook outbox (a message per event to deliver, and every
delivery attempt) and billing (the per-step usage ledger and one settlement per finished job).

An outbox row is written in the same transaction as the status change it reports, so a webhook is never
lost and never sent for a change that was rolled back. A delivery worker sweeps rows that are due.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ltx2trainer.jobs.db import Base, utcnow


class WebhookStatus:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt, or the receiver answered 410 Gone


class WebhookMessageRow(Base):
    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Standard Webhooks `webhook-id`
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    flavor: Mapped[str] = mapped_column(String(16))  # "native" (webhook_url) | "fal" (fal_webhook)
    event_type: Mapped[str] = mapped_column(String(64))  # e.g. training.succeeded
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body that is signed and sent
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class WebhookAttemptRow(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), ForeignKey("webhook_messages.id", ondelete="CASCADE"),
                                            index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class UsageRecordRow(Base):
    """One completed training step of one job: the ledger. (job, step) is unique, so a step re-run after a
    crash and resume is never recorded, nor billed, twice. Money is in exact integer nano-dollars."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("job_id", "step", name="uq_usage_records_job_step"),
        Index("ix_usage_records_owner_created", "owner", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    step: Mapped[int] = mapped_column(Integer)
    unit_price_nano_usd: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SettlementRow(Base):
    """What a finished job was charged: written once, when it reaches its terminal state."""

    __tablename__ = "settlements"
    __table_args__ = (Index("ix_settlements_owner_settled", "owner", "settled_at"),)

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded | cancelled | failed
    steps_completed: Mapped[int] = mapped_column(Integer)
    steps_billed: Mapped[int] = mapped_column(Integer)
    unit_price_nano_usd: Mapped[int] = mapped_column(BigInteger)
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(256), default="")
    settled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
