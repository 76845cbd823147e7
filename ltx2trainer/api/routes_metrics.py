"""A training's metrics, one row per step (`jobs/metrics.py`): `GET /v1/trainings/{id}/metrics?format=json|csv`.

The owner's only (another owner's job is a 404, as everywhere), while the job runs and after it. Answered from
plain column tuples with the standard library's encoders, not through FastAPI's response models: a 10 000-step
job's metrics are a few milliseconds of work (bench/metrics.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from ltx2trainer.api.deps import PrincipalDep, ServicesDep
from ltx2trainer.jobs.metrics import (
    CHECKPOINT_COLUMNS,
    COLUMNS,
    metrics_csv,
    metrics_json,
    read_checkpoint_metrics,
    read_metrics,
)

router = APIRouter(prefix="/v1", tags=["trainings"])


@router.get(
    "/trainings/{job_id}/metrics",
    summary="A training's metrics per step (JSON or CSV)",
    description=f"One row per completed training step: {', '.join(COLUMNS)}. A step re-run after a resume "
    "has one row (the latest run's). JSON: `{\"object\": \"list\", \"data\": [...], \"checkpoints\": [...]}` "
    f"(`checkpoints`: one row per published checkpoint and the final step, {', '.join(CHECKPOINT_COLUMNS)}; "
    "`holdout_loss` is the loss on the samples held out of the training, null when none were), non-finite "
    "values as null; CSV: a header row, then one row per step, with a last column `holdout_loss` filled only "
    "on checkpoint steps.",
)
def training_metrics(
    job_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Response:
    if services.store.get(job_id, principal.owner) is None:
        raise HTTPException(404, detail=f"no training {job_id}")
    rows = read_metrics(services.db, job_id)
    checkpoints = read_checkpoint_metrics(services.db, job_id)
    if fmt == "csv":
        return Response(metrics_csv(rows, checkpoints), media_type="text/csv",
                        headers={"Content-Disposition": f'inline; filename="{job_id}-metrics.csv"'})
    return Response(metrics_json(rows, checkpoints), media_type="application/json")
