"""Promote a checkpoint: make one of a finished job's published checkpoints its output.

A job's output is, by default, the LoRA of its last step. Its checkpoints (`checkpoint` events, published
under `checkpoints/step_NNNNNN/` with both LoRA layouts, the step's config.json and its validation clip) are
the alternatives: a user who sees that step 50 generalised better than step 100 promotes step 50, and from
then on `lora_file`, `lora_comfyui_file`, `config_file` and `video` are that checkpoint's files and
`output.promoted_step` says so. Nothing is copied in storage: the output refers to the checkpoint's keys.

The last step's own output is kept, once, as a `final_output` event the first time anything is promoted, so
promoting the last step again restores it exactly and the checkpoints listing keeps showing it as `final`.
Promoting is idempotent (the same step twice gives the same output) and free. Early stopping promotes its best
checkpoint in the worker with the same `promoted_output`.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import select

from ltx2trainer.jobs.db import Database
from ltx2trainer.jobs.lifecycle import CHECKPOINT_EVENT, FINAL_OUTPUT_EVENT, log_line
from ltx2trainer.jobs.models import JobEventRow, JobRow, JobStatus
from ltx2trainer.schemas import PROMOTED_FILES, promoted_output

PROMOTABLE = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)


class PromoteOutcome(enum.Enum):
    PROMOTED = "promoted"
    NOT_FOUND = "not_found"  # no such job for this owner
    NOT_FINISHED = "not_finished"  # queued, running or failed: nothing to replace
    NO_CHECKPOINT = "no_checkpoint"  # no checkpoint of that step
    NOT_PROMOTABLE = "not_promotable"  # a checkpoint published without a config (before promotion existed)


def checkpoint_events(session, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's published checkpoints by step (the first record of a step wins, as in the listing)."""
    found: dict[int, dict[str, Any]] = {}
    for data in session.scalars(select(JobEventRow.data).where(
            JobEventRow.job_id == job_id, JobEventRow.kind == CHECKPOINT_EVENT).order_by(JobEventRow.id)):
        found.setdefault(int(data["step"]), data)
    return found


def final_output(session, job: JobRow) -> dict[str, Any] | None:
    """The job's own last-step output: the kept one once something was promoted, else its current output; None
    when it has none (a run whose last step diverged delivered its best checkpoint and kept nothing else)."""
    kept = session.scalar(select(JobEventRow.data).where(
        JobEventRow.job_id == job.id, JobEventRow.kind == FINAL_OUTPUT_EVENT).order_by(JobEventRow.id).limit(1))
    if kept is not None:
        return kept["output"]
    stopped = ((job.output or {}).get("metrics") or {}).get("early_stopping") or {}
    if stopped.get("last_step_diverged"):
        return None
    return job.output


def final_step(output: dict[str, Any] | None, job: JobRow) -> int:
    metrics = (output or {}).get("metrics") or {}
    return int(metrics.get("steps") or job.input.get("number_of_steps", 0))


def checkpoint_steps(session, job: JobRow) -> dict[int, dict[str, Any]]:
    """Every step of `job` with a LoRA to start from or promote: its checkpoints' files and, once it has an
    output, the last step's own files; by step."""
    found = {step: data.get("files") or {} for step, data in checkpoint_events(session, job.id).items()}
    own = final_output(session, job) if job.status in PROMOTABLE else None
    if own and own.get("lora_file"):
        found[final_step(own, job)] = {name: own.get(name) for name in PROMOTED_FILES}
    return {step: files for step, files in sorted(found.items()) if files.get("lora_file")}


def promote(db: Database, job_id: str, owner: str | None, step: int) -> tuple[PromoteOutcome, JobRow | None]:
    """Make checkpoint `step` job `job_id`'s output (the last step: its own output again). One transaction,
    with the job row locked on PostgreSQL so that two promotes cannot interleave."""
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=not db.is_sqlite)
        if job is None or (owner is not None and job.owner != owner):
            return PromoteOutcome.NOT_FOUND, None
        if job.status not in PROMOTABLE or not job.output:
            return PromoteOutcome.NOT_FINISHED, job
        own = final_output(session, job)  # None: the last step diverged and left nothing to promote
        if own is not None and step == final_step(own, job):
            new_output = own
        else:
            checkpoint = checkpoint_events(session, job_id).get(step)
            if checkpoint is None:
                return PromoteOutcome.NO_CHECKPOINT, job
            if not (checkpoint.get("files") or {}).get("config_file"):
                return PromoteOutcome.NOT_PROMOTABLE, job
            new_output = promoted_output(own or job.output, checkpoint["files"], step)
        if new_output == job.output:
            return PromoteOutcome.PROMOTED, job  # idempotent: nothing changes, nothing is recorded
        if own is not None and session.scalar(select(JobEventRow.id).where(
                JobEventRow.job_id == job_id, JobEventRow.kind == FINAL_OUTPUT_EVENT).limit(1)) is None:
            session.add(JobEventRow(job_id=job_id, kind=FINAL_OUTPUT_EVENT, data={"output": job.output}))
        job.output = new_output
        what = f"the checkpoint of step {step}" if new_output is not own else f"its last step ({step}) again"
        session.add(JobEventRow(job_id=job_id, kind="log", data=log_line(f"output promoted: {what}", "INFO")))
        session.flush()
        return PromoteOutcome.PROMOTED, job
