"""Turn job rows into the public envelope, with output file references made into time-limited URLs."""

from __future__ import annotations

from typing import Any

from ltx2trainer.billing.ledger import estimated_cost, job_estimated_cost
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.schemas import JobError, JobProgress, ProgressReport, TrainingJob
from ltx2trainer.storage import render_refs
from ltx2trainer.uploads import displayed_input
from ltx2trainer.wiring import Services


def render_job(job: JobRow, services: Services, base_url: str, queue_position: int | None = None) -> TrainingJob:
    return TrainingJob(
        id=job.id,
        status=job.status,
        phase=job.phase,
        queue_position=queue_position,
        cancel_requested=job.cancel_requested_at is not None,
        progress=JobProgress.of_report(ProgressReport.of_stored(job.progress), job.input.get("number_of_steps")),
        input=displayed_input(job.input),  # URLs with credentials or signatures redacted
        adjustments=job.adjustments or [],
        output=render_output(job.output, services, base_url),
        error=JobError(**job.error) if job.error else None,
        usage=job.usage,
        metadata=job.metadata_,
        estimated_cost_usd=job_estimated_cost(job, services.settings.price_per_step),  # at the job's own price
        created_at=job.created_at.isoformat(),
        started_at=job.started_at.isoformat() if job.started_at else None,
        finished_at=job.finished_at.isoformat() if job.finished_at else None,
        urls={
            "get": f"{base_url}/v1/trainings/{job.id}",
            "cancel": f"{base_url}/v1/trainings/{job.id}/cancel",
            "events": f"{base_url}/v1/trainings/{job.id}/events",
            "logs": f"{base_url}/v1/trainings/{job.id}/logs",
        },
    )


def render_output(output: dict[str, Any] | None, services: Services, base_url: str) -> dict[str, Any] | None:
    """The stored output with every file reference replaced by a File `{url, content_type, file_name, file_size}`."""
    if output is None:
        return None
    return render_refs(services.storage, output, expires_s=services.settings.file_url_ttl_s, base_url=base_url)


def render_file(ref: dict[str, Any], services: Services, base_url: str) -> dict[str, Any]:
    """A fresh signed URL for one stored reference."""
    return render_refs(services.storage, ref, expires_s=services.settings.file_url_ttl_s, base_url=base_url)


CHECKPOINT_FILES = ("lora_file", "lora_comfyui_file", "config_file", "video")


def render_checkpoints(job: JobRow, checkpoints: dict[int, dict[str, Any]], final: dict[str, Any] | None,
                       services: Services, base_url: str) -> list[dict[str, Any]]:
    """The job's published checkpoints (by step: `jobs/promotion.checkpoint_events`), oldest first, then its
    own last-step output `final` (`jobs/promotion.final_output`) as the last one (`final: true`) once it has
    one (succeeded; cancelled: the last checkpoint's LoRA). `promoted` marks the checkpoint that was made the
    job's output (`output.promoted_step`); none is when the output is the last step's own. `cost_usd` is what the steps up to the checkpoint cost at the job's fixed unit price; files are Files
    with freshly signed URLs, as in the outputs."""
    by_step = dict(checkpoints)
    promoted_step = (job.output or {}).get("promoted_step")
    if job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED) and final and final.get("lora_file"):
        metrics = final.get("metrics") or {}
        step = metrics.get("steps") or job.input.get("number_of_steps", 0)
        by_step[int(step)] = {
            "step": step, "created_at": job.finished_at.isoformat() if job.finished_at else None,
            "train_loss": metrics.get("final_loss"), "holdout_loss": metrics.get("holdout_loss"),
            "files": {name: final.get(name) for name in CHECKPOINT_FILES}, "final": True,
        }
    price = services.settings.price_per_step
    return [{
        "step": step,
        "created_at": data.get("created_at"),
        "train_loss": data.get("train_loss"),
        "holdout_loss": data.get("holdout_loss"),
        "cost_usd": str(estimated_cost(step, job.usage, price)),
        "files": render_file({name: (data.get("files") or {}).get(name) for name in CHECKPOINT_FILES},
                             services, base_url),
        "final": bool(data.get("final")),
        "promoted": step == promoted_step,
    } for step, data in sorted(by_step.items())]
