"""The hosted trainer's queue protocol (fal-compatible), so that existing client code works unchanged.

    POST /{app}[/{subpath}]                      submit  (?fal_webhook=…)        → 200 handle
    GET  /{app}/requests/{id}/status?logs=1      status  IN_QUEUE | IN_PROGRESS | COMPLETED (202 until done)
    GET  /{app}/requests/{id}/status/stream      the same as server-sent events, new log lines only
    GET  /{app}/requests/{id}                    result  (the output itself; errors as non-2xx)
    PUT  /{app}/requests/{id}/cancel             cancel  202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED | 404

`{app}` is one of `settings.fal_app_ids` (e.g. `fal-ai/ltx2-video-trainer`). Constraints from the real
client (reference C §2.3, §2.6): only the three status values exist (failures and cancellations are
COMPLETED with `error` and `error_type`); `queue_position` and `logs` keys must be present; never answer
408/409/429 for anything permanent (the client retries those); every response carries `x-fal-request-id`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.render import render_output
from ltx2trainer.api.routes_trainings import submit_training
from ltx2trainer.jobs.lifecycle import CancelOutcome
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.wiring import Services

router = APIRouter(tags=["queue (fal-compatible)"])

STREAM_POLL_S = 0.5
STREAM_HEARTBEAT_S = 10.0
LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARN", "WARNING": "WARN", "ERROR": "ERROR"}
USER_ERROR_STATUS = 422
PLATFORM_ERRORS = {"internal_error", "runner_disconnected", "runner_scheduling_failure"}


def _split_app(path: str, services: Services) -> tuple[str, str]:
    """(app id, sub-path) of a submit path, or 404 for apps this service does not run."""
    for app_id in services.settings.fal_app_ids:
        if path == app_id or path.startswith(app_id + "/"):
            return app_id, path[len(app_id) + 1:]
    raise HTTPException(404, detail=f"unknown app {path!r}; this service runs {', '.join(services.settings.fal_app_ids)}")


def _check_app(app: str, services: Services) -> str:
    if app not in services.settings.fal_app_ids:
        raise HTTPException(404, detail=f"unknown app {app!r}")
    return app


def _urls(base_url: str, app: str, request_id: str) -> dict[str, str]:
    root = f"{base_url}/{app}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def _header(request_id: str) -> dict[str, str]:
    """The request id echoed as fal does; only when it can be one (a header holds printable ASCII: echoing a
    caller's arbitrary path segment into a header failed the response)."""
    if not (request_id.isascii() and request_id.isprintable() and len(request_id) <= 128):
        return {}
    return {"x-fal-request-id": request_id}


@router.get("/{app:path}/requests/{request_id}/status/stream", summary="Status as server-sent events")
async def status_stream(app: str, request_id: str, request: Request, principal: PrincipalDep,
                        services: ServicesDep, base_url: BaseUrlDep,
                        logs: Annotated[str, Query()] = "0") -> StreamingResponse:
    _check_app(app, services)
    job = _job(services, request_id, principal)
    return StreamingResponse(_status_events(request, services, job.id, app, base_url, _flag(logs)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", **_header(job.id)})


@router.get("/{app:path}/requests/{request_id}/status", summary="Queue status")
def status(app: str, request_id: str, principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
           logs: Annotated[str, Query()] = "0") -> Response:
    # Clients poll this every 100 ms: repeated polls are answered by the poll cache (api/status_cache.py).
    _check_app(app, services)
    job = services.store.get(request_id, principal.owner)
    if job is None:
        raise HTTPException(404, detail=f"no request {request_id}", headers=_header(request_id))
    body = status_body(services, job, app, base_url, _flag(logs))
    return Response(json.dumps(body, separators=(",", ":"), default=str), media_type="application/json",
                    status_code=200 if body["status"] == "COMPLETED" else 202, headers=_header(request_id))


@router.get("/{app:path}/requests/{request_id}", summary="Result: the output, or the error")
def result(app: str, request_id: str, principal: PrincipalDep, services: ServicesDep,
           base_url: BaseUrlDep) -> JSONResponse:
    _check_app(app, services)
    job = _job(services, request_id, principal)
    headers = _header(job.id)
    if job.status == JobStatus.SUCCEEDED:
        return JSONResponse(render_output(job.output, services, base_url), headers=headers)
    if not job.is_terminal:
        return JSONResponse({"detail": "Request is still in progress"}, status_code=400, headers=headers)
    error_type, message = _error(job)
    code = 400 if job.status == JobStatus.CANCELLED else 500 if error_type in PLATFORM_ERRORS else USER_ERROR_STATUS
    return JSONResponse({"detail": message, "error_type": error_type}, status_code=code,
                        headers={**headers, "X-Fal-Error-Type": error_type})


@router.put("/{app:path}/requests/{request_id}/cancel", summary="Cancel (cooperative, idempotent)")
def cancel(app: str, request_id: str, request: Request, principal: PrincipalDep,
           services: ServicesDep) -> JSONResponse:
    _check_app(app, services)
    outcome = services.lifecycle.request_cancel(request_id, owner=principal.owner)
    if outcome is CancelOutcome.NOT_FOUND:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404, headers=_header(request_id))
    request.app.state.poll_cache.forget(request_id)  # the owner's cancel: polls see it at once
    if outcome is CancelOutcome.ALREADY_TERMINAL:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400, headers=_header(request_id))
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=_header(request_id))


@router.post("/{path:path}", summary="Submit a request to the queue")
def submit(path: str, principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
           body: Annotated[dict[str, Any], Body()],
           fal_webhook: Annotated[str | None, Query()] = None,
           idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)] = None,
           ) -> JSONResponse:
    app, _subpath = _split_app(path, services)
    if fal_webhook is not None and not fal_webhook.lower().startswith(("http://", "https://")):
        raise HTTPException(422, detail=[{"loc": ["query", "fal_webhook"], "msg": "must be an http(s) URL",
                                          "type": "value_error"}])
    job, _replayed = submit_training(services, principal, body, idempotency_key=idempotency_key,
                                     base_url=base_url, app_id=app, fal_webhook=fal_webhook)
    handle = {"request_id": job.id, "gateway_request_id": job.id, **_urls(base_url, app, job.id),
              "status": "IN_QUEUE" if job.status == JobStatus.QUEUED else _fal_status(job),
              "queue_position": services.store.queue_position(job) or 0}
    return JSONResponse(handle, status_code=200, headers=_header(job.id))


def status_body(services: Services, job: JobRow, app: str, base_url: str, with_logs: bool,
                logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status object of the protocol; `logs` overrides the log lines (the stream sends new ones only)."""
    state = _fal_status(job)
    body: dict[str, Any] = {"status": state, "request_id": job.id, **_urls(base_url, app, job.id)}
    if state == "IN_QUEUE":
        body["queue_position"] = services.store.queue_position(job) or 0
        body["logs"] = None
        return body
    if logs is None and with_logs:
        logs = services.store.last_logs(job.id, services.settings.status_log_limit)
    body["logs"] = [_fal_log(line) for line in logs] if with_logs and logs is not None else None
    if state == "COMPLETED":
        seconds = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else None
        body["metrics"] = {"inference_time": seconds, "usage": job.usage}
        if job.status != JobStatus.SUCCEEDED:
            body["error_type"], body["error"] = _error(job)
    else:
        body["progress"] = job.progress  # extra keys; clients ignore what they do not know
        body["metrics"] = {"usage": job.usage}
    return body


def _fal_status(job: JobRow) -> str:
    if job.is_terminal:
        return "COMPLETED"
    return "IN_QUEUE" if job.status == JobStatus.QUEUED else "IN_PROGRESS"


def _error(job: JobRow) -> tuple[str, str]:
    error = job.error or {}
    if job.status == JobStatus.CANCELLED:
        return "client_cancelled", error.get("message") or "Request cancelled"
    return error.get("type") or "internal_error", error.get("message") or "the job failed"


def _fal_log(line: dict[str, Any]) -> dict[str, Any]:
    return {"message": line.get("message", ""), "level": LEVELS.get(line.get("level", "INFO"), "INFO"),
            "source": "USER", "timestamp": line.get("timestamp")}


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


def _job(services: Services, request_id: str, principal) -> JobRow:
    job = services.store.get(request_id, principal.owner)
    if job is None:
        raise HTTPException(404, detail=f"no request {request_id}", headers=_header(request_id))
    return job


async def _status_events(request: Request, services: Services, job_id: str, app: str, base_url: str,
                         with_logs: bool) -> AsyncIterator[str]:
    """One event per change of status or progress, carrying only the log lines that are new."""
    last_log_id, last_signature, last_sent = 0, None, time.monotonic()
    while True:
        job = await run_in_threadpool(services.store.get, job_id)
        new_logs = await run_in_threadpool(services.store.events, job_id, after_id=last_log_id, kinds=("log",))
        if new_logs:
            last_log_id = new_logs[-1].id
        signature = (job.status, job.phase, json.dumps(job.progress, sort_keys=True, default=str))
        if new_logs or signature != last_signature:
            body = await run_in_threadpool(status_body, services, job, app, base_url, with_logs,
                                           [event.data for event in new_logs])
            yield f"data: {json.dumps(body, separators=(',', ':'), default=str)}\n\n"
            last_signature, last_sent = signature, time.monotonic()
            if body["status"] == "COMPLETED":
                return
        elif time.monotonic() - last_sent >= STREAM_HEARTBEAT_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)
