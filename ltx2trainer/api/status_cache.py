"""A short-lived cache of status answers, so that many clients polling many times a second cost one
database read per job and owner every `ttl_s`.

Progress is written at most every 0.5 s anyway; the gateway uses a 0.2 s lifetime so that a job's start
still shows at once.
"Single flight": while one request computes an answer, others for the same key wait for it instead of
reading the database too (without that, a burst of pollers all miss at once and the tail latency explodes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
MAX_ENTRIES = 50_000


class StatusCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, object]] = {}
        self._inflight: dict[Hashable, asyncio.Future] = {}

    def forget(self, job_id: str) -> None:
        """Drop every answer about `job_id` (after this process changed it: a cancel is seen at once)."""
        for key in [key for key in self._entries if isinstance(key, tuple) and job_id in key]:
            self._entries.pop(key, None)

    async def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached answer for `key`, or `compute()` run in the thread pool (once, however many wait)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]  # type: ignore[return-value]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            value = await run_in_threadpool(compute)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: no warning when nobody else was waiting
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        return value
