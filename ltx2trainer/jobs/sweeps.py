"""Sweeps: one dataset, a small grid of training settings, one training per point (`api/routes_sweeps.py`).

A sweep row only groups its trainings: each is an ordinary job (queued, billed, listed, promotable like any),
and the sweep keeps which grid point each one is. Comparing them reads the jobs themselves.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Index, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ltx2trainer.jobs.db import Base, Database, utcnow
from ltx2trainer.jobs.models import JobRow


class SweepRow(Base):
    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    dataset_id: Mapped[str] = mapped_column(String(64))
    base: Mapped[dict[str, Any]]  # the settings every training shares
    grid: Mapped[dict[str, Any]]  # field -> list of values
    points: Mapped[list[Any]]  # [{"training_id", "values": {field: value}}], in grid order
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def new_sweep_id() -> str:
    return str(uuid.uuid4())


def new_sweep(sweep_id: str, owner: str, dataset_id: str, base: dict[str, Any], grid: dict[str, Any],
              points: list[dict[str, Any]]) -> SweepRow:
    """A sweep row, not stored yet: stored with its trainings, in their transaction (`Lifecycle.submit_all`)."""
    return SweepRow(id=sweep_id, owner=owner, dataset_id=dataset_id, base=base, grid=grid, points=points)


def get_sweep(db: Database, sweep_id: str, owner: str) -> SweepRow | None:
    with db.session() as session:
        row = session.get(SweepRow, sweep_id)
        if row is None or row.owner != owner:
            return None
        session.expunge(row)
        return row


def sweep_jobs(db: Database, row: SweepRow) -> dict[str, JobRow]:
    ids = [point["training_id"] for point in row.points]
    with db.session() as session:
        jobs = {job.id: job for job in session.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
        for job in jobs.values():
            session.expunge(job)
        return jobs
