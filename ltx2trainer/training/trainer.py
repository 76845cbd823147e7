"""The LoRA training loop: flow matching on cached latents, AdamW, checkpoints, resume, a per-step hook.

Reads top to bottom: set up (base precision, LoRA, optimizer, schedule, Accelerate), maybe resume, then per
step draw the batch and noise from a generator seeded by (seed, step, rank), predict velocities over its
micro-batches (gradient accumulation), take the masked MSE, step the optimizer once, and report. Everything
random is a function of the step, so 5 steps + resume + 5 steps equal 10 straight steps.

`on_step(StepInfo)` is where progress reporting, billing and cancellation hang; if it raises, the loop
saves a checkpoint of the step just completed and re-raises, so a cancelled job still has its last
weights. `on_validate(step)` is called every `validation_every` steps and after the last one.
`on_checkpoint(step, checkpoint)` is called every `publish_every` steps before the last (after that step's
validation), with the resumable checkpoint saved at that step. The user-facing checkpoints are a subset of
the resumable ones, so the loop checkpoints at the union of `checkpoint_every` and `publish_every`. A run
resumed from such a step calls it again for that step first (the previous attempt may have died before
publishing). If it returns True the run ends at that step (early stopping: `TrainResult.stopped_early`; every
process stops at the same step).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ltx2trainer.errors import UserInputError
from ltx2trainer.hashing import fingerprint
from ltx2trainer.model.components import ModelComponents
from ltx2trainer.model.lora import LORA_TARGET_MODULES, attach_lora, load_lora_state, lora_state_dict
from ltx2trainer.model.quantize import (
    BasePrecision,
    check_base_precision,
    quantize_base,
    quantized_parameter_names,
    weight_bytes,
)
from ltx2trainer.schemas import TrainingInput, input_default
from ltx2trainer.training.checkpoint import Checkpoint, latest_resumable, load_checkpoint, save_checkpoint
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.flow import AudioSigmaMode, FlowStep, flow_matching_loss, prepare_flow_step
from ltx2trainer.training.optimizer import OptimizerName, check_optimizer, make_optimizer, state_on_host
from ltx2trainer.training.sharding import (
    SHARDINGS,
    Sharding,
    full_optimizer_state,
    load_full_optimizer_state,
    shard_transformer,
)
from ltx2trainer.training.speed import compile_blocks, to_device
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Learning rate decays linearly to `final_lr_fraction` of itself over the run.

    Each optimizer step sees `batch_size * gradient_accumulation_steps` samples per process, in
    `gradient_accumulation_steps` forward/backward passes of `batch_size`; the schedule, clipping and
    checkpoints count optimizer steps. `base_precision` stores the frozen transformer's Linear weights as
    loaded ("bf16": whatever dtype the model was loaded in) or weight-only "int8" / "fp8"
    (`model/quantize.py`); the LoRA trains in fp32 either way.

    A request's configuration comes from `from_input`; the defaults of the fields a request sets are the
    schema's (read from it, not restated), for library use.
    """

    number_of_steps: int
    learning_rate: float = input_default("learning_rate")
    rank: int = input_default("rank")
    first_frame_conditioning_p: float = input_default("first_frame_conditioning_p")
    seed: int = 0  # a request without a seed trains with 0
    batch_size: int = 1
    max_grad_norm: float = 1.0
    final_lr_fraction: float = 0.1
    audio_sigma: AudioSigmaMode = "independent"  # "shared": audio uses the video's sigma (fal-era recipe)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # steps; 0 = only when stopped early
    publish_every: int = 0  # steps; also checkpointed, and handed to `on_checkpoint` (0 = never)
    keep_checkpoints: int = 2
    validation_every: int = 0  # steps; 0 = only after the last step
    gradient_accumulation_steps: int = 1
    base_precision: BasePrecision = "bf16"
    optimizer: OptimizerName = "adamw"
    sharding: Sharding = "ddp"  # with several processes: "fsdp" shards the transformer (training/sharding.py)
    compile_blocks: bool = False  # regional torch.compile of the transformer blocks (training/speed.py)
    offload_optimizer_for_validation: bool = True  # on a GPU: optimizer state in host memory while sampling

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("batch_size and gradient_accumulation_steps must be at least 1")

    @classmethod
    def from_input(cls, training_input: TrainingInput, **overrides: Any) -> TrainConfig:
        """The request's training fields, under the same names, plus `overrides`: the fields a request has no
        say in (intervals, base precision, optimizer, ...), or a caller's own (a test's shorter run)."""
        request = {"number_of_steps": training_input.number_of_steps, "learning_rate": training_input.learning_rate,
                   "rank": training_input.rank, "seed": training_input.seed or 0,
                   "first_frame_conditioning_p": training_input.first_frame_conditioning_p}
        return cls(**{**request, **overrides})

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step and process."""
        return self.batch_size * self.gradient_accumulation_steps

    def fingerprint(self, model_name: str, sample_ids: list[str]) -> str:
        """What a checkpoint must match to be resumed (not the intervals: changing those is harmless).

        The settings added later are left out at their defaults, so that a checkpoint written before they
        existed still matches a run configured the same way.
        """
        settings = {k: v for k, v in asdict(self).items()
                    if k not in _NOT_FINGERPRINTED
                    and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
        return fingerprint([settings, model_name, sorted(sample_ids), LORA_TARGET_MODULES])


# Settings that change when or how fast things run, never what is computed: a run may resume with others.
_NOT_FINGERPRINTED = ("checkpoint_every", "publish_every", "keep_checkpoints", "validation_every", "compile_blocks",
                      "offload_optimizer_for_validation")
_LATER_DEFAULTS = {"gradient_accumulation_steps": 1, "base_precision": "bf16", "optimizer": "adamw",
                   "sharding": "ddp"}


def check_train_config(config: TrainConfig, device: torch.device | str) -> None:
    """Refuse, before any model is loaded, settings this device cannot train with (fp8 without fp8
    hardware, adamw8bit without CUDA or bitsandbytes): `UserInputError` naming the cause and the alternative."""
    check_base_precision(config.base_precision, device)
    check_optimizer(config.optimizer, device)
    if config.sharding not in SHARDINGS:
        raise UserInputError(f"sharding must be one of {', '.join(SHARDINGS)}, not {config.sharding!r}")
    if config.sharding == "fsdp" and config.base_precision != "bf16":
        raise UserInputError(
            f"sharding fsdp with a {config.base_precision} base is not supported: torchao's quantized weights "
            "cannot be sharded; use base_precision bf16 with fsdp, or ddp with an int8/fp8 base",
            code="unsupported_hardware")


@dataclass(frozen=True)
class StepInfo:
    """Reported after every optimizer step. Loss is averaged over processes; times in seconds."""

    step: int
    total: int
    loss: float
    video_loss: float
    audio_loss: float
    lr: float
    elapsed_s: float
    # A checkpoint of this step is saved right after the hook returns. A run that resumes from it never redoes
    # this step, so whatever the hook must have recorded of it (the usage ledger) it records now.
    checkpoint_after: bool = False
    # The LoRA gradients' total L2 norm before clipping (also measured when max_grad_norm is 0: no clipping),
    # and the mean video sigma of the step's batch (over every process). None from callers that do not know.
    grad_norm: float | None = None
    sigma: float | None = None


@dataclass
class TrainResult:
    lora_state: dict[str, torch.Tensor]
    steps_done: int
    resumed_from: int | None
    losses: list[float] = field(default_factory=list)
    last_checkpoint: Checkpoint | None = None
    stopped_early: bool = False  # `on_checkpoint` asked to stop before number_of_steps


def train_lora(
    components: ModelComponents,
    data: TrainingData,
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    sample_ids: list[str],
    accelerator: Accelerator | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_validate: Callable[[int], None] | None = None,
    on_checkpoint: Callable[[int, Checkpoint], None] | None = None,
    resume: bool = True,
    initial_lora: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train a LoRA on `components.transformer` (it is attached here) and return its final weights.

    `initial_lora` (module-path keys, `model/lora.read_lora_file`) replaces the adapter's initial weights: a
    training continued from another's checkpoint. This run's own checkpoints, when it resumes, come first."""
    accelerator = accelerator or Accelerator(cpu=components.device.type == "cpu")
    check_train_config(config, accelerator.device)
    transformer = components.transformer
    # Before the LoRA: quantizing afterwards would quantize the adapter's layers too (model/quantize.py).
    quantize_base(transformer, config.base_precision)
    stored = config.base_precision if config.base_precision != "bf16" else f"as loaded, {transformer.proj_in.weight.dtype}"
    log.info("base transformer: %s, %.3g GB of weights", stored, weight_bytes(transformer) / 1e9)
    with torch.random.fork_rng(devices=[]):  # LoRA A matrices are random: draw them from the run's seed
        torch.manual_seed(config.seed)
        parameters = attach_lora(transformer, config.rank)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if config.compile_blocks:  # per block, with its LoRA, before sharding (as torchtitan orders them)
        compile_blocks(transformer)
    transformer.train()

    run_fingerprint = config.fingerprint(components.name, sample_ids)
    found = latest_resumable(checkpoint_dir, run_fingerprint) if resume else None
    state: dict = {}
    if found is not None:  # the LoRA weights go in before sharding, while they are whole tensors
        lora_state, state = load_checkpoint(found)
        load_lora_state(transformer, {k: v.to(components.device) for k, v in lora_state.items()})
    elif initial_lora is not None:  # trained in float32 like any LoRA here, whatever dtype it was shipped in
        load_lora_state(transformer, {k: v.to(components.device, torch.float32) for k, v in initial_lora.items()})
    fsdp = config.sharding == "fsdp" and accelerator.num_processes > 1
    if fsdp:
        shard_transformer(transformer)
        parameters = [p for p in transformer.parameters() if p.requires_grad]  # now the local shards

    optimizer = make_optimizer(config.optimizer, parameters, lr=config.learning_rate)
    decay = (1.0 - config.final_lr_fraction) / max(config.number_of_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1.0 - decay * done)

    start, resumed_from = 0, None
    if found is not None:
        if fsdp:
            load_full_optimizer_state(transformer, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        start = resumed_from = state["step"]
        log.info("resuming from step %d (%s)", start, found.path)

    # Only the model goes through Accelerate (DDP wrapping, device placement). The optimizer stays plain:
    # there is no fp16 loss scaling to manage, accumulation is a loop over micro-batches below (Accelerate's
    # `no_sync` skips DDP's all-reduce on all but the last), and Accelerate's optimizer wrapper costs ~0.15 ms
    # a step (a tiny model's steps are ~30 ms).
    if not fsdp and (quantized := quantized_parameter_names(transformer)):
        # DDP broadcasts every parameter from the first process when it wraps the model and cannot flatten
        # torchao's tensors. The quantized base is frozen and the same on every process (same weights, same
        # deterministic quantization), so DDP is told to leave it alone.
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(transformer, quantized)
    # FSDP: the sharded transformer is used as it is (Accelerate would wrap it in DDP on CPUs).
    model = transformer if fsdp else accelerator.prepare(transformer)
    sampler = ShiftedLogitNormalSampler()
    dtype = transformer.proj_in.weight.dtype  # the base weights' dtype (LoRA weights are float32)
    result = TrainResult(lora_state={}, steps_done=start, resumed_from=resumed_from)

    def checkpoint(step: int) -> Checkpoint | None:
        # Under FSDP the LoRA and the optimizer state are gathered from every process (collective).
        lora = lora_state_dict(model) if fsdp or accelerator.is_main_process else None
        optimizer_state = full_optimizer_state(model, optimizer) if fsdp else None
        if not accelerator.is_main_process:
            return None
        state = {"optimizer": optimizer_state if fsdp else optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "torch_rng": torch.get_rng_state(), "fingerprint": run_fingerprint}
        result.last_checkpoint = save_checkpoint(checkpoint_dir, step, lora, state, keep=config.keep_checkpoints)
        return result.last_checkpoint

    accumulation = config.gradient_accumulation_steps

    def inputs(step: int) -> FlowStep:
        # All randomness of a step (batch, sigmas, noise, conditioning) comes from this generator, drawn for
        # the whole effective batch at once: accumulating 2 x 1 sees exactly what one batch of 2 would.
        generator = torch.Generator().manual_seed(
            (config.seed * 1_000_003 + step) * 1_009 + accelerator.process_index
        )
        indices = data.indices(step, config.effective_batch_size, config.seed, accelerator.process_index,
                               accelerator.num_processes)
        return prepare_flow_step(
            data.batch(indices), sampler, generator, first_frame_p=config.first_frame_conditioning_p,
            audio_sigma_mode=config.audio_sigma, device=accelerator.device, dtype=dtype,
        )

    def publishes(step: int) -> bool:
        return bool(config.publish_every) and step % config.publish_every == 0 and step < config.number_of_steps

    if found is not None and on_checkpoint is not None and publishes(start) and accelerator.is_main_process:
        on_checkpoint(start, found)  # idempotent on the caller's side: it may have been published already

    started = time.perf_counter()
    upcoming = inputs(start + 1) if start < config.number_of_steps else None
    for step in range(start + 1, config.number_of_steps + 1):
        flow = upcoming
        step_losses = []
        for i, micro in enumerate(flow.split(accumulation)):
            # DDP all-reduces (FSDP reduce-scatters) gradients in backward: only the last micro-batch's needs to.
            last = i == accumulation - 1
            if fsdp:
                model.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync:
                with accelerator.autocast():
                    video_pred, audio_pred = model(**micro.model_kwargs)
                loss, video_loss, audio_loss = flow_matching_loss(video_pred, audio_pred, micro)
                # Gradients add up over micro-batches: each counts 1/accumulation, as in the mean of one batch.
                accelerator.backward(loss / accumulation)
            step_losses.append(torch.stack([loss.detach(), video_loss, audio_loss]))
        grad_norm = _grad_norm(parameters, config.max_grad_norm)  # a device tensor: nothing is read yet
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        mean_losses = torch.stack(step_losses).mean(dim=0)
        # The sigmas were drawn on the host: their mean rides to the device with the losses, without waiting.
        sigma = to_device(flow.video_sigma.float().mean().reshape(1), mean_losses.device)
        losses = accelerator.reduce(torch.cat([mean_losses, grad_norm.to(mean_losses.device).reshape(1), sigma]),
                                    reduction="mean")
        # Up to here nothing waited for the GPU. The next step's inputs are made on the host while it works
        # through this one; reading the losses (with the grad norm and sigma) is the step's one synchronisation.
        upcoming = inputs(step + 1) if step < config.number_of_steps else None
        loss_value, video_value, audio_value, grad_norm_value, sigma_value = losses.tolist()
        saves_checkpoint = (bool(config.checkpoint_every) and step % config.checkpoint_every == 0
                            and step < config.number_of_steps) or publishes(step)
        info = StepInfo(step, config.number_of_steps, loss_value, video_value, audio_value,
                        schedule.get_last_lr()[0], time.perf_counter() - started, checkpoint_after=saves_checkpoint,
                        grad_norm=grad_norm_value, sigma=sigma_value)
        result.losses.append(info.loss)
        result.steps_done = step
        if on_step is not None:
            try:
                on_step(info)
            except BaseException:
                checkpoint(step)  # stopped from outside: keep what was learned so far
                raise
        saved = checkpoint(step) if saves_checkpoint else None
        if on_validate is not None and (
            step == config.number_of_steps or (config.validation_every and step % config.validation_every == 0)
        ):
            model.eval()
            with state_on_host(optimizer, enabled=config.offload_optimizer_for_validation):
                if accelerator.is_main_process or fsdp:  # a sharded forward needs every process
                    on_validate(step)
                accelerator.wait_for_everyone()
            model.train()
        if publishes(step):
            # main process only (`checkpoint` returns None elsewhere); True asks the run to stop here
            stop = bool(on_checkpoint(step, saved)) if on_checkpoint is not None and saved is not None else False
            if accelerator.num_processes > 1:  # every process stops at the same step, or the next all-reduce hangs
                votes = accelerator.reduce(torch.tensor([float(stop)], device=accelerator.device), reduction="sum")
                stop = votes.item() > 0
            if stop:
                result.stopped_early = True
                log.info("stopping early after step %d", step)
                break

    result.lora_state = lora_state_dict(model)
    model.eval()
    return result


def _grad_norm(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The gradients' total L2 norm (float32, on the device), clipping them to `max_norm` first if it is set;
    with 0 the norm is only measured and the gradients are left as they are. Never waits for the device."""
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor of the shards' partial norms, combined over processes
        norm = norm.full_tensor()
    return norm.float()
