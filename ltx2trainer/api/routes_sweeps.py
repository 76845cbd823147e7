"""Sweeps (`jobs/sweeps.py`): one dataset, a grid of training settings, one training per point, compared.

`POST /v1/sweeps` `{"dataset_id", "grid": {"learning_rate": [...], "rank": [...]}, "base": {...},
"max_cost_usd"}`: every point is validated (as a training on that dataset) before anything is created, then the
whole sweep is estimated and checked against the budget once, in the transaction that creates one ordinary
training per point (each tagged with the sweep in its metadata) and the sweep: all of them, or nothing.
`GET /v1/sweeps/{id}` compares them: status, cost, final and held-out loss, and the best so far.
"""

from __future__ import annotations

import itertools
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, HTTPException

from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.routes_trainings import budget_guard, enqueue_created, job_fields, prepare_training
from ltx2trainer.billing.ledger import estimated_cost
from ltx2trainer.jobs.sweeps import get_sweep, new_sweep, new_sweep_id, sweep_jobs
from ltx2trainer.schemas import DATASET_FIELDS

router = APIRouter(prefix="/v1", tags=["sweeps"])
SWEEPABLE = ("learning_rate", "rank", "number_of_steps", "first_frame_conditioning_p", "seed")
MAX_TRAININGS = 16
NOT_IN_BASE = ("dataset_id", "training_data_url", "resume_from", *DATASET_FIELDS)


def _refuse(loc: list[Any], message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": message, "type": "value_error"}])


def _points(body: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, list], list[dict[str, Any]]]:
    """dataset_id, base, grid and the grid's points, or a 422 naming what is wrong."""
    dataset_id, grid, base = body.get("dataset_id"), body.get("grid"), body.get("base", {})
    if not isinstance(dataset_id, str) or not dataset_id:
        raise _refuse(["dataset_id"], "dataset_id is required: a sweep trains on one of your ready datasets")
    if not isinstance(base, dict):
        raise _refuse(["base"], "base must be an object of training fields")
    if not isinstance(grid, dict) or not grid:
        raise _refuse(["grid"], f"grid must map one or more of {', '.join(SWEEPABLE)} to lists of values")
    for name, values in grid.items():
        if name not in SWEEPABLE:
            raise _refuse(["grid", name], f"{name} cannot be swept; a grid takes {', '.join(SWEEPABLE)}")
        if not isinstance(values, list) or not values or len(set(map(repr, values))) != len(values):
            raise _refuse(["grid", name], f"grid.{name} must be a non-empty list of distinct values")
    for name in base:
        if name in NOT_IN_BASE or name in grid:
            raise _refuse(["base", name], f"base.{name} is not allowed: the data comes from the dataset and the "
                                          "swept fields from the grid")
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_TRAININGS:
        raise _refuse(["grid"], f"the grid has {count} points; a sweep runs at most {MAX_TRAININGS} trainings")
    names = list(grid)
    points = [dict(zip(names, combination, strict=True)) for combination in itertools.product(*grid.values())]
    return dataset_id, base, grid, points


@router.post("/sweeps", status_code=201, summary="Train one dataset at every point of a small grid")
def create_sweep(principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
                 body: dict[str, Any]) -> dict[str, Any]:
    dataset_id, base, grid, points = _points(body)
    try:
        max_cost = Decimal(str(body["max_cost_usd"])) if body.get("max_cost_usd") is not None else None
    except InvalidOperation:
        raise _refuse(["max_cost_usd"], "max_cost_usd must be a number") from None
    sweep_id = new_sweep_id()
    jobs, steps = [], 0
    for index, values in enumerate(points):  # every point is checked before anything is created
        point_body = {**base, **values, "dataset_id": dataset_id,
                      "metadata": {**(base.get("metadata") or {}), "sweep_id": sweep_id, "sweep_point": values}}
        try:
            prepared = prepare_training(services, principal, point_body)
            jobs.append(services.lifecycle.new_job(**job_fields(services, principal, prepared, base_url=base_url)))
        except HTTPException as exc:
            if isinstance(exc.detail, list):
                for error in exc.detail:
                    error["msg"] = f"grid point {index} {values}: {error['msg']}"
            raise
        steps += prepared.input.number_of_steps
    price = services.settings.price_per_step
    estimate = estimated_cost(steps, None, price)
    recorded = [{"training_id": job.id, "values": values} for job, values in zip(jobs, points, strict=True)]
    # One transaction: the budget check for the whole sweep (holding the key's lock), every training and the
    # sweep; a refusal creates none of them, and a concurrent submit with the key is checked before or after.
    services.lifecycle.submit_all(
        jobs, guard=budget_guard(principal, estimate=estimate, number_of_steps=steps, max_cost_usd=max_cost,
                                 unit_price=price, subject=f"the sweep of {len(jobs)} trainings"),
        alongside=[new_sweep(sweep_id, principal.owner, dataset_id, base, grid, recorded)])
    for job in jobs:
        enqueue_created(services, job)
    return {"id": sweep_id, "object": "sweep", "dataset_id": dataset_id, "grid": grid, "base": base,
            "estimated_cost_usd": str(estimate), "trainings": recorded,
            "urls": {"get": f"{base_url}/v1/sweeps/{sweep_id}"}}


@router.get("/sweeps/{sweep_id}", summary="A sweep's trainings side by side")
def get_sweep_comparison(sweep_id: str, principal: PrincipalDep, services: ServicesDep,
                         base_url: BaseUrlDep) -> dict[str, Any]:
    row = get_sweep(services.db, sweep_id, principal.owner)
    if row is None:
        raise HTTPException(404, detail=f"no sweep {sweep_id}")
    jobs = sweep_jobs(services.db, row)
    price = services.settings.price_per_step
    trainings = []
    for point in row.points:
        job = jobs.get(point["training_id"])
        if job is None:
            continue
        metrics = (job.output or {}).get("metrics") or {}
        usage = job.usage or {}
        trainings.append({
            "training_id": job.id, "values": point["values"], "status": job.status,
            "steps_completed": usage.get("steps_completed", 0), "cost_usd": usage.get("amount_usd", "0"),
            "estimated_cost_usd": str(estimated_cost(job.input.get("number_of_steps", 0), job.usage, price)),
            "final_loss": metrics.get("final_loss"), "holdout_loss": metrics.get("holdout_loss"),
            "promoted_step": (job.output or {}).get("promoted_step"),
            "url": f"{base_url}/v1/trainings/{job.id}",
        })
    done = [t for t in trainings if t["status"] == "succeeded"]
    measured = "holdout_loss" if done and all(t["holdout_loss"] is not None for t in done) else "final_loss"
    ranked = sorted((t for t in done if t[measured] is not None), key=lambda t: t[measured])
    return {
        "id": row.id, "object": "sweep", "dataset_id": row.dataset_id, "grid": row.grid, "base": row.base,
        "created_at": row.created_at.isoformat(), "trainings": trainings,
        "finished": sum(1 for t in trainings if t["status"] in ("succeeded", "failed", "cancelled")),
        "cost_usd": str(sum((Decimal(t["cost_usd"]) for t in trainings), Decimal(0))),
        "best": {"training_id": ranked[0]["training_id"], "values": ranked[0]["values"], "by": measured,
                 "loss": ranked[0][measured]} if ranked else None,
    }
