"""The gateway: `create_app(settings)` builds the FastAPI app and wires its collaborators.

No torch, no pipeline: the gateway validates, authenticates, records jobs and hands their ids to the queue.
Tests (and the CLI) pass `services=` to run it against chosen backends.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ltx2trainer.api import (
    routes_datasets,
    routes_metrics,
    routes_ops,
    routes_sweeps,
    routes_trainings,
    routes_usage,
)
from ltx2trainer.api.cache import TTLCache
from ltx2trainer.api.middleware import AccessLog, BoundedBody, RefuseNulBytes, ThreadLimit
from ltx2trainer.api.openapi import publish_input_schema
from ltx2trainer.api.status_cache import PollCache, PollCacheMiddleware
from ltx2trainer.settings import Settings, check_secrets
from ltx2trainer.wiring import Services

log = logging.getLogger("ltx2trainer.api")
AUTH_CACHE_TTL_S = 10.0
STATUS_POLL_PATHS = (r"/v1/trainings/([^/]+)", r"/.+/requests/([^/]+)/status")
GATEWAY_THREADS = 8  # blocking work at once (= SQLite connections kept): enough for 2-8 cores


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    check_secrets(settings)  # production has no default secrets: refuse to start without them
    services = services or Services(settings)
    services.db  # noqa: B018 - create the schema now, not on the first request
    app = FastAPI(
        title="ltx2trainer",
        version="0.1.0",
        description="Fine-tune LoRA adapters for Lightricks' LTX-2. Native REST under /v1, and the hosted "
        "queue protocol (fal-compatible) for existing clients.",
    )
    app.state.services = services
    app.state.auth_cache = TTLCache(AUTH_CACHE_TTL_S)
    app.state.poll_cache = PollCache(settings.status_cache_ttl_s)
    app.state.metrics_registry = routes_ops.metrics_registry(services)
    app.include_router(routes_trainings.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_sweeps.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_usage.pages)
    app.include_router(routes_ops.router)
    from ltx2trainer.api import routes_fal  # last: its catch-all submit path must not shadow /v1 and /health

    app.include_router(routes_fal.router)
    publish_input_schema(app)  # the submit routes' body, documented as TrainingInput

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_middleware(ThreadLimit, threads=GATEWAY_THREADS)
    app.add_middleware(PollCacheMiddleware, cache=app.state.poll_cache, patterns=STATUS_POLL_PATHS)
    app.add_middleware(BoundedBody, limit=settings.max_request_bytes)
    app.add_middleware(RefuseNulBytes)  # before the poll cache and every route: a 400, not a database error
    app.add_middleware(AccessLog)
    return app
