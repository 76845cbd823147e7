"""Datasets (`jobs/datasets.py`): create (prepared by a worker on the `prepare` queue), list, get, delete.

`POST /v1/datasets` takes `training_data_url` and the input schema's dataset fields (`schemas.DATASET_FIELDS`),
validated exactly as a training's are (the same adjustments, e.g. 90 frames → 89). Another owner's dataset is
a 404, as for trainings; a dataset used by a queued or running training cannot be deleted (409).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.routes_trainings import store_inline_data, validate_training_input
from ltx2trainer.jobs.datasets import (
    DatasetRow,
    DatasetStatus,
    create_dataset,
    delete_dataset_row,
    get_dataset,
    list_datasets,
    trainings_of,
    trainings_using,
)
from ltx2trainer.schemas import DATASET_FIELDS
from ltx2trainer.storage import dataset_prefix, render_refs
from ltx2trainer.uploads import displayed_input

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["datasets"])
DATASET_INPUT_FIELDS = ("training_data_url", *DATASET_FIELDS)


def render_dataset(row: DatasetRow, services, base_url: str, *, detail: bool = False) -> dict[str, Any]:
    """The public shape of a dataset; `detail` adds the report, the contact sheet and every sample's clip."""
    files = row.files or {}
    body: dict[str, Any] = {
        "id": row.id, "object": "dataset", "status": row.status,
        "fields": displayed_input(row.fields), "adjustments": row.adjustments or [],
        "error": row.error, "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "samples": ((row.report or {}).get("counts") or {}).get("samples_out"),
        "encoded_for": sorted(row.encoded or {}),
        "urls": {"get": f"{base_url}/v1/datasets/{row.id}"},
    }
    if detail:
        body["report"] = row.report
        sign = lambda ref: render_refs(services.storage, ref, expires_s=services.settings.file_url_ttl_s,  # noqa: E731
                                       base_url=base_url)
        body["contact_sheet"] = sign(files["contact_sheet"]) if files.get("contact_sheet") else None
        body["sample_files"] = {name: sign(ref) for name, ref in (files.get("samples") or {}).items()}
    return body


@router.post("/datasets", status_code=201, summary="Create a dataset: fetched and prepared once by a worker")
def create(principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
           body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(DATASET_INPUT_FIELDS))
    if unknown:
        raise HTTPException(422, detail=[{"loc": ["body", name], "type": "extra_forbidden",
                                          "msg": f"{name} is not a dataset field; a dataset takes "
                                                 f"{', '.join(DATASET_INPUT_FIELDS)}"} for name in unknown])
    training_input = validate_training_input(body, services.settings.allow_file_urls)
    fields = training_input.model_dump(mode="json", include=set(DATASET_INPUT_FIELDS))
    if training_input.training_data_url.startswith("data:"):
        fields["training_data_url"] = store_inline_data(services, principal.owner, training_input.training_data_url)
    row = create_dataset(services.db, principal.owner, fields,
                         [a.model_dump(mode="json") for a in training_input.adjustments])
    try:
        services.queue.enqueue_preparation(row.id)
    except Exception as exc:  # noqa: BLE001 - the broker is down: the dataset is safe in the database, queued
        # The workers' sweeper publishes a queued dataset the broker does not hold once it answers again
        # (worker/app.sweep_lost_preparations), so the caller gets its dataset rather than a 5xx.
        log.warning("could not queue dataset %s now (%s: %s); the sweeper will once the broker answers",
                    row.id, type(exc).__name__, exc)
    return render_dataset(row, services, base_url)


@router.get("/datasets", summary="The caller's datasets, newest first")
def list_all(principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
             limit: Annotated[int, Query(ge=1, le=100)] = 100) -> dict[str, Any]:
    return {"object": "list",
            "data": [render_dataset(row, services, base_url) for row in list_datasets(services.db, principal.owner,
                                                                                      limit)]}


@router.get("/datasets/{dataset_id}", summary="A dataset: status, report, contact sheet, sample clips")
def get(dataset_id: str, principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep) -> dict[str, Any]:
    row = _owned(services, dataset_id, principal)
    body = render_dataset(row, services, base_url, detail=True)
    body["trainings"] = [{"id": job.id, "status": job.status, "created_at": job.created_at.isoformat(),
                          "sweep_id": (job.metadata_ or {}).get("sweep_id")}
                         for job in trainings_of(services.db, dataset_id, principal.owner)]
    return body


@router.delete("/datasets/{dataset_id}", status_code=204, summary="Delete a dataset and its stored files")
def delete(dataset_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    row = _owned(services, dataset_id, principal)
    if row.status in (DatasetStatus.QUEUED, DatasetStatus.PREPARING):
        raise HTTPException(409, detail=f"dataset {dataset_id} is {row.status}; delete it once it is ready or failed")
    using = trainings_using(services.db, dataset_id, principal.owner)
    if using:
        raise HTTPException(409, detail=f"dataset {dataset_id} is used by {len(using)} queued or running "
                                        f"training(s): {', '.join(using[:5])}; delete it once they have finished")
    services.storage.delete_prefix(dataset_prefix(row.owner, dataset_id))
    delete_dataset_row(services.db, dataset_id)
    return Response(status_code=204)


def _owned(services, dataset_id: str, principal) -> DatasetRow:
    row = get_dataset(services.db, dataset_id, principal.owner)
    if row is None:
        raise HTTPException(404, detail=f"no dataset {dataset_id}")
    return row
