"""The hosted trainer's queue protocol (fal-compatible): its status values, its error mapping and the shapes
of its bodies, in one place for the queue routes (`api/routes_fal.py`) and the completion webhook
(`notify/webhooks.py`), so that a job's status, its result and its webhook say the same thing about it.

Pure functions of a job row (no FastAPI, no torch, no database reads: callers pass what they looked up).
Constraints from the real client, the unmodified `fal-client` package (tests/test_fal_client.py runs it against
the gateway; docs/architecture.md, Contracts): only three status values exist, failures and cancellations are
COMPLETED with `error` and `error_type`; `queue_position` and `logs` keys must be present.
"""

from __future__ import annotations

from typing import Any

from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.schemas import ProgressReport

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

CANCELLED_ERROR_TYPE = "client_cancelled"  # the protocol's name for a cancellation, whatever the job recorded
CANCELLED_MESSAGE = "Request cancelled"
# A failure that names no cause is the platform's (a user's error always has a type): a 500 that clients retry.
UNKNOWN_ERROR_TYPE = "internal_error"
UNKNOWN_ERROR_MESSAGE = "the job failed"
PLATFORM_ERRORS = frozenset({"internal_error", "runner_disconnected", "runner_scheduling_failure"})

USER_ERROR_HTTP_STATUS = 422  # a user's error: not retried by the client, and not a 5xx
CANCELLED_HTTP_STATUS = 400
PLATFORM_ERROR_HTTP_STATUS = 500
LOG_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARN", "WARNING": "WARN", "ERROR": "ERROR"}


def queue_status(job: JobRow) -> str:
    """IN_QUEUE, IN_PROGRESS or COMPLETED (succeeded, failed and cancelled alike)."""
    if job.is_terminal:
        return COMPLETED
    return IN_QUEUE if job.status == JobStatus.QUEUED else IN_PROGRESS


def job_error(job: JobRow) -> tuple[str, str]:
    """(error_type, error) of a failed or cancelled job, as the status body, the result and the webhook say it."""
    error = job.error or {}
    if job.status == JobStatus.CANCELLED:
        return CANCELLED_ERROR_TYPE, error.get("message") or CANCELLED_MESSAGE
    return error.get("type") or UNKNOWN_ERROR_TYPE, error.get("message") or UNKNOWN_ERROR_MESSAGE


def request_urls(base_url: str, app: str, request_id: str) -> dict[str, str]:
    root = f"{base_url}/{app}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def submit_handle(job: JobRow, app: str, base_url: str, queue_position: int | None) -> dict[str, Any]:
    """The answer to a submit (a replay of a job that has moved on reports where it is now)."""
    return {"request_id": job.id, "gateway_request_id": job.id, **request_urls(base_url, app, job.id),
            "status": queue_status(job), "queue_position": queue_position or 0}


def status_body(job: JobRow, app: str, base_url: str, *, queue_position: int | None = None,
                logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status object: `queue_position` is shown while queued; `logs` are the job's log lines to show
    (None: the caller did not ask for logs)."""
    state = queue_status(job)
    body: dict[str, Any] = {"status": state, "request_id": job.id, **request_urls(base_url, app, job.id)}
    if state == IN_QUEUE:
        body["queue_position"] = queue_position or 0
        body["logs"] = None
        return body
    body["logs"] = [log_line(line) for line in logs] if logs is not None else None
    if state == COMPLETED:
        seconds = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else None
        body["metrics"] = {"inference_time": seconds, "usage": job.usage}
        if job.status != JobStatus.SUCCEEDED:
            body["error_type"], body["error"] = job_error(job)
    else:
        # extra keys; clients ignore what they do not know
        body["progress"] = ProgressReport.of_stored(job.progress).model_dump(mode="json")
        body["metrics"] = {"usage": job.usage}
    return body


def result_error(job: JobRow) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the result of a failed or cancelled job: 400 for a cancellation, 500 for the
    platform's fault (retried by clients), 422 for the user's."""
    error_type, message = job_error(job)
    if job.status == JobStatus.CANCELLED:
        code = CANCELLED_HTTP_STATUS
    else:
        code = PLATFORM_ERROR_HTTP_STATUS if error_type in PLATFORM_ERRORS else USER_ERROR_HTTP_STATUS
    return code, {"detail": message, "error_type": error_type}


def completion_payload(job: JobRow) -> dict[str, Any]:
    """The completion webhook's body (a terminal job). Its output holds stored file references; the deliverer
    links them when it sends."""
    body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
    if job.status == JobStatus.SUCCEEDED:
        body.update(status="OK", payload=job.output)
    else:  # failed, or cancelled: the output is the last checkpoint's LoRA if there is one
        error_type, message = job_error(job)
        body.update(status="ERROR", payload=job.output or None, error=message, error_type=error_type)
    return body


def log_line(line: dict[str, Any]) -> dict[str, Any]:
    """A job's log line as the protocol shows it."""
    return {"message": line.get("message", ""), "level": LOG_LEVELS.get(line.get("level", "INFO"), "INFO"),
            "source": "USER", "timestamp": line.get("timestamp")}
