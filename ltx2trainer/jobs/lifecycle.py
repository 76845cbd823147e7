"""The only place a job's status changes, and where everything that happens to a job is recorded.

Allowed transitions: queued → running → succeeded | failed | cancelled, queued → cancelled, and
running → queued when a crashed worker's lease runs out (the job resumes from its checkpoint). Terminal
states never change. Each change writes a `job_events` row and calls the listeners (webhook outbox,
billing) inside the same transaction, so what they record always matches the job.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.models import JobEventRow, JobRow, JobStatus

log = logging.getLogger(__name__)

# listener(session, job, old status or None for a new job, new status)
TransitionListener = Callable[[Session, JobRow, str | None, str], None]
# event listener(session, job, event kind, event data): told of the events that are not status changes and that
# listeners act on (today: "checkpoint"), in the transaction that records the event
EventListener = Callable[[Session, JobRow, str, dict[str, Any]], None]
CHECKPOINT_EVENT = "checkpoint"  # the job_events kind of a published checkpoint
# The job's own last-step output, kept when one of its checkpoints is made its output (jobs/promotion.py)
FINAL_OUTPUT_EVENT = "final_output"
PROGRESS_EVENT_INTERVAL_S = 1.0  # progress is stored on every step, but an event at most once a second


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # was queued: it will never start
    REQUESTED = "requested"  # is running: it stops at its next check
    ALREADY_TERMINAL = "already_terminal"
    NOT_FOUND = "not_found"


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"this Idempotency-Key was already used for job {job_id} with a different request")
        self.job_id = job_id


class InvalidTransition(Exception):
    pass


def request_hash(body: dict[str, Any]) -> str:
    """Fingerprint of a request body, to tell an idempotent replay from a reused key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class Lifecycle:
    def __init__(self, db: Database, listeners: Sequence[TransitionListener] = (),
                 event_listeners: Sequence[EventListener] = ()) -> None:
        self.db = db
        self.listeners = list(listeners)
        self.event_listeners = list(event_listeners)

    # --- creation -------------------------------------------------------------------------------------

    def submit(
        self,
        owner: str,
        training_input: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        body_hash: str = "",
        guard: Callable[[Session], None] | None = None,
        **fields: Any,
    ) -> tuple[JobRow, bool]:
        """Create a queued job (`fields`: the rest of `new_job`'s); returns (job, replayed). A replayed
        Idempotency-Key returns the original job.

        `guard(session)` runs first in the transaction that inserts the job and may refuse it by raising (the
        budget check: what it reads and the insert are one atomic step)."""
        if idempotency_key:
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return self._replay(existing, body_hash)
        job = self.new_job(owner, training_input, idempotency_key=idempotency_key, body_hash=body_hash, **fields)
        try:
            self.submit_all([job], guard=guard)
        except IntegrityError:
            # Two submits with the same key raced; the other one won.
            existing = self._by_idempotency_key(owner, idempotency_key or "")
            if existing is None:
                raise
            return self._replay(existing, body_hash)
        return job, False

    @staticmethod
    def new_job(
        owner: str,
        training_input: dict[str, Any],
        *,
        adjustments: list[dict[str, Any]] | None = None,
        app_id: str | None = None,
        webhook_url: str | None = None,
        fal_webhook: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        body_hash: str = "",
        usage: dict[str, Any] | None = None,
        public_base_url: str | None = None,
        api_key_id: str | None = None,
    ) -> JobRow:
        """A queued job, not stored yet (its id is known already): `submit_all` creates it."""
        return JobRow(
            id=str(uuid.uuid4()), owner=owner, status=JobStatus.QUEUED, input=training_input,
            dataset_id=training_input.get("dataset_id"),
            adjustments=adjustments or [], app_id=app_id, webhook_url=webhook_url, fal_webhook=fal_webhook,
            metadata_=metadata, idempotency_key=idempotency_key or None, request_hash=body_hash, usage=usage,
            public_base_url=public_base_url, api_key_id=api_key_id,
            progress={"step": 0, "total_steps": training_input.get("number_of_steps"), "loss": None, "eta_s": None},
        )

    def submit_all(self, jobs: Sequence[JobRow], *, guard: Callable[[Session], None] | None = None,
                   alongside: Sequence[Any] = ()) -> None:
        """Create the new jobs of `new_job` in one transaction: all of them, or none (a sweep's trainings).

        `guard(session)` runs first and may refuse them all by raising (the budget check of the jobs together:
        what it reads and the inserts are one atomic step). Each job is recorded as `submit` records one (its
        status event, the listeners told); `alongside`: other new rows stored in the same transaction (the
        sweep that groups them)."""
        with self.db.session() as session:
            if guard is not None:
                guard(session)
            for job in jobs:
                session.add(job)
                session.flush()
                self._event(session, job, "status", {"status": job.status, "phase": None})
                self._notify(session, job, None, job.status)
            session.add_all(alongside)

    def replay(self, owner: str, idempotency_key: str | None, body_hash: str) -> JobRow | None:
        """The job an earlier request with this Idempotency-Key created (IdempotencyConflict if its body
        differed), or None when the key is new."""
        if not idempotency_key:
            return None
        existing = self._by_idempotency_key(owner, idempotency_key)
        return None if existing is None else self._replay(existing, body_hash)[0]

    def _by_idempotency_key(self, owner: str, key: str) -> JobRow | None:
        with self.db.session() as session:
            return session.scalar(select(JobRow).where(JobRow.owner == owner, JobRow.idempotency_key == key))

    @staticmethod
    def _replay(existing: JobRow, body_hash: str) -> tuple[JobRow, bool]:
        if existing.request_hash != body_hash:
            raise IdempotencyConflict(existing.id)
        return existing, True

    # --- the worker's side ----------------------------------------------------------------------------

    def start(self, job_id: str, worker: str, lease_s: float, max_attempts: int) -> JobRow | None:
        """Claim a job for `worker`: queued → running, or a running job whose lease expired (a crashed
        worker's job, resumed). Returns None if the job is terminal, cancelled, or held by a live lease."""
        now = utcnow()
        with self.db.session() as session:
            job = session.get(JobRow, job_id, with_for_update=not self.db.is_sqlite)
            if job is None or job.is_terminal:
                return None
            if job.cancel_requested_at is not None:
                self._transition(session, job, JobStatus.CANCELLED, error={"type": "cancelled",
                                                                          "message": "cancelled before it started"})
                return None
            if job.status == JobStatus.RUNNING and job.lease_expires_at and job.lease_expires_at > now \
                    and job.lease_owner != worker:
                return None  # a duplicate delivery while the job is running elsewhere
            if job.attempt >= max_attempts:
                self._transition(session, job, JobStatus.FAILED, error={
                    "type": "runner_disconnected",
                    "message": f"the job's worker was lost {job.attempt} times; giving up"})
                return None
            job.attempt += 1
            job.lease_owner = worker
            job.lease_expires_at = now + dt.timedelta(seconds=lease_s)
            if job.status == JobStatus.QUEUED:
                job.started_at = job.started_at or now
                self._transition(session, job, JobStatus.RUNNING)
            else:
                self._event(session, job, "log", log_line(f"resuming on {worker} (attempt {job.attempt})", "WARN"))
            return job

    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False if the job is no longer this worker's (then it must stop)."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is None or job.is_terminal or job.lease_owner != worker:
                return False
            job.lease_expires_at = utcnow() + dt.timedelta(seconds=lease_s)
            return True

    def set_phase(self, job_id: str, phase: str) -> None:
        with self.db.session() as session:
            job = self._running(session, job_id)
            if job is not None and job.phase != phase:
                job.phase = phase
                self._event(session, job, "phase", {"phase": phase})

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Store the latest progress on the job; an event at most every PROGRESS_EVENT_INTERVAL_S."""
        with self.db.session() as session:
            job = self._running(session, job_id)
            if job is None:
                return
            previous = job.progress or {}
            job.progress = {**previous, **progress, "updated_at": utcnow().isoformat()}
            last = previous.get("event_at")
            due = last is None or (utcnow() - dt.datetime.fromisoformat(last)).total_seconds() >= \
                PROGRESS_EVENT_INTERVAL_S or progress.get("step") == progress.get("total_steps")
            if due:
                job.progress["event_at"] = utcnow().isoformat()
                self._event(session, job, "progress", {k: v for k, v in job.progress.items() if k != "event_at"})

    def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        with self.db.session() as session:
            if session.get(JobRow, job_id) is not None:
                session.add(JobEventRow(job_id=job_id, kind="log", data=log_line(message, level)))

    def publish(self, job_id: str, name: str, file: dict[str, Any]) -> None:
        """Record an output file made before the end (e.g. a validation video) as an `output` event."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is not None:
                self._event(session, job, "output", {"name": name, "file": file})

    def record_checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> bool:
        """Record a checkpoint the running job published (`{step, train_loss, files}`) as a `checkpoint` event,
        stamped with `created_at` and `final: false`, and tell the event listeners (the webhook outbox) in the
        same transaction. Once per step: a resumed attempt that publishes a step again records nothing."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id, with_for_update=not self.db.is_sqlite)
            if job is None or job.status != JobStatus.RUNNING:
                return False
            recorded = session.scalars(select(JobEventRow.data).where(
                JobEventRow.job_id == job_id, JobEventRow.kind == CHECKPOINT_EVENT))
            if any(data.get("step") == checkpoint["step"] for data in recorded):
                return False
            data = {**checkpoint, "created_at": utcnow().isoformat(), "final": False}
            self._event(session, job, CHECKPOINT_EVENT, data)
            session.flush()
            for listener in self.event_listeners:
                listener(session, job, CHECKPOINT_EVENT, data)
            return True

    def update_usage(self, job_id: str, usage: dict[str, Any]) -> None:
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is not None and not job.is_terminal:
                job.usage = {**(job.usage or {}), **usage}

    def succeed(self, job_id: str, output: dict[str, Any], own_output: dict[str, Any] | None = None) -> None:
        """`own_output`: the last step's output when `output` is a checkpoint's instead (early stopping chose
        it), kept as the `final_output` event in the same transaction."""
        kept = {FINAL_OUTPUT_EVENT: {"output": own_output}} if own_output is not None else {}
        self._finish(job_id, JobStatus.SUCCEEDED, events=kept, output=output)

    def fail(self, job_id: str, error_type: str, message: str) -> None:
        self._finish(job_id, JobStatus.FAILED, error={"type": error_type, "message": message})

    def cancel(self, job_id: str, output: dict[str, Any] | None = None, message: str = "cancelled by the user") -> None:
        self._finish(job_id, JobStatus.CANCELLED, output=output, error={"type": "cancelled", "message": message})

    def requeue(self, job_id: str, reason: str) -> bool:
        """running → queued (its worker is gone); False if the job was not running."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return False
            job.lease_owner = None
            job.lease_expires_at = None
            self._event(session, job, "log", log_line(reason, "WARN"))
            self._transition(session, job, JobStatus.QUEUED)
            return True

    def republish(self, job_id: str, queued_before: dt.datetime) -> bool:
        """Claim the right to publish a queued job again (its broker message was lost): True for exactly one
        caller, and only while the job is still queued and was not (re)published after `queued_before`."""
        now = utcnow()
        with self.db.session() as session:
            claimed = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED, JobRow.updated_at < queued_before)
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount == 1
            if claimed:
                job = session.get(JobRow, job_id)
                self._event(session, job, "log", log_line("the queue lost this job's message; queued again", "WARN"))
            return claimed

    # --- the user's side ------------------------------------------------------------------------------

    def request_cancel(self, job_id: str, owner: str | None = None) -> CancelOutcome:
        """Cooperative, idempotent cancel: a queued job is cancelled now, a running one is asked to stop."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is None or (owner is not None and job.owner != owner):
                return CancelOutcome.NOT_FOUND
            if job.is_terminal:
                return CancelOutcome.ALREADY_TERMINAL
            if job.cancel_requested_at is None:
                job.cancel_requested_at = utcnow()
                self._event(session, job, "log", log_line("cancellation requested", "WARN"))
            if job.status == JobStatus.QUEUED:
                self._transition(session, job, JobStatus.CANCELLED,
                                 error={"type": "cancelled", "message": "cancelled before it started"})
                return CancelOutcome.CANCELLED
            return CancelOutcome.REQUESTED

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as session:
            requested = session.scalar(select(JobRow.cancel_requested_at).where(JobRow.id == job_id))
            return requested is not None

    # --- internals ------------------------------------------------------------------------------------

    def _finish(self, job_id: str, status: str, events: dict[str, dict[str, Any]] | None = None,
                **fields: Any) -> None:
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            if job is None or job.is_terminal:
                return  # terminal states never change (a late duplicate worker, a second cancel)
            for kind, data in (events or {}).items():
                self._event(session, job, kind, data)
            self._transition(session, job, status, **fields)

    def _running(self, session: Session, job_id: str) -> JobRow | None:
        job = session.get(JobRow, job_id)
        return job if job is not None and job.status == JobStatus.RUNNING else None

    def _transition(self, session: Session, job: JobRow, status: str, **fields: Any) -> None:
        old = job.status
        allowed = {
            JobStatus.QUEUED: {JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED},
            JobStatus.RUNNING: JobStatus.TERMINAL | {JobStatus.QUEUED},
        }
        if status not in allowed.get(old, set()):
            raise InvalidTransition(f"job {job.id}: {old} → {status} is not allowed")
        job.status = status
        for name, value in fields.items():
            setattr(job, name, value)
        if status in JobStatus.TERMINAL:
            job.finished_at = utcnow()
            job.phase = None
            job.lease_owner = None
            job.lease_expires_at = None
        self._event(session, job, "status", {"status": status, "phase": job.phase, "error": job.error})
        self._notify(session, job, old, status)

    def _event(self, session: Session, job: JobRow, kind: str, data: dict[str, Any]) -> None:
        session.add(JobEventRow(job_id=job.id, kind=kind, data=data))

    def _notify(self, session: Session, job: JobRow, old: str | None, new: str) -> None:
        session.flush()
        for listener in self.listeners:
            listener(session, job, old, new)


def log_line(message: str, level: str) -> dict[str, Any]:
    """A `log` event's data."""
    return {"message": message, "level": level, "timestamp": utcnow().isoformat()}


def queue_position(session: Session, job: JobRow) -> int:
    """How many queued jobs are ahead of `job` (0 = next to start)."""
    return session.scalar(
        select(func.count()).select_from(JobRow).where(
            JobRow.status == JobStatus.QUEUED,
            (JobRow.created_at < job.created_at) | ((JobRow.created_at == job.created_at) & (JobRow.id < job.id)),
        )
    ) or 0
