"""Tables of the job store: jobs, their events (status, phase, progress, logs, outputs), API keys, and the
workers seen lately with the base model each serves.

Rows are internal; the API answers with the public envelope of `ltx2trainer.schemas.TrainingJob`, never a row.
Every job belongs to one owner (the account of the API key that created it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ltx2trainer.jobs.db import Base, utcnow


class JobStatus:
    """Native job statuses (docs/service.md). Terminal ones never change again."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


PHASES = ("fetching", "preparing", "encoding", "training", "validating", "publishing")


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_status_updated", "status", "updated_at"),  # the lost-job sweep (worker/app.py)
        Index("ix_jobs_owner_dataset", "owner", "dataset_id"),  # a dataset's trainings (jobs/datasets.py)
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the key that submitted it
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    phase: Mapped[str | None] = mapped_column(String(16), default=None)
    app_id: Mapped[str | None] = mapped_column(String(128), default=None)  # set when submitted via the fal facade
    input: Mapped[dict[str, Any]]
    # the input's `dataset_id` (a training on a prepared dataset), as a column so a dataset's trainings are one
    # indexed query; set from the input when the job is created
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    adjustments: Mapped[list[Any]] = mapped_column(default=list)
    progress: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    output: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    usage: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    fal_webhook: Mapped[str | None] = mapped_column(String(2048), default=None)
    # Where the client reached the gateway: links in webhooks sent later by workers point there.
    public_base_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), default=None)
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(256), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_terminal(self) -> bool:
        return self.status in JobStatus.TERMINAL


class JobEventRow(Base):
    """One thing that happened to a job, in order: its id is the SSE event id (resume with Last-Event-ID)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # status | phase | progress | log | output | checkpoint
    data: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    """An API key: `<id>:<secret>` is what clients send; only a hash of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    secret_hash: Mapped[str] = mapped_column(String(128))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Spending limit of this key in exact nano-dollars (None: unlimited); checked before a job is queued.
    spend_limit_nano_usd: Mapped[int | None] = mapped_column(BigInteger, default=None)


class WorkerRow(Base):
    """A training worker and the base model it serves, as it reported at start-up; `seen_at` is refreshed by
    its maintenance thread while it runs (ltx2trainer.jobs.workers)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)  # the Celery node name, e.g. trainer@host
    model: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # BaseModelInfo.as_dict(), if usable
    model_error: Mapped[str | None] = mapped_column(Text, default=None)  # why the configured model is not
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class JobMetricRow(Base):
    """One training step's metrics (written by the worker, `ltx2trainer.jobs.metrics`). (job, step) is the key:
    a step re-run after a resume overwrites its row. Held-out losses, measured per checkpoint and not per step,
    have a table of their own: `JobCheckpointMetricRow`."""

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    video_loss: Mapped[float | None] = mapped_column(Float, default=None)
    audio_loss: Mapped[float | None] = mapped_column(Float, default=None)
    learning_rate: Mapped[float | None] = mapped_column(Float, default=None)
    grad_norm: Mapped[float | None] = mapped_column(Float, default=None)
    sigma: Mapped[float | None] = mapped_column(Float, default=None)


class JobCheckpointMetricRow(Base):
    """One published checkpoint's losses (written by the worker when it records the checkpoint, and for the
    final step when the job succeeds; `ltx2trainer.jobs.metrics`): the loss on the held-out samples at fixed
    noise and sigmas, and the training loss shown with the checkpoint. (job, step) is the key: a checkpoint
    published again by a resumed attempt overwrites its row."""

    __tablename__ = "job_checkpoint_metrics"

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holdout_loss: Mapped[float | None] = mapped_column(Float, default=None)
    train_loss: Mapped[float | None] = mapped_column(Float, default=None)
