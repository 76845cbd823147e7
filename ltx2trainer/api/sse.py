"""Server-sent events of a job: every status, phase, progress, log and output event, in order.

Each event carries its id, so a client that reconnects with `Last-Event-ID` gets exactly what it missed. A
comment line keeps idle connections alive every `HEARTBEAT_S`; the stream ends after the terminal status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ltx2trainer.api.render import render_file, render_output
from ltx2trainer.jobs.lifecycle import FINAL_OUTPUT_EVENT
from ltx2trainer.jobs.models import JobStatus
from ltx2trainer.wiring import Services

POLL_S = 0.5
HEARTBEAT_S = 10.0
BATCH = 500


def format_event(event_id: int | None, kind: str, data: Any) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


async def job_event_stream(request: Request, services: Services, job_id: str, after_id: int,
                           base_url: str) -> AsyncIterator[str]:
    last_id, last_sent = after_id, time.monotonic()
    while True:
        events = await run_in_threadpool(services.store.events, job_id, after_id=last_id, limit=BATCH)
        finished = False
        job = None
        if not events:
            # Nothing new: if the job has ended, this client resumed after its terminal status (Last-Event-ID
            # at or past it). End the stream instead of holding it open forever, after sending whatever was
            # committed between the two reads (a terminal job has all its status events committed).
            job = await run_in_threadpool(services.store.get, job_id)
            if job is None or job.is_terminal:
                finished = True
                events = await run_in_threadpool(services.store.events, job_id, after_id=last_id, limit=BATCH)
        for event in events:
            last_id = event.id
            if event.kind == FINAL_OUTPUT_EVENT:  # bookkeeping of promotion (raw storage keys): not for clients
                continue
            data = dict(event.data)
            if event.kind == "output" and isinstance(data.get("file"), dict):
                data["file"] = render_file(data["file"], services, base_url)
            elif event.kind == "checkpoint" and isinstance(data.get("files"), dict):
                data["files"] = render_file(data["files"], services, base_url)
            yield format_event(event.id, event.kind, data)
            last_id, last_sent = event.id, time.monotonic()
            finished = finished or (event.kind == "status" and data.get("status") in JobStatus.TERMINAL)
        if finished:
            job = job if job is not None and job.is_terminal else await run_in_threadpool(services.store.get, job_id)
            if job is not None and job.output is not None:
                yield format_event(None, "result", {"output": render_output(job.output, services, base_url)})
            return
        if len(events) == BATCH:
            continue  # catching up: no pause
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)

