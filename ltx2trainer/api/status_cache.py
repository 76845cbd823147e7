"""A short-lived cache of status-poll responses, in front of the app, so that clients polling many times a
second cost one database read per job and caller every `ttl_s` and almost nothing in between.

Clients poll `GET /v1/trainings/{id}` and the queue protocol's `…/requests/{id}/status` in tight loops
(fal-client polls every 100 ms). Answering one means a database read or two through SQLAlchemy (most of
its cost: a few hundred microseconds), rendering, and FastAPI's routing; replaying a finished response from
memory skips all of it (bench/api.py measures both). Progress is written at most every 0.5 s anyway; the lifetime (`LTX2T_STATUS_CACHE_TTL_S`) is 0.2 s so that
a job's start still shows at once, and a cancel through this gateway drops the job's entries immediately.

Responses are keyed by everything that shapes them: path, query, the caller's `Authorization` header (one
caller never sees another's answer) and the address the client used (it goes into the URLs in the body).
Only 200 and 202 answers are kept; a 401 or 404 goes through the app every time.

"Single flight": while one request computes an answer, others with the same key wait for it instead of
reading the database too (without that, a burst of pollers all miss at once and the tail latency explodes).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from ltx2trainer.api.cache import TTLCache

MAX_ENTRIES = 10_000  # a few KiB each; live entries are far fewer (they last `ttl_s`)
CACHEABLE_STATUS = (200, 202)
Messages = tuple[dict, ...]


class PollCache(TTLCache[tuple[str, Messages]]):
    """Cached responses (an ASGI response as its messages) by key, each with the job it is about; and the
    computations in flight, by key."""

    def __init__(self, ttl_s: float) -> None:
        super().__init__(ttl_s, MAX_ENTRIES)
        self.inflight: dict[tuple, asyncio.Future] = {}

    def forget(self, job_id: str) -> None:
        """Drop every answer about `job_id` (after this process changed it: a cancel is seen at once)."""
        self.discard(lambda entry: entry[0] == job_id)


class PollCacheMiddleware:
    """Serves status polls (GET on the paths matching `patterns`, whose first group is the job id) from a
    `PollCache`."""

    def __init__(self, app, cache: PollCache, patterns: Iterable[str]) -> None:
        self.app = app
        self.cache = cache
        self.patterns = [re.compile(pattern) for pattern in patterns]

    async def __call__(self, scope, receive, send) -> None:
        job_id = self._poll_of(scope)
        if job_id is None or self.cache.ttl_s <= 0:
            await self.app(scope, receive, send)
            return
        # Every Authorization and Host header, in order: authentication reads the first of several, and two
        # requests share an answer only when everything that could decide it is the same.
        key = (scope["path"], scope["query_string"],
               tuple(value for name, value in scope["headers"] if name in (b"authorization", b"host")),
               scope.get("scheme"), scope.get("root_path"))
        hit = self.cache.peek(key)
        cached = hit[1] if hit is not None else None
        if cached is None and (pending := self.cache.inflight.get(key)) is not None:
            cached = await asyncio.shield(pending)
        if cached is not None:
            for message in cached:
                await send(message)
            return
        await self._compute(scope, receive, send, key, job_id)

    async def _compute(self, scope, receive, send, key: tuple, job_id: str) -> None:
        future = self.cache.inflight[key] = asyncio.get_running_loop().create_future()
        messages: list[dict] = []

        async def send_and_keep(message) -> None:
            messages.append(message)
            await send(message)

        try:
            await self.app(scope, receive, send_and_keep)
        finally:
            self.cache.inflight.pop(key, None)
            complete = bool(messages) and messages[0].get("status") in CACHEABLE_STATUS \
                and not messages[-1].get("more_body", False)
            result = tuple(messages) if complete else None
            if result is not None:
                self.cache.put(key, (job_id, result))
            future.set_result(result)  # None: the waiters go to the app themselves

    def _poll_of(self, scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        for pattern in self.patterns:
            if (match := pattern.fullmatch(scope["path"])) is not None:
                return match.group(1)
        return None
