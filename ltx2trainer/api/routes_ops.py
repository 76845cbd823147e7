"""Operations: health, Prometheus metrics, and downloads of locally stored files by signed URL."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text

from ltx2trainer.api.cache import TTLCache
from ltx2trainer.api.deps import ServicesDep, get_admin, get_principal
from ltx2trainer.jobs.models import JobStatus
from ltx2trainer.jobs.workers import RECENT_S, identify_model, recent_workers
from ltx2trainer.schemas import ProgressReport
from ltx2trainer.wiring import Services

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

MODEL_CACHE_TTL_S = 30.0  # an official file's header is read and hashed at most this often
_configured_models: TTLCache[dict[str, Any] | str] = TTLCache(MODEL_CACHE_TTL_S, max_entries=16)
_logged_model_errors: set[str] = set()


@router.get("/health", summary="Liveness, database reachability, and the base model each worker serves")
def health(services: ServicesDep) -> dict[str, Any]:
    """`model`: the gateway's configured model (identity, or why it is unusable); `workers`: the workers seen
    in the last minute with the model each actually serves (what jobs run on); `queue`: jobs waiting and
    running, how many workers consume them, and running jobs past their lease (their worker stopped). The
    status is "degraded", with the reasons in `problems`, when jobs wait or run and no worker is seen, or a job
    is past its lease; the gateway itself still answers 200 (it is up: monitors alert on the status)."""
    try:
        with services.db.session() as session:
            session.execute(text("SELECT 1"))
        workers = recent_workers(services.db)
        counts = services.store.counts_by_status()
        stalled = services.store.expired_leases()
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        raise HTTPException(503, detail=f"database unreachable: {type(exc).__name__}") from None
    settings = services.settings
    key = (settings.model, settings.text_encoder or None)
    model = _configured_models.get(key, _configured_model)
    waiting, running = counts[JobStatus.QUEUED], counts[JobStatus.RUNNING]
    problems = []
    if (waiting or running) and not workers:
        problems.append(f"{waiting} queued and {running} running jobs, and no worker seen in the last "
                        f"{RECENT_S:g} s")
    if stalled:
        problems.append(f"{len(stalled)} running jobs past their lease: their worker stopped (they are requeued "
                        "by the next worker's sweep)")
    return {"status": "degraded" if problems else "ok", "model": model, "workers": workers,
            "queue": {"queued": waiting, "running": running, "consumers": len(workers), "stalled_jobs": stalled},
            **({"problems": problems} if problems else {})}


def _configured_model(key: tuple[str, str | None]) -> dict[str, Any] | str:
    """The configured model as /health shows it: its identity, or why it is unusable without the configured
    paths (`<model>`, `<text_encoder>`). The reason with the paths goes to the gateway's log, once."""
    served = identify_model(*key)
    if served.detail is not None and served.detail not in _logged_model_errors:
        _logged_model_errors.add(served.detail)
        log.warning("the configured model cannot be used: %s (LTX2T_MODEL=%r)", served.detail, key[0])
    return served.public()


@router.get("/metrics", summary="Prometheus metrics: jobs by status, queue depth, training step rate")
async def metrics(request: Request) -> Response:
    if request.app.state.services.settings.metrics_require_key:
        await get_admin(await get_principal(request))  # 401 without a key, 403 with a non-admin one
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/files/{key:path}", summary="A locally stored file, by a signed, expiring URL", include_in_schema=False)
def local_file(key: str, request: Request, services: ServicesDep) -> FileResponse:
    from ltx2trainer.storage.local import LocalStorage, verify_signed_query

    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise HTTPException(404, detail="files are served by the object store")
    if not verify_signed_query(key, request.query_params, services.settings.secret("file_url_secret")):
        raise HTTPException(403, detail="invalid or expired file URL")
    try:
        path = storage.resolve(key)
    except ValueError:
        raise HTTPException(404, detail="no such file") from None
    if not path.is_file():
        raise HTTPException(404, detail="no such file")
    name = request.query_params.get("name") or path.name
    media_type = request.query_params.get("type") or "application/octet-stream"  # signed with the URL
    return FileResponse(path, media_type=media_type, filename=name)


class JobMetrics:
    """Collected on each scrape from the job store (no counters to keep in sync across processes)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self):
        counts = self.services.store.counts_by_status()
        jobs = GaugeMetricFamily("ltx2trainer_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus.ALL:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("ltx2trainer_queue_depth", "Jobs waiting for a worker",
                                value=counts.get(JobStatus.QUEUED, 0))
        rate = sum(ProgressReport.of_stored(job.progress).steps_per_s or 0.0
                   for job in self.services.store.running_jobs())
        yield GaugeMetricFamily("ltx2trainer_training_steps_per_second",
                                "Training steps per second over all running jobs", value=rate)


def metrics_registry(services: Services) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(services))
    return registry
