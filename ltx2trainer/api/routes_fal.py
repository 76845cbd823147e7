"""The hosted trainer's queue protocol (fal-compatible), so that existing client code works unchanged.

    POST /{app}[/{subpath}]                      submit  (?fal_webhook=…)        → 200 handle
    GET  /{app}/requests/{id}/status?logs=1      status  IN_QUEUE | IN_PROGRESS | COMPLETED (202 until done)
    GET  /{app}/requests/{id}/status/stream      the same as server-sent events, new log lines only
    GET  /{app}/requests/{id}                    result  (the output itself; errors as non-2xx)
    PUT  /{app}/requests/{id}/cancel             cancel  202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED | 404

`{app}` is one of `settings.fal_app_ids` (e.g. `fal-ai/ltx2-video-trainer`). Constraints from the real
client, the unmodified `fal-client` package (tests/test_fal_client.py runs it against this gateway; the
protocol in short: docs/architecture.md): it knows only these three status values, so failures and
cancellations are COMPLETED with `error` and `error_type`; it reads `queue_position` and `logs`, so both keys
are always present; it retries 408, 409 and 429, so nothing permanent is ever answered with one of them;
every response carries `x-fal-request-id`. Status values, error mapping and body shapes are
`ltx2trainer/fal_protocol.py`'s, shared with the completion webhook; these routes look jobs up and answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ltx2trainer import fal_protocol
from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.openapi import TrainingInputBody
from ltx2trainer.api.render import render_output
from ltx2trainer.api.routes_trainings import submit_training
from ltx2trainer.jobs.lifecycle import CancelOutcome
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.wiring import Services

router = APIRouter(tags=["queue (fal-compatible)"])

STREAM_POLL_S = 0.5
STREAM_HEARTBEAT_S = 10.0


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
                    status_code=200 if body["status"] == fal_protocol.COMPLETED else 202,
                    headers=_header(request_id))


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
    code, body = fal_protocol.result_error(job)
    return JSONResponse(body, status_code=code, headers={**headers, "X-Fal-Error-Type": body["error_type"]})


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
           body: TrainingInputBody,
           fal_webhook: Annotated[str | None, Query()] = None,
           idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)] = None,
           ) -> JSONResponse:
    app, _subpath = _split_app(path, services)
    if fal_webhook is not None and not fal_webhook.lower().startswith(("http://", "https://")):
        raise HTTPException(422, detail=[{"loc": ["query", "fal_webhook"], "msg": "must be an http(s) URL",
                                          "type": "value_error"}])
    job, _replayed = submit_training(services, principal, body, idempotency_key=idempotency_key,
                                     base_url=base_url, app_id=app, fal_webhook=fal_webhook)
    handle = fal_protocol.submit_handle(job, app, base_url, services.store.queue_position(job))
    return JSONResponse(handle, status_code=200, headers=_header(job.id))


def status_body(services: Services, job: JobRow, app: str, base_url: str, with_logs: bool,
                logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status object of the protocol; `logs` overrides the log lines (the stream sends new ones only)."""
    if job.status == JobStatus.QUEUED:
        return fal_protocol.status_body(job, app, base_url, queue_position=services.store.queue_position(job))
    if logs is None and with_logs:
        logs = services.store.last_logs(job.id, services.settings.status_log_limit)
    return fal_protocol.status_body(job, app, base_url, logs=logs if with_logs else None)


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
            if body["status"] == fal_protocol.COMPLETED:
                return
        elif time.monotonic() - last_sent >= STREAM_HEARTBEAT_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)
