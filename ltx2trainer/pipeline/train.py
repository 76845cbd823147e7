"""Train stage, end to end: a processed dataset in, a LoRA with its config and validation video out.

    load model → encode (once, cached) → hold out samples (training/holdout.py) → encode validation prompts
    → free the text encoder → attach LoRA and train (checkpoints with their held-out loss, validation at
    intervals) → held-out loss of the last step → export

Runs the same in one process or under `accelerate launch` with several (DDP): the main process encodes
first and the others then read its cache; only the main process validates and writes outputs.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ltx2trainer.errors import JobCancelled, UserInputError
from ltx2trainer.model.lora import check_lora_state
from ltx2trainer.model.presets import load_model
from ltx2trainer.pipeline.annotate import write_combined
from ltx2trainer.pipeline.encode import encode_dataset, silence_latents
from ltx2trainer.pipeline.export import ExportedLora, export_lora
from ltx2trainer.pipeline.preprocess.manifest import read_manifest
from ltx2trainer.pipeline.validate import ValidationSettings, Validator
from ltx2trainer.schemas import EarlyStoppingReport, TrainingInput, finite_loss, validation_interval
from ltx2trainer.training.cache import cache_dir_for
from ltx2trainer.training.checkpoint import Checkpoint
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.early_stopping import EarlyStopping
from ltx2trainer.training.holdout import split_holdout
from ltx2trainer.training.probe import probe_loss
from ltx2trainer.training.trainer import StepInfo, TrainConfig, check_train_config, train_lora

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_STEPS = 250
COMBINED_VIDEO_NAME = "validation.mp4"

PhaseCallback = Callable[[str], None]


@dataclass
class TrainingRunResult:
    """What a training run produced (paths are None on processes other than the main one)."""

    exported: ExportedLora | None
    video: Path | None
    validation_clips: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    resumed_from: int | None = None
    samples_encoded: int = 0
    samples_reused: int = 0
    seconds: float = 0.0
    # The loss after the last step on the held-out samples (training/holdout.py), at fixed noise and sigmas;
    # None without held-out samples, under multi-process FSDP, or on processes other than the main one.
    holdout_loss: float | None = None
    holdout_samples: int = 0
    early_stopping: EarlyStoppingReport | None = None  # set when early stopping ended the run
    # Set when the last step's adapter diverged (NaN/Inf) but early stopping has a finite best checkpoint:
    # `exported` is then None and that checkpoint is the run's output (its message, for a failure after all).
    diverged: str | None = None


@dataclass(frozen=True)
class PublishedCheckpoint:
    """A checkpoint handed to `run_training`'s `on_checkpoint`: the adapter exported like the final one, the
    validation video sampled at its step (if any), and the mean training loss of the (up to) 10 steps ending
    there (None right after a resume, which has not trained a step yet), and the loss on the held-out samples
    at fixed noise and sigmas (None when none are held out, or under multi-process FSDP)."""

    step: int
    exported: ExportedLora
    video: Path | None
    train_loss: float | None
    holdout_loss: float | None = None


def train_config_for(training_input: TrainingInput, **overrides) -> TrainConfig:
    """The engine's configuration for a request (intervals scale with the number of steps)."""
    steps = training_input.number_of_steps
    settings = {
        "checkpoint_every": CHECKPOINT_EVERY_STEPS if steps > CHECKPOINT_EVERY_STEPS else 0,
        "validation_every": validation_interval(steps),
        "gradient_checkpointing": torch.cuda.is_available(),
    }
    return TrainConfig.from_input(training_input, **{**settings, **overrides})


def training_summary(losses: list[float], steps: int, processes: int, samples: int, has_audio: bool,
                     config: TrainConfig | None = None, *, holdout_loss: float | None = None,
                     holdout_samples: int = 0) -> dict:
    """What config.json records about the run (losses of this process's run; a resumed run's own steps), and
    how it was trained where that is not in the request: base precision, optimizer, batch and accumulation.
    `samples` counts every sample, the `holdout_samples` held out of the training included; `holdout_loss` is
    their loss after the last step."""
    window = min(10, len(losses))
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    summary = {
        "steps": steps, "processes": processes, "samples": samples, "dataset_has_audio": has_audio,
        "final_loss": losses[-1] if losses else None,
        "loss_first_10": mean(losses[:window]), "loss_last_10": mean(losses[-window:]),
        "holdout_loss": holdout_loss, "holdout_samples": holdout_samples,
    }
    if config is not None:
        summary.update(
            base_precision=config.base_precision, optimizer=config.optimizer, batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps, sharding=config.sharding,
            effective_batch_size=config.effective_batch_size * processes,  # samples per optimizer step, all processes
        )
    return summary


def run_training(
    dataset_dir: Path,
    out_dir: Path,
    training_input: TrainingInput,
    *,
    model: str = "tiny",
    text_encoder: str | None = None,
    lora_dtype: str = "bf16",
    work_dir: Path | None = None,
    validation_images: list[Path | None] | None = None,
    accelerator: Accelerator | None = None,
    on_phase: PhaseCallback | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_validation: Callable[[int, list[Path]], None] | None = None,
    config_overrides: dict | None = None,
    on_checkpoint: Callable[[PublishedCheckpoint], None] | None = None,
    initial_lora: Path | None = None,
    extra: dict | None = None,
) -> TrainingRunResult:
    """Train a LoRA on the processed dataset in `dataset_dir`; outputs go to `out_dir`.

    `model` is a preset, an official single file (with its Gemma folder `text_encoder`) or a diffusers folder /
    hub id; a bad one raises `ModelError` before anything is encoded. The LoRA files are written in
    `lora_dtype` ("bf16" or "fp32"). `work_dir` holds the latent cache and checkpoints (default
    `out_dir/.work`); reusing it resumes.
    `on_validation(step, clip paths)` is called after each validation round. `config_overrides` sets
    `TrainConfig` fields the request has no say in (e.g. `base_precision`, `optimizer`,
    `gradient_accumulation_steps`); settings this device cannot train with fail before anything loads.
    `on_checkpoint` (main process) gets a `PublishedCheckpoint` every `training_input.checkpoint_interval`
    steps before the last; without it no checkpoint is exported.
    `initial_lora` (a LoRA file of either layout, of `training_input.rank`) is where the adapter starts instead
    of its usual initialisation: a training continued from a checkpoint. `extra` goes into every config.json
    written (the final one and the checkpoints'), e.g. the memory plan and the parent checkpoint.
    """
    started = time.perf_counter()
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    work_dir = work_dir or out_dir / ".work"
    phase = on_phase or (lambda name: None)
    main = accelerator.is_main_process
    if on_checkpoint is not None:
        config_overrides = {"publish_every": training_input.checkpoint_interval, **(config_overrides or {})}
    config = train_config_for(training_input, **(config_overrides or {}))
    # fp8 without fp8 hardware, adamw8bit without CUDA: refused now, not after minutes of loading and encoding.
    check_train_config(config, accelerator.device)
    # A holdout_fraction that leaves nothing to train on, likewise (the manifest's ids are the samples' ids).
    split_holdout([row.id for row in read_manifest(dataset_dir)], training_input.holdout_fraction)

    phase("encoding")  # (the job phases of docs/service.md: loading the model counts as encoding)
    # Staged loading, stage 1: only what encoding needs (Gemma, connectors, VAEs); the transformer comes in
    # after Gemma is freed, so the two never share the accelerator (26 + 38 GB for the real model in bf16).
    components = load_model(model, device=accelerator.device, seed=training_input.seed or 0,
                            text_encoder=text_encoder, defer_transformer=True)
    cache_dir = cache_dir_for(work_dir, components)
    with accelerator.main_process_first():
        encoded = encode_dataset(dataset_dir, cache_dir, components, cancel=cancel)
        rows = read_manifest(dataset_dir)
        silence = None
        if any(row.audio is None for row in rows):
            silence = silence_latents(components, cache_dir, rows[0].frames, encoded.frame_rate)
    data = TrainingData.load(encoded, silence)
    # The held-out samples (training/holdout.py: chosen from the sample ids alone) are never given to the
    # training loop; their loss is measured at each published checkpoint and after the last step.
    split = split_holdout([s.id for s in encoded.samples], training_input.holdout_fraction)
    holdout = data.subset(split.measured) if split.measured else None
    data = data.subset(split.train)
    if holdout is not None and main:
        log.info("holding out %d of %d samples (holdout_fraction %g): the held-out loss is measured on %s",
                 len(split.held_out), len(encoded.samples), split.fraction,
                 "them" if len(split.measured) == len(split.held_out) else f"{len(split.measured)} of them")

    validator = None
    # A sharded (FSDP) transformer's forward needs every process, so then every process samples in
    # lockstep; only the main one's clips are kept and published.
    sharded = config.sharding == "fsdp" and accelerator.num_processes > 1
    if holdout is not None and sharded:
        if main:
            log.info("held-out loss not measured: a sharded (FSDP) forward needs every process")
        holdout = None

    def holdout_loss() -> float | None:  # on the main process, the transformer in whatever mode it is in
        return probe_loss(components, holdout) if holdout is not None else None

    if training_input.validation and (main or sharded):
        images = validation_images or [None] * len(training_input.validation)
        clips_dir = out_dir / "validation" if main else work_dir / f"validation-process-{accelerator.process_index}"
        validator = Validator(components, ValidationSettings.from_input(training_input, images), clips_dir)
    # Every text is encoded now (validation prompts included: validation re-encodes nothing), so the text
    # encoder (Gemma, 13 B parameters for real) goes, and the VAEs, vocoder and connectors wait in host
    # memory until validation needs them. Stage 2: the transformer.
    components.text_encoder = None
    gc.collect()
    components.park()
    # int8/fp8: quantized on its way to the device; FSDP: sharded on its way there (by train_lora).
    components.load_transformer(config.base_precision, on_host=sharded)
    if validator is not None:
        validator.check_transformer()  # STG blocks in range: fail now, not at the first validation

    recent_losses: list[float] = []

    def step_hook(info: StepInfo) -> None:
        recent_losses[:] = [*recent_losses[-9:], info.loss]
        if on_step is not None:
            on_step(info)
        if cancel is not None and cancel():
            raise JobCancelled(f"cancelled after step {info.step}")

    # Given to every process when there is validation, though only the main one samples (all of them under
    # FSDP): the loop waits for everyone after a validation round, and a process without the callback would
    # skip that barrier and run ahead into the next step's all-reduce (a deadlock).
    def validate(step: int) -> None:
        phase("validating")
        with components.unparked():
            clips = validator(step)
        if on_validation is not None and main:
            on_validation(step, clips)  # e.g. published while training goes on
        phase("training")

    # Early stopping judges each published checkpoint by its held-out loss, or without held-out samples by its
    # training loss (training/early_stopping.py); what it saw survives a crash in the work dir.
    patience = training_input.early_stopping_patience
    measured = "holdout_loss" if holdout is not None else "train_loss"
    stopping = EarlyStopping.resumed(patience, work_dir / "early_stopping.json") if patience else None
    if stopping is not None and main:
        log.info("early stopping after %d checkpoints without a lower %s", patience, measured.replace("_", " "))

    def publish_checkpoint(step: int, checkpoint: Checkpoint) -> bool:
        """Export and hand on checkpoint `step`; True when early stopping ends the run here."""
        from safetensors.torch import load_file

        folder = work_dir / "published" / f"step_{step:06d}"
        train_loss = sum(recent_losses) / len(recent_losses) if recent_losses else None
        try:
            exported = export_lora(folder, load_file(str(checkpoint.lora_file)), training_input,
                                   base_model=components.base, lora_dtype=lora_dtype, steps=step,
                                   extra={**(extra or {}), "training": {"steps": step, "checkpoint": True}})
        except UserInputError as exc:  # diverged or empty so far: nothing worth publishing at this step
            log.warning("checkpoint of step %d not published: %s", step, exc.message)
            return stopping is not None and stopping.record(step, None)  # never the best
        clips = [clip for clip in validator.clips if clip.step == step] if validator is not None else []
        video = write_combined([(clip.path, clip.caption) for clip in clips], folder / COMBINED_VIDEO_NAME) \
            if clips else None
        held_out = holdout_loss()
        on_checkpoint(PublishedCheckpoint(step, exported, video, train_loss, held_out))
        return stopping is not None and stopping.record(step, held_out if measured == "holdout_loss" else train_loss)

    initial = None
    if initial_lora is not None:
        from ltx2trainer.model.lora import read_lora_file

        initial = read_lora_file(initial_lora)
    phase("training")
    trained = train_lora(
        components, data, config, work_dir / "checkpoints",
        sample_ids=[encoded.samples[i].id for i in split.train],
        accelerator=accelerator, on_step=step_hook, on_validate=validate if training_input.validation else None,
        on_checkpoint=publish_checkpoint if on_checkpoint is not None and main else None, initial_lora=initial,
    )

    result = TrainingRunResult(
        exported=None, video=None, losses=trained.losses, steps_done=trained.steps_done,
        resumed_from=trained.resumed_from, samples_encoded=encoded.samples_encoded,
        samples_reused=encoded.samples_reused, holdout_samples=len(split.held_out),
    )
    if trained.stopped_early and stopping is not None and stopping.best is not None:
        best_step, best_value = stopping.best
        result.early_stopping = EarlyStoppingReport(
            stopped_at_step=trained.steps_done, best_step=best_step, patience=patience, measured=measured,
            best_loss=finite_loss(best_value))
    # Every process checks (DDP keeps the adapters identical), so a diverged run fails everywhere at once
    # instead of leaving the other processes waiting for the main one; export checks the cast tensors again.
    try:
        check_lora_state(trained.lora_state, learning_rate=training_input.learning_rate, steps=trained.steps_done)
    except UserInputError as exc:
        if exc.code != "training_diverged" or not _best_survives(stopping, accelerator):
            raise
        # Early stopping was asked for and judged a finite checkpoint best: that one is the output, whether
        # or not patience ran out before the weights broke (the last step has nothing to export).
        best_step, best_value = stopping.best if main else (0, 0.0)
        log.warning("the last step's adapter diverged; the output is the best checkpoint, step %d", best_step)
        result.diverged = exc.message
        result.early_stopping = EarlyStoppingReport(
            stopped_at_step=trained.steps_done, best_step=best_step, patience=patience, measured=measured,
            best_loss=finite_loss(best_value), last_step_diverged=True)
        accelerator.wait_for_everyone()
        result.seconds = time.perf_counter() - started
        return result
    if main:
        result.holdout_loss = holdout_loss()
        phase("publishing")
        base = components.base  # set by load_model from the same identity the job started with
        result.exported = export_lora(
            out_dir, trained.lora_state, training_input, base_model=base, lora_dtype=lora_dtype,
            steps=trained.steps_done,
            extra={**(extra or {}),
                   "training": training_summary(trained.losses, trained.steps_done, accelerator.num_processes,
                                                len(encoded.samples), data.has_audio, config,
                                                holdout_loss=result.holdout_loss,
                                                holdout_samples=len(split.held_out))},
        )
        if validator is not None:
            result.validation_clips = [clip.path for clip in validator.clips]
            result.video = validator.write_combined(out_dir / COMBINED_VIDEO_NAME)
    accelerator.wait_for_everyone()
    result.seconds = time.perf_counter() - started
    return result


def _best_survives(stopping: EarlyStopping | None, accelerator: Accelerator) -> bool:
    """Whether early stopping holds a finite best checkpoint to deliver when the last step diverged. Only the
    main process judged the checkpoints, so its answer is summed across processes: all of them agree."""
    best = stopping.best if stopping is not None and accelerator.is_main_process else None
    found = best is not None and math.isfinite(best[1])
    if accelerator.num_processes == 1:
        return found
    votes = accelerator.reduce(torch.tensor([float(found)], device=accelerator.device), reduction="sum")
    return bool(votes.item() > 0)
