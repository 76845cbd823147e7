"""Reading jobs: one job (owner-scoped), a user's history with cursor pagination, events and logs.

Writes go through `ltx2trainer.jobs.lifecycle`; this module only reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select

from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.lifecycle import queue_position
from ltx2trainer.jobs.models import JobEventRow, JobRow, JobStatus

MAX_PAGE = 100


class InvalidCursor(ValueError):
    pass


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, job_id: str, owner: str | None = None) -> JobRow | None:
        """The job, or None if it does not exist or belongs to another owner (callers answer 404 either way)."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is None or (owner is not None and job.owner != owner):
                return None
            return job

    def queue_position(self, job: JobRow) -> int | None:
        if job.status != JobStatus.QUEUED:
            return None
        with self.db.session() as session:
            return queue_position(session, job)

    def history(self, owner: str | None, *, status: str | None = None, limit: int = 20,
                cursor: str | None = None) -> tuple[list[JobRow], str | None]:
        """Jobs newest first (all owners when `owner` is None: admins); returns (page, next cursor)."""
        limit = max(1, min(limit, MAX_PAGE))
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if status is not None:
            query = query.where(JobRow.status == status)
        if cursor:
            created_at, job_id = _decode_cursor(cursor)
            query = query.where((JobRow.created_at < created_at)
                                | ((JobRow.created_at == created_at) & (JobRow.id < job_id)))
        with self.db.session() as session:
            rows = list(session.scalars(query))
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    def events(self, job_id: str, *, after_id: int = 0, limit: int = 500,
               kinds: tuple[str, ...] | None = None) -> list[JobEventRow]:
        query = select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.id > after_id)
        if kinds:
            query = query.where(JobEventRow.kind.in_(kinds))
        with self.db.session() as session:
            return list(session.scalars(query.order_by(JobEventRow.id).limit(limit)))

    def last_logs(self, job_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` log lines, oldest first."""
        query = (select(JobEventRow.data).where(JobEventRow.job_id == job_id, JobEventRow.kind == "log")
                 .order_by(JobEventRow.id.desc()).limit(limit))
        with self.db.session() as session:
            return list(reversed(list(session.scalars(query))))

    def counts_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        counts = {status: 0 for status in JobStatus.ALL}
        counts.update({status: count for status, count in rows})
        return counts

    def running_jobs(self) -> list[JobRow]:
        with self.db.session() as session:
            return list(session.scalars(select(JobRow).where(JobRow.status == JobStatus.RUNNING)))

    def queued_before(self, moment: dt.datetime) -> list[str]:
        """Queued jobs last submitted or published before `moment`, oldest first."""
        with self.db.session() as session:
            return list(session.scalars(select(JobRow.id).where(
                JobRow.status == JobStatus.QUEUED, JobRow.updated_at < moment).order_by(JobRow.created_at)))

    def expired_leases(self, now: dt.datetime | None = None) -> list[str]:
        """Running jobs whose worker stopped renewing its lease (crashed or killed)."""
        now = now or utcnow()
        with self.db.session() as session:
            return list(session.scalars(select(JobRow.id).where(
                JobRow.status == JobStatus.RUNNING, JobRow.lease_expires_at < now)))


def _encode_cursor(row: JobRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        moment = dt.datetime.fromisoformat(created_at)
        moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
        if not isinstance(job_id, str) or "\x00" in job_id:
            raise ValueError("not one of our job ids")
        return moment, job_id
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCursor(f"invalid cursor: {cursor[:40]!r}") from exc
