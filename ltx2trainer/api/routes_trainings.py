"""Native REST: submit, get, list (history), cancel, events (SSE), logs, estimates, file downloads.

A submission that fits no worker GPU (ltx2trainer.planning, when LTX2T_GPU_MEMORY_GB is set here) is refused
with a 422 before anything is queued or billed; an estimate includes the memory plan.

Routes are thin: validate, call one domain function, map the outcome to HTTP. Another owner's job is a 404,
exactly like a job that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from ltx2trainer import netguard, uploads
from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.openapi import TrainingInputBody
from ltx2trainer.api.render import render_checkpoints, render_file, render_job
from ltx2trainer.api.resume import with_dataset_fields, with_parent_fields
from ltx2trainer.api.sse import job_event_stream
from ltx2trainer.billing.ledger import check_budget, estimated_cost, initial_usage
from ltx2trainer.errors import UserInputError
from ltx2trainer.jobs.lifecycle import CHECKPOINT_EVENT, CancelOutcome, IdempotencyConflict, request_hash
from ltx2trainer.jobs.models import JobStatus
from ltx2trainer.jobs.promotion import PromoteOutcome, checkpoint_events, final_output, promote
from ltx2trainer.jobs.store import InvalidCursor
from ltx2trainer.planning.service import gateway_plan, refusal_message
from ltx2trainer.schemas import OUTPUT_FILES, ProgressReport, TrainingInput, TrainingJob
from ltx2trainer.storage import owner_prefix

log = logging.getLogger(__name__)
MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit integers in both databases
router = APIRouter(prefix="/v1", tags=["trainings"])


def validate_training_input(body: Any, allow_file_urls: bool, *, allow_uploads: bool = False) -> TrainingInput:
    """The request body as a TrainingInput, or a 422 with one entry per problem (FastAPI's shape).
    `allow_uploads`: the body may refer to data the gateway stored (`upload:`), as a parent's does."""
    if not isinstance(body, dict):
        raise HTTPException(422, detail=[{"loc": ["body"], "msg": "the body must be a JSON object",
                                          "type": "dict_type"}])
    try:
        return TrainingInput.model_validate(body, context={"allow_file_urls": allow_file_urls,
                                                           "allow_uploads": allow_uploads})
    except ValidationError as exc:
        raise HTTPException(422, detail=[
            {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]) from None


def check_gpu_memory(training_input: TrainingInput, settings) -> None:
    """A 422 (the validation errors' shape) for a request that fits no worker GPU, when the gateway knows the
    workers' GPU memory (LTX2T_GPU_MEMORY_GB) and can size the model; otherwise nothing is checked here."""
    if not settings.gpu_memory_gb:
        return
    memory_plan, _ = gateway_plan(training_input, settings)
    if memory_plan is not None and memory_plan.fits is False:
        raise HTTPException(422, detail=[{"loc": ["body"], "msg": refusal_message(memory_plan),
                                          "type": "insufficient_gpu_memory"}])


def store_inline_data(services, owner: str, data_url: str) -> str:
    """Put a `data:` URL's bytes in object storage (once per content) and return their short reference."""
    try:
        data, media_type = uploads.decode_data_url(data_url)
    except UserInputError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "training_data_url"], "msg": exc.message,
                                          "type": exc.code}]) from None
    limit = services.settings.download_max_bytes
    if len(data) > limit:
        raise HTTPException(413, detail=f"the training data is {len(data) / 2**20:.1f} MiB; the limit is "
                                        f"{limit / 2**20:.1f} MiB")
    reference = uploads.reference(data)
    sha256, _ = uploads.parse_reference(reference)
    key = uploads.storage_key(owner_prefix(owner), sha256)
    if not services.storage.exists(key):
        services.storage.put_bytes(key, data, media_type)
    return reference


@dataclass(frozen=True)
class PreparedTraining:
    """A training request validated, not stored yet (`prepare_training`); `job_fields` makes it a job."""

    input: TrainingInput
    body_hash: str  # tells an idempotent replay from a reused Idempotency-Key
    app_id: str | None = None
    fal_webhook: str | None = None


def prepare_training(services, principal, body: dict[str, Any], *, app_id: str | None = None,
                     fal_webhook: str | None = None) -> PreparedTraining:
    """Validate a request, filled in from its parent or dataset, and its webhook URLs (a 422 names what is
    wrong); nothing is stored or billed."""
    resumed = with_parent_fields(services, principal.owner, body)  # `resume_from`: the parent's data and rank
    resumed = with_dataset_fields(services, principal.owner, resumed)  # `dataset_id`: the dataset's data
    training_input = validate_training_input(resumed, services.settings.allow_file_urls,
                                             allow_uploads=resumed is not body)
    for what, url in (("webhook_url", training_input.webhook_url), ("fal_webhook", fal_webhook)):
        if url:  # refused now rather than failing every delivery later
            try:
                netguard.check_url_at_submit(url, allow_private=services.settings.allow_private_urls, what=what)
            except UserInputError as exc:
                raise HTTPException(422, detail=[{"loc": ["body", what] if what == "webhook_url" else
                                                  ["query", what], "msg": exc.message, "type": exc.code}]) from None
    body_hash = request_hash({"body": body, "app_id": app_id, "fal_webhook": fal_webhook})
    return PreparedTraining(training_input, body_hash, app_id, fal_webhook)


def job_fields(services, principal, prepared: PreparedTraining, *, base_url: str) -> dict[str, Any]:
    """What `Lifecycle.submit` (or `new_job`) takes to create the job of a prepared request, its unit price fixed
    now (its estimate and its bill use this one): a 422 for a training that fits no worker GPU, and inline data
    stored once as a file, referred to after."""
    training_input = prepared.input
    check_gpu_memory(training_input, services.settings)
    stored_input = training_input.model_dump(mode="json")
    if training_input.training_data_url.startswith("data:"):
        stored_input["training_data_url"] = store_inline_data(services, principal.owner,
                                                              training_input.training_data_url)
    return {"owner": principal.owner, "training_input": stored_input,
            "adjustments": [a.model_dump(mode="json") for a in training_input.adjustments],
            "app_id": prepared.app_id, "webhook_url": training_input.webhook_url,
            "fal_webhook": prepared.fal_webhook, "metadata": training_input.metadata,
            "body_hash": prepared.body_hash, "public_base_url": base_url, "api_key_id": principal.key_id,
            "usage": initial_usage(services.settings.price_per_step)}


def budget_guard(principal, *, estimate: Decimal, number_of_steps: int, max_cost_usd: Decimal | None,
                 unit_price: Decimal, subject: str = "the training") -> Callable[[Session], None]:
    """`check_budget` as a `Lifecycle` guard, in the transaction that creates the job(s), so that concurrent
    submits with one key queue up there: a 402 when refused, its message about `subject`."""

    def guard(session: Session) -> None:
        refusal = check_budget(session, api_key_id=principal.key_id, estimate=estimate, max_cost_usd=max_cost_usd,
                               number_of_steps=number_of_steps, unit_price=unit_price)
        if refusal is not None:
            raise HTTPException(402, detail=refusal.message.replace("the training", subject))

    return guard


def enqueue_created(services, job) -> None:
    """Publish a created job to the workers. A broker that is down is no error: the job is safe in the database,
    queued, and the workers' sweeper publishes a queued job the broker does not hold once it answers again
    (worker/app.sweep_lost_jobs), so the caller gets its job rather than a 5xx to retry blindly."""
    try:
        services.queue.enqueue(job.id)
    except Exception as exc:  # noqa: BLE001 - the broker is down
        log.warning("could not publish job %s now (%s: %s); the sweeper will once the broker answers",
                    job.id, type(exc).__name__, exc)


def submit_training(services, principal, body: dict[str, Any], *, idempotency_key: str | None, base_url: str,
                    app_id: str | None = None, fal_webhook: str | None = None):
    """Validate, check the budget, create a job and enqueue it; returns (job, replayed). Shared with the
    fal facade (sweeps use its parts to create their trainings together). An idempotent replay returns the
    original job before any budget is checked again."""
    prepared = prepare_training(services, principal, body, app_id=app_id, fal_webhook=fal_webhook)
    try:
        replay = services.lifecycle.replay(principal.owner, idempotency_key, prepared.body_hash)
        if replay is not None:
            return replay, True
        fields = job_fields(services, principal, prepared, base_url=base_url)
        price = services.settings.price_per_step
        steps = prepared.input.number_of_steps
        within_budget = budget_guard(principal, estimate=estimated_cost(steps, fields["usage"], price),
                                     number_of_steps=steps, max_cost_usd=prepared.input.max_cost_usd,
                                     unit_price=price)
        job, replayed = services.lifecycle.submit(**fields, idempotency_key=idempotency_key, guard=within_budget)
    except IdempotencyConflict as exc:
        # 422, not 409: queue clients retry 409s as if they were transient.
        raise HTTPException(422, detail=str(exc)) from None
    if not replayed:
        enqueue_created(services, job)
    return job, replayed


@router.post("/trainings", status_code=201, response_model=TrainingJob, summary="Start a training")
def create_training(
    principal: PrincipalDep,
    services: ServicesDep,
    base_url: BaseUrlDep,
    response: Response,
    body: TrainingInputBody,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)] = None,
) -> TrainingJob:
    job, replayed = submit_training(services, principal, body, idempotency_key=idempotency_key,
                                    base_url=base_url)
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return render_job(job, services, base_url, services.store.queue_position(job))


@router.get("/trainings/{job_id}", response_model=TrainingJob, summary="A training's status and outputs")
def get_training(job_id: str, principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep) -> Response:
    # The status poll, the hottest request by far: repeated polls are answered by the poll cache in front of
    # the app (api/status_cache.py); this serialises once, skipping FastAPI's re-validation of the model.
    job = services.store.get(job_id, principal.owner)
    if job is None:
        raise HTTPException(404, detail=f"no training {job_id}")
    body = render_job(job, services, base_url, services.store.queue_position(job)).model_dump_json()
    return Response(body, media_type="application/json")


@router.get("/trainings", summary="The caller's training history, newest first")
def list_trainings(
    principal: PrincipalDep,
    services: ServicesDep,
    base_url: BaseUrlDep,
    status: Annotated[str | None, Query(description="queued | running | succeeded | failed | cancelled")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    if status is not None and status not in JobStatus.ALL:
        raise HTTPException(422, detail=f"unknown status {status!r}; use one of {', '.join(JobStatus.ALL)}")
    try:
        rows, next_cursor = services.store.history(principal.owner, status=status, limit=limit, cursor=cursor)
    except InvalidCursor as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return {"object": "list", "data": [render_job(row, services, base_url) for row in rows],
            "next_cursor": next_cursor, "has_more": next_cursor is not None}


@router.post("/trainings/{job_id}/cancel", response_model=TrainingJob, summary="Cancel a training")
def cancel_training(job_id: str, request: Request, principal: PrincipalDep, services: ServicesDep,
                    base_url: BaseUrlDep, response: Response) -> TrainingJob:
    outcome = services.lifecycle.request_cancel(job_id, owner=principal.owner)
    if outcome is CancelOutcome.NOT_FOUND:
        raise HTTPException(404, detail=f"no training {job_id}")
    request.app.state.poll_cache.forget(job_id)  # the owner's cancel: polls see it at once
    job = services.store.get(job_id, principal.owner)
    if outcome is CancelOutcome.ALREADY_TERMINAL and job.status != JobStatus.CANCELLED:
        raise HTTPException(409, detail=f"training {job_id} already {job.status}; nothing to cancel")
    if outcome is CancelOutcome.REQUESTED:
        response.status_code = 202  # it stops at its next check, with its last checkpoint as output
    return render_job(job, services, base_url)


@router.get("/trainings/{job_id}/events", summary="Server-sent events: status, phase, progress, logs, outputs")
async def training_events(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    base_url: BaseUrlDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    _owned_job(services, job_id, principal)
    after = 0
    if last_event_id:  # the id of an event we sent: a decimal integer of the event table's range
        if not (last_event_id.isascii() and last_event_id.isdecimal() and int(last_event_id) <= MAX_EVENT_ID):
            raise HTTPException(422, detail=f"Last-Event-ID must be the id of an event, got {last_event_id[:40]!r}")
        after = int(last_event_id)
    return StreamingResponse(job_event_stream(request, services, job_id, after, base_url),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/trainings/{job_id}/logs", summary="Log lines, paginated by id")
def training_logs(
    job_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="id of the last line already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    _owned_job(services, job_id, principal)
    events = services.store.events(job_id, after_id=after, limit=limit, kinds=("log",))
    lines = [{"id": event.id, **event.data} for event in events]
    return {"object": "list", "data": lines, "next_after": lines[-1]["id"] if lines else after}


@router.get("/trainings/{job_id}/files/{name:path}", summary="Download an output (redirects to a signed URL)")
def training_file(job_id: str, name: str, principal: PrincipalDep, services: ServicesDep,
                  base_url: BaseUrlDep) -> RedirectResponse:
    job = _owned_job(services, job_id, principal)
    ref = (job.output or {}).get(name) if name in OUTPUT_FILES else None
    if ref is None:  # validation clips published during training
        for event in services.store.events(job_id, kinds=("output",), limit=1000):
            if event.data.get("name") == name:
                ref = event.data["file"]
    if ref is None and name.startswith("checkpoints/"):  # checkpoints/step_000050/lora.safetensors
        for event in services.store.events(job_id, kinds=(CHECKPOINT_EVENT,), limit=10_000):
            for file in (event.data.get("files") or {}).values():
                if isinstance(file, dict) and file.get("key", "").endswith("/" + name):
                    ref = file
    if not isinstance(ref, dict):
        raise HTTPException(404, detail=f"training {job_id} has no file {name!r}")
    return RedirectResponse(render_file(ref, services, base_url)["url"], status_code=307)


@router.get("/trainings/{job_id}/checkpoints", summary="The checkpoints a training published, the final one last")
def training_checkpoints(job_id: str, principal: PrincipalDep, services: ServicesDep,
                         base_url: BaseUrlDep) -> dict[str, Any]:
    job = _owned_job(services, job_id, principal)
    with services.db.session() as session:
        by_step, final = checkpoint_events(session, job_id), final_output(session, job)
    return {"checkpoints": render_checkpoints(job, by_step, final, services, base_url)}


@router.post("/trainings/{job_id}/checkpoints/{step}/promote", response_model=TrainingJob,
             summary="Make one of a finished training's checkpoints its output")
def promote_checkpoint(job_id: str, step: int, request: Request, principal: PrincipalDep, services: ServicesDep,
                       base_url: BaseUrlDep) -> TrainingJob:
    """The checkpoint's LoRA files, config.json and validation clip become the output (`output.promoted_step`
    says which step); promoting the last step restores the job's own output. Idempotent and free."""
    outcome, job = promote(services.db, job_id, principal.owner, step)
    if outcome is PromoteOutcome.NOT_FOUND:
        raise HTTPException(404, detail=f"no training {job_id}")
    if outcome is PromoteOutcome.NOT_FINISHED:
        raise HTTPException(409, detail=f"training {job_id} is {job.status}; only a succeeded or cancelled "
                                        "training's checkpoints can be promoted")
    if outcome is PromoteOutcome.NO_CHECKPOINT:
        raise HTTPException(404, detail=f"training {job_id} has no checkpoint of step {step}; "
                                        f"GET /v1/trainings/{job_id}/checkpoints lists them")
    if outcome is PromoteOutcome.NOT_PROMOTABLE:
        raise HTTPException(409, detail=f"the checkpoint of step {step} was published without its config.json "
                                        "and cannot be promoted")
    request.app.state.poll_cache.forget(job_id)  # polls and the queue facade's result see it at once
    return render_job(services.store.get(job_id, principal.owner), services, base_url)


@router.post("/estimates", summary="What a training would cost, before submitting it")
def estimate(principal: PrincipalDep, services: ServicesDep,
             body: TrainingInputBody) -> dict[str, Any]:
    resumed = with_dataset_fields(services, principal.owner, with_parent_fields(services, principal.owner, body))
    training_input = validate_training_input(resumed, services.settings.allow_file_urls,
                                             allow_uploads=resumed is not body)
    steps = training_input.number_of_steps
    rate = _recent_steps_per_second(services)
    memory_plan, memory_error = gateway_plan(training_input, services.settings)
    return {
        "steps": steps,
        "unit_price": str(services.settings.price_per_step),
        "estimated_cost_usd": str(estimated_cost(steps, None, services.settings.price_per_step)),  # today's price
        "currency": "USD",
        "estimated_duration_s": round(steps / rate, 1) if rate else None,
        "adjustments": [a.model_dump(mode="json") for a in training_input.adjustments],
        # The GPU memory plan (docs/memory.md): null with `memory_error` when the gateway cannot size the model;
        # `fits` is null when the workers' GPU memory is not configured here.
        "memory": memory_plan.as_dict() if memory_plan is not None else None,
        **({"memory_error": memory_error} if memory_error else {}),
    }


def _recent_steps_per_second(services: ServicesDep) -> float | None:
    """Mean training speed of the last finished jobs (None before any job has finished)."""
    rows, _ = services.store.history(None, status=JobStatus.SUCCEEDED, limit=20)
    rates = [rate for row in rows if (rate := ProgressReport.of_stored(row.progress).steps_per_s)]
    return sum(rates) / len(rates) if rates else None


def _owned_job(services, job_id: str, principal):
    job = services.store.get(job_id, principal.owner)
    if job is None:
        raise HTTPException(404, detail=f"no training {job_id}")
    return job

