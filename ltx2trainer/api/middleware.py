"""Plain ASGI middleware for the gateway (Starlette's BaseHTTPMiddleware costs a task and a stream per
request, which at status-polling rates is most of a request's time)."""

from __future__ import annotations

import logging
import time

import anyio.to_thread

log = logging.getLogger("ltx2trainer.api")


class AccessLog:
    """One structured log record per request: method, path, status, duration in milliseconds.

    Successful reads (status polls arrive many times a second from every client) are logged at DEBUG;
    writes and errors at INFO. Formatting a JSON line per poll would otherwise cost more than the poll.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            level = logging.DEBUG if scope["method"] in ("GET", "HEAD") and status[0] < 400 else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "request", extra={
                    "method": scope["method"], "path": scope["path"], "status": status[0],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2)})


class ThreadLimit:
    """Size the thread pool that runs blocking work (anyio's default, 40, far exceeds the cores and the
    database connections: threads then queue on the connection pool and on the GIL instead of on the pool)."""

    def __init__(self, app, threads: int) -> None:
        self.app = app
        self.threads = threads
        self._applied = False

    async def __call__(self, scope, receive, send) -> None:
        if not self._applied:
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self._applied = True
        await self.app(scope, receive, send)


class RefuseNulBytes:
    """400 for a request with a NUL byte (raw or %00) in its path, query string or headers.

    No legitimate value of this API holds one, PostgreSQL refuses to store or even compare text with one (an
    error deep in a query, a 500), and C-level consumers (log shippers, proxies) truncate at it. Bodies are
    checked where they are parsed (`schemas.py` refuses NUL in every submitted string).
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            body = b'{"detail":"the request has a NUL byte in its path, query string or headers"}'
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _has_nul(scope) -> bool:
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    if b"\x00" in raw_path or b"%00" in raw_path or "\x00" in scope["path"]:
        return True
    query = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:
        return True
    return any(b"\x00" in name or b"\x00" in value for name, value in scope.get("headers", ()))
