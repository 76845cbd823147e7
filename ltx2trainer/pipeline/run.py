"""One training job from request to published outputs: fetch → prepare → encode → train → validate → publish.

Takes a context (job id, work dir, settings, storage, cancel check, progress and log reporting) and the
validated input; knows nothing of HTTP, Celery or the database, so it runs from a worker or a test alike.
Every stage leaves its results in the job's work dir and reuses them, so a job resumed after a crash
continues where it was (download, extraction, samples, latents, checkpoints).

Outputs are returned as file references `{key, content_type, file_name, file_size}` in object storage; the
gateway turns them into time-limited URLs when it answers.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ltx2trainer.errors import JobCancelled, ModelError, UserInputError
from ltx2trainer.model.identity import BaseModelInfo, describe_model  # torch-free
from ltx2trainer.pipeline.continuation import (
    ENCODED_PREFIX,
    PREPARED_ARCHIVE,
    ParentCheckpoint,
    check_parent_model,
    pack_prepared,
    unpack_prepared,
    zip_folders,
)
from ltx2trainer.pipeline.dataset_source import fetch_and_prepare
from ltx2trainer.pipeline.fetch import download, local_path
from ltx2trainer.pipeline.preprocess import Progress
from ltx2trainer.pipeline.preprocess.manifest import REPORT_NAME
from ltx2trainer.pipeline.preprocess.report import PrepareReport
from ltx2trainer.schemas import (
    DATASET_FIELDS,
    CancelledTrainingMetrics,
    TrainingInput,
    TrainingMetrics,
    TrainingOutput,
    finite_loss,
    promoted_output,
)
from ltx2trainer.settings import Settings
from ltx2trainer.uploads import parse_reference

log = logging.getLogger(__name__)

FileRef = dict[str, Any]


class JobContext(Protocol):
    """What the pipeline needs from whoever runs it."""

    job_id: str
    work_dir: Path
    settings: Settings
    partial_output: TrainingOutput | None
    own_output: TrainingOutput | None  # set when early stopping returns a checkpoint's output instead

    def set_phase(self, phase: str) -> None: ...
    def log(self, message: str, level: str = "INFO") -> None: ...
    def report_step(self, info: Any) -> None: ...  # a training StepInfo
    def cancelled(self) -> bool: ...
    def publish(self, name: str, path: Path, content_type: str, *, announce: bool = False) -> FileRef: ...
    def open_upload(self, sha256: str) -> BinaryIO: ...  # inline data the gateway stored (uploads.py)
    # A published checkpoint: {step, train_loss, holdout_loss, files: {lora_file, lora_comfyui_file, config_file,
    # video}}; once per step.
    def record_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    # `resume_from`: the caller's training's checkpoint of `step`, downloaded into `folder`; raises
    # UserInputError when it is not the owner's, not finished, or has no such checkpoint.
    def fetch_parent(self, training_id: str, step: int, folder: Path) -> ParentCheckpoint: ...
    # `dataset_id`: the owner's ready dataset, downloaded into `folder`: (prepared zip, encoded-latent zips, the
    # names of the encoded caches it has); and storing one more encoded cache with it.
    def fetch_dataset(self, dataset_id: str, folder: Path) -> tuple[Path, list[Path], set[str]]: ...
    def store_dataset_cache(self, dataset_id: str, cache_name: str, archive: Path) -> None: ...
    # The implicit dataset of a data URL: the owner's ready dataset of this content and fields (its id), and
    # keeping this job's prepared folder (work/dataset) as a new one (returns its id).
    def find_dataset(self, sha256: str, fields: dict[str, Any]) -> str | None: ...
    def register_dataset(self, sha256: str, fields: dict[str, Any], adjustments: list[Any], work: Path) -> str: ...


def run_job(ctx: JobContext, training_input: TrainingInput) -> TrainingOutput:
    """Run every stage; returns the output (file references). Raises UserInputError, JobCancelled (then
    `ctx.partial_output` is the last checkpoint's output, or None).

    The adjustments that `training_input` carries are the ones report.json and config.json record: a service
    job's are those made at submission (`TrainingInput.from_job`).

    The configured base model is identified first (no torch, no download): a misconfigured one fails the
    job with `model_error` before anything is fetched, encoded or billed. Then the job is planned on this
    worker's GPU (ltx2trainer.planning): a job that fits in no configuration fails with
    `insufficient_gpu_memory`, otherwise the plan's base precision, optimizer and validation size are used
    and the plan is recorded in config.json as `memory_plan`.
    """
    work = ctx.work_dir
    check = _cancel_check(ctx)
    text_encoder = ctx.settings.text_encoder or None
    base = describe_model(ctx.settings.model, text_encoder)
    ctx.log(f"base model: {base.label()}")
    memory_plan = _memory_plan(ctx, training_input)  # refuses, unbilled, a job that cannot fit this GPU
    if memory_plan is not None:
        training_input = _with_validation_adjusted(training_input, memory_plan)

    ctx.set_phase("fetching")
    parent, dataset_id, dataset_caches, sha256 = None, None, set(), None
    if training_input.resume_from is not None:  # the parent's data, as it prepared and encoded it
        parent = _continue_from(ctx, training_input, base)
        report = PrepareReport.read(work / "dataset")
    elif training_input.dataset_id is not None:  # prepared once, by a prepare worker
        dataset_id = training_input.dataset_id
        dataset_caches = _use_dataset(ctx, dataset_id)
        report = PrepareReport.read(work / "dataset")
    else:
        ctx.log("fetching the training data")
        source, sha256 = _fetch_archive(ctx, training_input)
        # The implicit dataset: the same content prepared with the same fields before is used as it is.
        dataset_id = ctx.find_dataset(sha256, _dataset_fields(training_input)) if sha256 else None
        if dataset_id is not None:
            ctx.log(f"this data was prepared before with the same fields (dataset {dataset_id}): reusing it")
            dataset_caches = _use_dataset(ctx, dataset_id)
            report = PrepareReport.read(work / "dataset")
        else:
            report = fetch_and_prepare(training_input, work / "fetch", work / "dataset", ctx.settings,
                                       source=source, allow_local=True if source else None, on_phase=ctx.set_phase,
                                       on_progress=_prepare_logger(ctx), cancel=ctx.cancelled).report
    ctx.log(f"dataset: {report.describe()}")
    for skipped in report.skipped:
        ctx.log(f"skipped {skipped.source}: {skipped.reason} ({skipped.detail})", "WARN")

    images = _fetch_validation_images(ctx, training_input)
    check()

    from ltx2trainer.pipeline.train import run_training  # torch and diffusers: only workers load them

    out_dir = work / "outputs"
    ctx.set_phase("encoding")

    def publish_validation(step: int, clips: list[Path]) -> None:
        for clip in clips:
            ctx.publish(f"validation/{clip.name}", clip, "video/mp4", announce=True)

    published_files: dict[int, dict[str, Any]] = {}  # by step: what early stopping may deliver instead

    def publish_checkpoint(published) -> None:  # a pipeline.train.PublishedCheckpoint
        prefix = f"checkpoints/step_{published.step:06d}/"
        exported = published.exported
        files = {
            "lora_file": ctx.publish(prefix + "lora.safetensors", exported.lora_file, "application/octet-stream"),
            "lora_comfyui_file": ctx.publish(prefix + "lora_comfyui.safetensors", exported.comfyui_file,
                                             "application/octet-stream"),
            "config_file": ctx.publish(prefix + "config.json", exported.config_file, "application/json"),
            "video": ctx.publish(prefix + "validation.mp4", published.video, "video/mp4") if published.video else None,
        }
        loss = None if published.train_loss is None else round(published.train_loss, 6)
        ctx.record_checkpoint({"step": published.step, "train_loss": loss,
                               "holdout_loss": finite_loss(published.holdout_loss), "files": files})
        published_files[published.step] = files
        ctx.log(f"checkpoint of step {published.step} published")
        shutil.rmtree(exported.lora_file.parent, ignore_errors=True)  # it is in object storage now

    overrides = {"checkpoint_every": ctx.settings.checkpoint_every_steps, "compile_blocks": ctx.settings.compile_blocks,
                 **_plan_overrides(ctx, memory_plan)}
    recorded = {"memory_plan": memory_plan.as_dict()} if memory_plan is not None else {}
    if parent is not None:
        recorded["parent"] = parent.recorded()
    try:
        result = run_training(
            work / "dataset", out_dir, training_input, model=ctx.settings.model, text_encoder=text_encoder,
            work_dir=work / "train",
            validation_images=images, on_phase=ctx.set_phase, on_step=ctx.report_step, cancel=ctx.cancelled,
            on_validation=publish_validation, config_overrides=overrides, on_checkpoint=publish_checkpoint,
            initial_lora=parent.lora_file if parent is not None else None, extra=recorded,
        )
    except JobCancelled:
        ctx.partial_output = _publish_last_checkpoint(ctx, training_input, work, base, recorded)
        if ctx.partial_output is not None:
            _store_prepared(ctx, work)
        raise
    _store_prepared(ctx, work)
    if dataset_id is None and sha256 is not None:  # prepared here: now a dataset the next training reuses
        dataset_id = ctx.register_dataset(sha256, _dataset_fields(training_input),
                                          [a.model_dump(mode="json") for a in training_input.adjustments], work)
        ctx.log(f"the prepared data is kept as dataset {dataset_id}")
    if dataset_id is not None:
        _store_dataset_caches(ctx, dataset_id, work, dataset_caches)

    ctx.set_phase("publishing")
    final_loss = finite_loss(result.losses[-1], None) if result.losses else None  # a diverged last step: None
    metrics = TrainingMetrics(steps=result.steps_done, final_loss=final_loss,
                              training_seconds=round(result.seconds, 2), samples=report.counts.samples_out,
                              holdout_loss=finite_loss(result.holdout_loss),
                              early_stopping=result.early_stopping, samples_encoded=result.samples_encoded,
                              samples_reused=result.samples_reused, dataset_id=dataset_id)
    debug_dataset = ctx.publish("debug_dataset.zip", _zip_dataset(work / "dataset", work / "debug_dataset.zip"),
                                "application/zip") if training_input.debug_dataset else None
    if result.diverged is not None:
        return _best_after_divergence(ctx, result, metrics, debug_dataset, published_files)
    exported = result.exported
    output = TrainingOutput(
        lora_file=ctx.publish("lora.safetensors", exported.lora_file, "application/octet-stream"),
        config_file=ctx.publish("config.json", exported.config_file, "application/json"),
        video=ctx.publish("validation.mp4", result.video, "video/mp4") if result.video else None,
        lora_comfyui_file=ctx.publish("lora_comfyui.safetensors", exported.comfyui_file, "application/octet-stream"),
        metrics=metrics, debug_dataset=debug_dataset,
    )
    return _best_if_stopped_early(ctx, output, published_files)


def _best_after_divergence(ctx: JobContext, result, metrics: TrainingMetrics, debug_dataset: Any,
                           published_files: dict[int, dict[str, Any]]) -> TrainingOutput:
    """The last step diverged but early stopping had a finite best checkpoint: that checkpoint is the output,
    and there is no last-step output to keep (`ctx.own_output` stays None). Without its files (their upload
    failed) the job fails as any diverged run does."""
    stopped = result.early_stopping
    files = published_files.get(stopped.best_step)
    if files is None:
        raise UserInputError(result.diverged, code="training_diverged")
    ctx.log(f"the adapter diverged by step {stopped.stopped_at_step}; the output is the best checkpoint, step "
            f"{stopped.best_step} ({stopped.measured.replace('_', ' ')} {stopped.best_loss})", "WARN")
    base = {"metrics": metrics.model_dump(mode="json"), "debug_dataset": debug_dataset}
    return TrainingOutput.model_validate(promoted_output(base, files, stopped.best_step))


def _best_if_stopped_early(ctx: JobContext, output: TrainingOutput,
                           published_files: dict[int, dict[str, Any]]) -> TrainingOutput:
    """A run that early stopping ended delivers its best checkpoint (the last step's output is kept aside,
    `ctx.own_output`); any other run, its last step."""
    stopped = output.metrics.early_stopping if isinstance(output.metrics, TrainingMetrics) else None
    if stopped is None:
        return output
    files = published_files.get(stopped.best_step)
    if files is None:  # its export failed (nothing published at that step): the last step is all there is
        ctx.log(f"stopped early at step {stopped.stopped_at_step}; the best checkpoint (step {stopped.best_step}) "
                "was not published, so the output is the last step's", "WARN")
        return output
    ctx.log(f"stopped early at step {stopped.stopped_at_step}: no better {stopped.measured} in {stopped.patience} "
            f"checkpoints; the output is the best checkpoint, step {stopped.best_step}")
    ctx.own_output = output
    return TrainingOutput.model_validate(promoted_output(output.model_dump(mode="json"), files, stopped.best_step))


def _memory_plan(ctx: JobContext, training_input: TrainingInput):
    """The memory plan of this job on this worker's GPU (None on a worker without one, or for a model the
    planner cannot size); a job that fits in no configuration fails here with `insufficient_gpu_memory`."""
    from ltx2trainer.pipeline.gpu import worker_gpu
    from ltx2trainer.planning.service import plan_for, refusal_message

    gpu = worker_gpu(ctx.settings)
    if gpu is None:
        return None
    try:
        memory_plan = plan_for(training_input, ctx.settings, gpu_memory_gb=gpu.memory_gb,
                               supports_fp8=gpu.supports_fp8)
    except ModelError as exc:
        ctx.log(f"no memory plan: {exc.message}", "WARN")
        return None
    if not memory_plan.fits:
        raise UserInputError(refusal_message(memory_plan), code="insufficient_gpu_memory")
    phases = ", ".join(f"{name} {phase['peak_gb']:.1f}" for name, phase in memory_plan.as_dict()["phases"].items())
    ctx.log(f"memory plan for {gpu.memory_gb:g} GB ({gpu.source}): {memory_plan.settings.base_precision} base, "
            f"{memory_plan.settings.optimizer}; predicted peaks (GB): {phases}")
    for adjustment in memory_plan.adjustments:
        ctx.log(f"adjusted {adjustment['field']}: {adjustment['requested']} -> {adjustment['used']} "
                f"({adjustment['reason']})", "WARN")
    return memory_plan


def _read_upload(ctx: JobContext, folder: Path, sha256: str, size: int) -> Path:
    """Copy the stored upload next to the job's other fetched files (kept for a resumed attempt)."""
    target = folder / f"upload-{sha256}.zip"
    if target.exists() and target.stat().st_size == size:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with ctx.open_upload(sha256) as source, open(target, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
    except FileNotFoundError:
        raise UserInputError("the uploaded training data is no longer stored; submit it again",
                             code="not_found") from None
    return target


def _with_validation_adjusted(training_input: TrainingInput, memory_plan) -> TrainingInput:
    """The request with the smaller validation the plan chose (the fields the adjustments name)."""
    update = {adjustment["field"]: adjustment["used"] for adjustment in memory_plan.adjustments}
    return training_input.model_copy(update=update) if update else training_input


def _plan_overrides(ctx: JobContext, memory_plan) -> dict[str, Any]:
    """The plan's base precision, optimizer and accumulation, as far as the engine's TrainConfig takes them
    (a TrainConfig without these fields runs with its defaults, and the log says so)."""
    if memory_plan is None:
        return {}
    from ltx2trainer.training.trainer import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    wanted = memory_plan.train_config_overrides()
    ignored = sorted(set(wanted) - known)
    if ignored:
        ctx.log(f"the training engine does not take {', '.join(ignored)} yet: the memory plan's "
                f"{', '.join(f'{k}={wanted[k]}' for k in ignored)} is not applied", "WARN")
    return {key: value for key, value in wanted.items() if key in known}


def _continue_from(ctx: JobContext, training_input: TrainingInput, base: BaseModelInfo) -> ParentCheckpoint:
    """Fetch the parent's checkpoint and prepared data, check it was trained on this worker's model, and put
    its data where preparing and encoding would have (kept by a resumed attempt of this job)."""
    resume = training_input.resume_from
    ctx.log(f"continuing training {resume.training_id} from its checkpoint of step {resume.step}, on its "
            "prepared and encoded data")
    parent = ctx.fetch_parent(resume.training_id, resume.step, ctx.work_dir / "parent")
    check_parent_model(parent, base)
    if not (ctx.work_dir / "dataset" / REPORT_NAME).exists():
        unpack_prepared(parent.prepared, ctx.work_dir)
    return parent


def _dataset_fields(training_input: TrainingInput) -> dict[str, Any]:
    return training_input.model_dump(mode="json", include={"training_data_url", *DATASET_FIELDS})


def _fetch_archive(ctx: JobContext, training_input: TrainingInput) -> tuple[str | None, str | None]:
    """The training data as a local archive, and its SHA-256: the gateway's stored upload, or a download (kept
    for a resumed attempt). (None, None) for a local path (the CLI's, or where settings allow file URLs): it is
    fetched and prepared as it is, without an implicit dataset."""
    from ltx2trainer.pipeline.dataset_files import file_sha256
    from ltx2trainer.pipeline.fetch import ARCHIVE_NAME

    if (upload := parse_reference(training_input.training_data_url)) is not None:  # the gateway's (uploads.py)
        return str(_read_upload(ctx, ctx.work_dir / "fetch", *upload)), upload[0]
    if local_path(training_input.training_data_url) is not None:
        return None, None
    archive = ctx.work_dir / "fetch" / ARCHIVE_NAME
    if not archive.exists():  # a finished download from an earlier attempt is reused
        archive.parent.mkdir(parents=True, exist_ok=True)

        def downloaded(received: int, total: int | None) -> None:
            if ctx.cancelled():
                raise JobCancelled("cancelled by the user")

        download(training_input.training_data_url, archive, ctx.settings, on_progress=downloaded)
    return str(archive), file_sha256(archive)


def _use_dataset(ctx: JobContext, dataset_id: str) -> set[str]:
    """Put the dataset's prepared folder and its encoded latents where preparing and encoding would have; returns
    the names of the encoded caches it already had."""
    ctx.log(f"training on dataset {dataset_id}: nothing to fetch or prepare")
    if (ctx.work_dir / "dataset" / REPORT_NAME).exists():  # a resumed attempt of this job unpacked it already
        return set()
    prepared, encoded, names = ctx.fetch_dataset(dataset_id, ctx.work_dir / "from_dataset")
    for archive in (prepared, *encoded):
        unpack_prepared(archive, ctx.work_dir)
        archive.unlink(missing_ok=True)
    return names


def _store_dataset_caches(ctx: JobContext, dataset_id: str, work: Path, known: set[str]) -> None:
    """Give the dataset the latents this job encoded for a base model it had none for."""
    for folder in sorted((work / "train").glob(ENCODED_PREFIX + "*")):
        if folder.name not in known and folder.is_dir():
            archive = zip_folders(work / f"{folder.name}.zip", work, [folder])
            ctx.store_dataset_cache(dataset_id, folder.name, archive)
            archive.unlink(missing_ok=True)
            ctx.log(f"stored the encoded latents with dataset {dataset_id} for the next training on this model")


def _store_prepared(ctx: JobContext, work: Path) -> None:
    """Keep the prepared dataset and encoded latents with the job, so that a training can continue from its
    checkpoints without preparing or encoding again (pipeline/continuation.py)."""
    archive = pack_prepared(work, work / "prepared_data.zip")
    ctx.publish(PREPARED_ARCHIVE, archive, "application/zip")
    archive.unlink(missing_ok=True)


def _cancel_check(ctx: JobContext):
    def check() -> None:
        if ctx.cancelled():
            raise JobCancelled("cancelled by the user")
    return check


def _prepare_logger(ctx: JobContext):
    def on_progress(event: Progress) -> None:
        if event.done == event.total:
            ctx.log(f"{event.stage}: {event.total} done")
    return on_progress


def _fetch_validation_images(ctx: JobContext, training_input: TrainingInput) -> list[Path | None] | None:
    """Download each validation entry's image (http(s), data: or, where allowed, a local path)."""
    entries = training_input.validation
    if not entries or entries[0].image_url is None:
        return None
    folder = ctx.work_dir / "validation_images"
    folder.mkdir(parents=True, exist_ok=True)
    images: list[Path | None] = []
    for i, entry in enumerate(entries):
        url = entry.image_url or ""
        target = folder / f"image_{i}"
        local = local_path(url)
        if local is not None:  # only accepted by the schema where settings allow local files
            if not local.is_file():
                raise UserInputError(f"validation[{i}].image_url: file not found: {url}", code="not_found")
            shutil.copyfile(local, target)
        elif not target.exists():
            try:
                download(url, target, ctx.settings)
            except UserInputError as exc:
                raise UserInputError(f"validation[{i}].image_url: {exc.message}", code=exc.code) from exc
        _check_image(target, i)
        images.append(target)
    return images


def _check_image(path: Path, index: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"validation[{index}].image_url is not a readable image", code="bad_image") from exc


def _publish_last_checkpoint(ctx: JobContext, training_input: TrainingInput, work: Path,
                             base: BaseModelInfo, recorded: dict[str, Any] | None = None) -> TrainingOutput | None:
    """When a run is cancelled mid-training: the newest checkpoint's LoRA, exported like a final one (none
    when that LoRA is broken or empty: the job is still cancelled, with nothing to deliver)."""
    from safetensors.torch import load_file

    from ltx2trainer.pipeline.export import export_lora
    from ltx2trainer.training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(work / "train" / "checkpoints")
    if not checkpoints:
        return None
    last = checkpoints[-1]
    try:
        exported = export_lora(work / "cancelled", load_file(str(last.lora_file)), training_input, base_model=base,
                               steps=last.step, extra={"training": {"steps": last.step, "cancelled": True},
                                                       **(recorded or {})})
    except UserInputError as exc:
        ctx.log(f"cancelled: the LoRA of step {last.step} is not published: {exc.message}", "WARN")
        return None
    ctx.log(f"cancelled: publishing the LoRA of step {last.step}", "WARN")
    return TrainingOutput(
        lora_file=ctx.publish("lora.safetensors", exported.lora_file, "application/octet-stream"),
        config_file=ctx.publish("config.json", exported.config_file, "application/json"),
        lora_comfyui_file=ctx.publish("lora_comfyui.safetensors", exported.comfyui_file, "application/octet-stream"),
        metrics=CancelledTrainingMetrics(steps=last.step, cancelled_at_step=last.step),
    )


def _zip_dataset(dataset_dir: Path, archive: Path) -> Path:
    """The processed dataset (manifest, report, media) as a zip: the hosted API's `debug_dataset`."""
    return zip_folders(archive, dataset_dir, [dataset_dir])
