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


class BoundedBody:
    """Bodies over `limit` bytes are refused with a 413 (from Content-Length before a byte is read, or the moment
    a chunked body crosses it), and a body over `auth_first` bytes is read only for a valid API key: a 401 is
    answered without reading it. A stranger cannot make the gateway buffer and parse hundreds of megabytes.

    The body is read here (at most `limit` bytes, which the route would buffer anyway) and replayed to the app:
    an exception raised from inside the app's own reading would reach FastAPI's body parser, which turns every
    error into a 400.
    """

    def __init__(self, app, limit: int, auth_first: int = 64 * 1024) -> None:
        self.app = app
        self.limit = limit
        self.auth_first = auth_first

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > self.limit:
            await _answer(send, 413, self._too_large(size))
            return
        if (size is None or size > self.auth_first) and not await _authenticated(scope):
            await _answer(send, 401, "missing or invalid API key: send 'Authorization: Key <key id>:<secret>' "
                                     "(or Bearer); large bodies are read only for a valid key")
            return
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.limit:
                await _answer(send, 413, self._too_large(received, at_least=True))
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would say it

        await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        mib = 2**20
        return (f"the request body is {'more than ' if at_least else ''}{size / mib:.1f} MiB; the limit is "
                f"{self.limit / mib:.1f} MiB. Upload large training data to storage you control and pass its "
                "https URL as training_data_url instead of a data: URL")


async def _authenticated(scope) -> bool:
    from ltx2trainer.api.deps import lookup_principal

    # The first Authorization header, as routes read it.
    header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    return await lookup_principal(scope["app"], header.decode("latin-1") or None) is not None


async def _answer(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
