"""Billing's tables: the per-step usage ledger and one settlement per finished job (written by
`ltx2trainer.billing.ledger`; the migrations in `ltx2trainer/jobs/migrations` create them)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ltx2trainer.jobs.db import Base, utcnow


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
