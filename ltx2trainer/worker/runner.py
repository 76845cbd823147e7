"""Run one job in a worker process and map the outcome onto the job's lifecycle.

Whose fault was it: a `UserInputError` fails the job with its message (no retry, nothing billed); a
`JobCancelled` ends it cancelled with the last checkpoint as its output; an `InfraError` (storage down…)
puts it back in the queue while attempts remain; anything else is a platform fault that fails the job
with `internal_error`. A job this worker no longer holds (its lease went to another worker) is left alone.
The job's error, like its logs, is shown with the server's folders as placeholders (`server_paths.py`).
"""

from __future__ import annotations

import logging
import shutil
import traceback

from ltx2trainer.errors import InfraError, JobCancelled, UserInputError
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.context import JOB_LOG, LeaseLost, WorkerContext

log = logging.getLogger(__name__)


def execute_job(job_id: str, settings: Settings, *, worker_id: str, services: Services | None = None) -> str:
    """Run job `job_id` if this worker may; returns what happened (for logs and tests)."""
    services = services or Services(settings, ensure_schema=False)
    lifecycle = services.lifecycle
    job = lifecycle.start(job_id, worker_id, settings.job_lease_s, settings.job_max_attempts)
    if job is None:
        log.info("job %s not started here (finished, cancelled or running elsewhere)", job_id)
        return "skipped"
    from ltx2trainer.pipeline.run import run_job  # after the claim: the job shows "running" sooner

    context = WorkerContext(job, lifecycle, services.storage, settings, worker_id)
    outcome = "succeeded"
    with context.heartbeat(), context.capture_logs():
        log.info("job %s started on %s (attempt %d)", job_id, worker_id, job.attempt)
        try:
            # The stored input is the adjusted one: its adjustments are the ones recorded at submission.
            training_input = TrainingInput.from_job(job.input, job.adjustments or [], context={
                "allow_file_urls": settings.allow_file_urls, "allow_uploads": True})
            output = run_job(context, training_input)
        except LeaseLost:
            log.warning("job %s: lease lost to another worker; stopping here", job_id)
            return "lease_lost"
        except JobCancelled:
            context.flush_records()  # the steps done are billed; the last checkpoint is the output
            partial = context.partial_output
            lifecycle.cancel(job_id, output=partial.model_dump(mode="json") if partial is not None else None)
            outcome = "cancelled"
        except UserInputError as exc:
            lifecycle.fail(job_id, exc.code, context.paths.hide(exc.message))
            outcome = "failed"
        except InfraError as exc:
            log.error("job %s: platform error, will retry: %s", job_id, exc)
            if lifecycle.requeue(job_id, context.paths.hide(f"platform error, retrying: {exc}")):
                services.queue.enqueue(job_id)
            return "requeued"
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected fault: fail loudly, never bill
            # The traceback (the server's code and data paths) is for the operator's log, not the job's.
            log.error("job %s crashed:\n%s", job_id, traceback.format_exc(), extra={JOB_LOG: False})
            lifecycle.fail(job_id, "internal_error",
                           context.paths.hide(f"the worker failed: {type(exc).__name__}: {exc}"))
            outcome = "failed"
        else:
            context.flush_records()
            context.record_final_metrics(output)
            own = context.own_output  # early stopping made a checkpoint the output: the last step's is kept
            lifecycle.succeed(job_id, output.model_dump(mode="json"),
                              own_output=own.model_dump(mode="json") if own is not None else None)
    keep_for_debugging = outcome == "failed" and settings.environment == "development"
    if not keep_for_debugging:
        shutil.rmtree(context.work_dir, ignore_errors=True)  # outputs are in object storage now
    return outcome
