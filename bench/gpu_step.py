"""One LoRA training step of the real-size LTX-2.0 or LTX-2.3 transformer: s/step, peak memory against the
planner's prediction, FLOPs and MFU, the attention kernel, host-device syncs.

    .venv/bin/python bench/gpu_step.py --version 2.3               # GPU: 48 blocks, 89 frames 768x768, bf16
    .venv/bin/python bench/gpu_step.py --version 2.3 --base-precision int8 --optimizer adamw8bit
    .venv/bin/python bench/gpu_step.py --version 2.3 --meta        # anywhere: full-size build on the meta
                                                                   # device, parameter counts and FLOPs
    .venv/bin/python bench/gpu_step.py --device cpu --layers 3 --narrow 8 --frames 9 --height 128 \
        --width 128 --text-tokens 64 --steps 2 --warmup 1          # CPU: reduced correctness check only

The transformer is `LTX2VideoTransformer3DModel` with the released model's configuration as the package
translates it (`tests.memory_measure.real_transformer_config(version, layers)`: rope, perturbed attention,
and for 2.3 gated attention, cross-attention modulation, no caption projection) and random weights: nothing
is downloaded. It is built on the meta device, then `to_empty` on the target and filled (`fill_random`).
`--base-precision int8|fp8` quantizes the frozen base with `model.quantize.quantize_base` before the LoRA is
attached; on a GPU the bf16 model is built in host memory and `quantize_base(..., device="cuda")` moves it
layer by layer, so the GPU never holds the bf16 weights of quantized layers (the engine's loading): the GPU
peak during that is the "load peak". A rank-`--rank` LoRA is attached with `attach_lora` (fp32), gradient
checkpointing is on, `--compile` compiles each block (`training.speed.compile_blocks`), the optimizer is
`training.optimizer.make_optimizer(--optimizer)`. Inputs are those of one real sample: `prepare_flow_step` on
a synthetic `Batch` (video latents [128, F', H', W'], first frame, 128-wide audio tokens at 25/s, text tokens
as wide as the connectors give them: 3840 for LTX-2.0, which projects captions inside the transformer, the
video/audio widths for 2.3). A timed step is the engine's: forward, `flow_matching_loss`, backward,
clip_grad_norm_, optimizer step, zero_grad, `loss.detach()` kept (floats only after timing), between two
`torch.cuda.synchronize()`s. The FLOP rules are in bench/gpu_flops.py.

Memory, predicted (`ltx2trainer.planning.estimate(...)["train"]`) against measured, like with like:
  * CUDA: `PhaseMemory.tensors` (weights, LoRA, gradients, optimizer state, inputs, activations: what PyTorch
    allocates) against `torch.cuda.max_memory_allocated()` over warm-up and timed steps (peak stats reset
    after the build, so it includes the weights). `PhaseMemory.peak` adds the CUDA context and allocator
    slack; it is shown beside max_memory_reserved + the memory outside PyTorch's allocator (device used -
    reserved, at the end).
  * CPU: `.tensors` with `gpu=False` against the live tensor storage of one step (`tests.memory_measure.
    LiveBytes`, weights, optimizer state and inputs tracked), precision "fp32" for the fp32 base, "int8" for
    the int8 base (which computes in bf16).
Extra untimed steps after the timed ones: one under `torch.cuda.set_sync_debug_mode("warn")` (host-device
syncs), one under torch.profiler (which SDPA implementation ran), one under FlopCounterMode (unless
`--no-flop-check`; attention forced to the math kernel off CUDA).

`--narrow N` divides every width (head dims, cross-attention and caption widths) by N, heads and structure
unchanged: the planner is given the same narrowed dims. Only for a quick CPU run: at real widths a 2-block
step takes ~15 s in fp32 on a 2-core CPU and ~2 min with int8 (it computes in bf16, which such a CPU has no
fast matmul for).

Peak FLOP/s for MFU: `--peak-tflops`, else by GPU name (dense bf16: H100/H200 SXM 989, H100 PCIe 756, A100
312, L40S 362), else 989; none on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import LTX2VideoTransformer3DModel

from bench import gpu_flops as gf
from ltx2trainer.model.components import REAL_MAX_SEQUENCE_LENGTH
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.training.flow import Batch, flow_matching_loss, prepare_flow_step
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler

PUBLISHED_PARAMS = {"2.0": "; published LTX-2.0: 18.88 B"}  # Lightricks names LTX-2.0 "19b"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GIB = 2**30


def model_config(version: str, layers: int, narrow: int = 1) -> dict:
    """The released `version`'s transformer config with `layers` blocks, every width divided by `narrow`."""
    from tests.memory_measure import real_transformer_config

    config = real_transformer_config(version, layers)
    if narrow > 1:
        for key in ("attention_head_dim", "audio_attention_head_dim", "cross_attention_dim",
                    "audio_cross_attention_dim", "caption_channels"):
            config[key] //= narrow
    return config


def planner_dims(version: str, layers: int, text_tokens: int, narrow: int = 1):
    """The planner's ModelDims for the same model (fewer blocks, the prompt length used, narrowed widths)."""
    from ltx2trainer.planning.dims import LTX_2_19B, LTX_23
    from ltx2trainer.planning.sources import with_layers

    dims = with_layers(LTX_2_19B if version == "2.0" else LTX_23, layers)
    t = dims.transformer
    if narrow > 1:
        t = replace(t, video_head_dim=t.video_head_dim // narrow, audio_head_dim=t.audio_head_dim // narrow,
                    cross_attention_dim=t.cross_attention_dim // narrow,
                    audio_cross_attention_dim=t.audio_cross_attention_dim // narrow,
                    caption_channels=t.caption_channels // narrow)
    return replace(dims, transformer=t, text_tokens=text_tokens)


# --------------------------------------------------------------------------------------------- inputs


def synthetic_batch(config: dict, shapes: gf.Shapes, batch: int, generator: torch.Generator) -> Batch:
    """A Batch of the real shapes (float32, CPU, like TrainingData.batch gives), filled with noise. Context
    widths as in tests.memory_measure.synthetic_batch: caption-wide for 2.0, the stream widths for 2.3."""
    c, ca = config["in_channels"], config["audio_in_channels"]
    if config.get("use_prompt_embeddings", True):
        ctx_v = ctx_a = config["caption_channels"]
    else:
        ctx_v = config["num_attention_heads"] * config["attention_head_dim"]
        ctx_a = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    f, h, w = shapes.latent_frames, shapes.latent_height, shapes.latent_width

    def randn(*size):
        return torch.randn(*size, generator=generator)

    return Batch(
        video=randn(batch, c, f, h, w), first_frame=randn(batch, c, 1, h, w),
        audio=randn(batch, shapes.audio_tokens, ca), audio_in_loss=True,
        video_context=randn(batch, shapes.text_tokens, ctx_v), audio_context=randn(batch, shapes.text_tokens, ctx_a),
        mask=torch.ones(batch, shapes.text_tokens, dtype=torch.long), fps=shapes.fps,
    )


# ---------------------------------------------------------------------------------------------- model


def build_transformer(config: dict, device: torch.device | str, dtype: torch.dtype, fill: bool = True
                      ) -> LTX2VideoTransformer3DModel:
    """Built on the meta device in `dtype` (instant), then `to_empty(device)` and `fill_random` (no fp32 copy,
    no slow per-module init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LTX2VideoTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
        if fill:
            fill_random(model)
    return model


@torch.no_grad()
def fill_random(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights ~ N(0, 1/fan_in) (variance-preserving: losses stay finite through 48 blocks), biases 0, norm
    weights 1, modulation tables N(0, 0.02). On CUDA `normal_` per tensor. On the host `normal_` is slow
    (~0.1 GB/s on this 2-core CPU: 10.7 s for 2 blocks of LTX-2.3, ~3 min for the 19 B model), so a block of
    16 M N(0, std) values per (std, dtype) is made once and tiled into each tensor from a different offset:
    1.9 s for 2 blocks (1.2 B values, first-touch page faults included), 2.6 s for 4, so ~17 s for the
    48-block model here. Repeated values do not change what a step costs."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    blocks: dict[tuple[float, torch.dtype], torch.Tensor] = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.dim() < 2:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        std = 0.02 if "scale_shift_table" in name else 1 / math.sqrt(p.shape[-1])
        if p.device.type == "cuda":
            p.normal_(0.0, std)
            continue
        if (std, p.dtype) not in blocks:
            blocks[std, p.dtype] = (torch.randn(1 << 24, generator=generator) * std).to(p.dtype)
        block = blocks[std, p.dtype]
        flat, done, offset = p.view(-1), 0, (i * 104_729) % block.numel()
        while done < flat.numel():
            n = min(flat.numel() - done, block.numel() - offset)
            flat[done:done + n].copy_(block[offset:offset + n])
            done, offset = done + n, 0


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def predicted_train(args, cuda: bool):
    """The planner's train phase for this run (see the module docstring for what is compared with what)."""
    from ltx2trainer.planning import MemoryRequest, MemorySettings, estimate

    request = MemoryRequest(frames=args.frames, width=args.width, height=args.height, frame_rate=args.fps,
                            rank=args.rank, validation=False)
    precision = args.base_precision if args.base_precision != "bf16" else args.dtype
    settings = MemorySettings(base_precision=precision, optimizer=args.optimizer, gradient_checkpointing=True,
                              batch_size=args.batch_size, gpu=cuda)
    dims = planner_dims(args.version, args.layers, args.text_tokens, args.narrow)
    return estimate(request, dims, settings)["train"], precision


# ----------------------------------------------------------------------------------------------- modes


def run_meta(args, config: dict, shapes: gf.Shapes) -> dict:
    """Full-size build on the meta device: parameter counts, inventory check, analytic and counted FLOPs."""
    started = time.perf_counter()
    model = build_transformer(config, "meta", DTYPES[args.dtype])
    params = sum(p.numel() for p in model.parameters())
    block_params = sum(p.numel() for p in model.transformer_blocks[0].parameters()) if args.layers else 0
    lora = attach_lora(model, args.rank)
    lora_params = sum(p.numel() for p in lora)
    if lora_params != gf.expected_lora_params(config, args.rank):
        raise AssertionError(f"LoRA has {lora_params} parameters, inventory says "
                             f"{gf.expected_lora_params(config, args.rank)}")
    linear_weights = gf.check_inventory(model, config)
    flops = gf.step_flops(config, shapes.video_tokens, shapes.audio_tokens, shapes.text_tokens, args.rank,
                       args.batch_size, checkpointing=True)
    model.enable_gradient_checkpointing()
    model.train()
    batch = synthetic_batch(config, shapes, args.batch_size, torch.Generator().manual_seed(0))
    flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                             first_frame_p=0.5, device="meta", dtype=DTYPES[args.dtype])

    def step():
        video, audio = model(**flow.model_kwargs)
        loss, _, _ = flow_matching_loss(video, audio, flow)
        loss.backward()

    with gf.math_attention("meta"):
        counted, by_op = gf.count_flops(step)
    planner = planner_dims(args.version, args.layers, args.text_tokens, args.narrow).transformer
    predicted, _ = predicted_train(args, cuda=True)
    result = {
        "mode": "meta", "params": params, "params_per_block": block_params, "lora_params": lora_params,
        "planner_params": planner.params, "linear_weights": linear_weights, "flops": flops,
        "counted_flops": counted, "counted_by_op": by_op,
        "flop_check_percent": gf.difference_percent(counted, flops["hardware"]),
        "predicted_peak_gib": predicted.peak / GIB, "predicted_tensors_gib": predicted.tensors / GIB,
        "build_and_count_s": time.perf_counter() - started,
    }
    latent = [config["in_channels"], shapes.latent_frames, shapes.latent_height, shapes.latent_width]
    published = PUBLISHED_PARAMS.get(args.version, "") if (args.layers, args.narrow) == (48, 1) else ""
    lines = [
        (f"LTX-{args.version}, FULL-SIZE CONFIG ON THE META DEVICE (no weights, no timing): {args.layers} blocks, "
         f"{args.frames} frames {args.height}x{args.width}, rank {args.rank}, batch {args.batch_size}"),
        (f"transformer parameters: {params / 1e9:.3f} B ({params:,}{published}; "
         f"planner's count {planner.params:,}); per block {block_params / 1e6:.2f} M"),
        f"LoRA rank {args.rank} parameters: {lora_params / 1e6:.1f} M ({lora_params:,}) = inventory",
        f"FLOP inventory matches the model's {linear_weights / 1e9:.3f} B nn.Linear weights",
        (f"tokens per sample: video {shapes.video_tokens} ({latent}), audio {shapes.audio_tokens}, "
         f"text {shapes.text_tokens}"),
        *gf.flops_lines(flops),
        gf.check_line("FlopCounterMode on meta (fwd + bwd + recompute, math attention)", counted, flops["hardware"]),
        (f"planner, train phase ({args.base_precision}, {args.optimizer}, GPU): {predicted.peak / GIB:.2f} GiB "
         f"peak, {predicted.tensors / GIB:.2f} GiB of tensors"),
    ]
    if args.peak_tflops:
        floor = flops["model"] / (args.peak_tflops * gf.TFLOP)
        lines.append(f"at {args.peak_tflops:g} TFLOP/s peak, 100 % MFU would be {floor:.2f} s/step "
                     f"({flops['hardware'] / (args.peak_tflops * gf.TFLOP):.2f} s with the recompute)")
    result["summary"] = lines
    return result


def build_for_run(args, config: dict, device: torch.device, dtype: torch.dtype):
    """The transformer on `device`, quantized if asked; (model, load peak bytes or None, load seconds)."""
    from ltx2trainer.model.quantize import check_base_precision, quantize_base

    cuda = device.type == "cuda"
    check_base_precision(args.base_precision, device)  # fp8 off a capable GPU: refused before building
    started = time.perf_counter()
    if args.base_precision == "bf16":
        model = build_transformer(config, device, dtype)
        if cuda:
            torch.cuda.synchronize()
        return model, (torch.cuda.max_memory_allocated() if cuda else None), time.perf_counter() - started
    model = build_transformer(config, "cpu", dtype)  # host memory, as the engine loads
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    quantize_base(model, args.base_precision, device=device if cuda else None)
    stray = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type != device.type]
    if stray:  # quantize_ moves what it visits; anything left behind is moved now (reported)
        print(f"  {len(stray)} tensors left on the host by quantize_base (e.g. {stray[0]}): moving them", flush=True)
        model.to(device)
    if cuda:
        torch.cuda.synchronize()
    return model, (torch.cuda.max_memory_allocated() if cuda else None), time.perf_counter() - started


def run_timed(args, config: dict, shapes: gf.Shapes) -> dict:
    """Build, attach LoRA, time `--steps` training steps after `--warmup`, then the untimed probe steps."""
    from ltx2trainer.training.optimizer import make_optimizer

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    started = time.perf_counter()
    model, load_peak, load_s = build_for_run(args, config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    parameters = attach_lora(model, args.rank)
    gf.check_inventory(model, config)
    compiled = 0
    if args.compile:
        from ltx2trainer.training.speed import compile_blocks

        compiled = compile_blocks(model)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = make_optimizer(args.optimizer, parameters, lr=2e-4)
    batch = synthetic_batch(config, shapes, args.batch_size, torch.Generator().manual_seed(0))
    flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                             first_frame_p=0.5, device=device, dtype=dtype)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    weights_bytes = torch.cuda.memory_allocated() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses: list[torch.Tensor] = []

    def step() -> None:  # the engine's step; the loss stays on the device
        with torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast else contextlib.nullcontext():
            video, audio = model(**flow.model_kwargs)
        loss, _, _ = flow_matching_loss(video, audio, flow)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    all_times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        all_times.append(time.perf_counter() - t0)
        print(f"  step {i + 1}/{args.warmup + args.steps}{' (warm-up)' if i < args.warmup else ''}: "
              f"{all_times[-1]:.3f} s", flush=True)
    times = all_times[args.warmup:]
    probe_s, mark = {}, time.perf_counter()
    memory, syncs, sync_messages = measure_memory(args, cuda, step, model, optimizer, flow)
    probe_s["memory_or_syncs"], mark = time.perf_counter() - mark, time.perf_counter()
    kernels = gf.attention_kernels(step, cuda)
    probe_s["profile"], mark = time.perf_counter() - mark, time.perf_counter()
    counted = by_op = None
    if not args.no_flop_check:
        with gf.math_attention(device.type):
            counted, by_op = gf.count_flops(step)
        probe_s["flop_count"] = time.perf_counter() - mark
    loss_values = [float(v) for v in losses]  # the only host reads of the losses, after timing

    flops = gf.step_flops(config, shapes.video_tokens, shapes.audio_tokens, shapes.text_tokens, args.rank,
                          args.batch_size, checkpointing=True)
    median_s = statistics.median(times)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    peak = args.peak_tflops or (gf.peak_tflops_for(name) if cuda else None)
    achieved, achieved_hw = flops["model"] / median_s / gf.TFLOP, flops["hardware"] / median_s / gf.TFLOP
    result = {
        "mode": "timed", "device": name, "cuda": cuda, "params": params,
        "lora_params": sum(p.numel() for p in parameters), "build_s": build_s, "load_s": load_s,
        "compiled_blocks": compiled, "first_step_s": all_times[0], "step_s": times, "median_s": median_s,
        "losses": loss_values, "losses_finite": all(math.isfinite(v) for v in loss_values),
        "weights_bytes": weights_bytes, "load_peak_bytes": load_peak, "memory": memory, "flops": flops,
        "counted_flops": counted, "counted_by_op": by_op,
        "flop_check_percent": gf.difference_percent(counted, flops["hardware"]) if counted else None,
        "achieved_tflops": achieved, "achieved_tflops_incl_recompute": achieved_hw, "peak_tflops": peak,
        "mfu": achieved / peak if peak else None, "hfu": achieved_hw / peak if peak else None,
        "attention_kernels": kernels, "attention_summary": gf.kernel_summary(kernels), "probe_s": probe_s,
        "syncs": syncs, "sync_messages": sync_messages[:10], "peak_rss_gib": peak_rss_gib(),
        "reduced": args.layers < 48 or args.narrow > 1 or (args.frames, args.height, args.width) != (89, 768, 768),
    }
    result["summary"] = timed_summary(args, shapes, result)
    return result


def measure_memory(args, cuda: bool, step, model, optimizer, flow) -> tuple[dict, int | None, list[str]]:
    """Measured peak against the planner's (see the module docstring); on CUDA also one step under the sync
    debug mode: (memory, host-device syncs, their messages)."""
    predicted, planner_precision = predicted_train(args, cuda)
    memory = {"predicted_tensors": predicted.tensors, "predicted_peak": predicted.peak,
              "predicted_terms": predicted.terms, "planner_precision": planner_precision}
    syncs, messages = None, []
    if cuda:
        memory.update(measured=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved())
        free, total = torch.cuda.mem_get_info()
        memory["outside_allocator"] = (total - free) - torch.cuda.memory_reserved()
        memory["device_peak"] = memory["reserved"] + memory["outside_allocator"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        messages = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        syncs = len(messages)
    else:
        from tests.memory_measure import LiveBytes

        inputs = [v for v in flow.model_kwargs.values() if isinstance(v, torch.Tensor)]
        inputs += [flow.video_target, flow.video_loss_mask, flow.audio_target]
        tracker = LiveBytes().track_module(model)
        tracker.track(optimizer.state_dict()["state"], inputs)
        memory["baseline"] = tracker.live
        with tracker:
            step()
        memory["measured"] = tracker.peak
    memory["error_percent"] = 100 * (predicted.tensors / memory["measured"] - 1)
    return memory, syncs, messages


def timed_summary(args, shapes: gf.Shapes, r: dict) -> list[str]:
    m, cuda, times = r["memory"], r["cuda"], r["step_s"]
    lines = []
    if not cuda:
        lines.append("*** CPU RUN: a REDUCED CORRECTNESS CHECK, NOT THE REAL MEASUREMENT (that needs a GPU: 48 "
                     "blocks, 89 frames 768x768). ***")
    elif r["reduced"]:
        lines.append("*** reduced depth, width or size: not the real 48-block 89x768x768 measurement ***")
    precision = f"base {args.base_precision}, compute {args.dtype}" + (" + bf16 autocast" if args.autocast else "")
    lines += [
        (f"device {r['device']} ({args.device}), {precision}, optimizer {args.optimizer}, torch "
         f"{torch.__version__}, {torch.get_num_threads()} CPU threads"),
        (f"model: LTX-{args.version} transformer, {args.layers} of 48 blocks"
         + (f", widths / {args.narrow}" if args.narrow > 1 else "") + f", {r['params'] / 1e9:.3f} B parameters "
         f"(random); LoRA rank {args.rank}: {r['lora_params'] / 1e6:.2f} M trainable (fp32); checkpointing on"
         + (f"; {r['compiled_blocks']} blocks compiled" if r["compiled_blocks"] else "")),
        (f"sample: {args.frames} frames {args.height}x{args.width} → {shapes.video_tokens} video tokens, "
         f"{shapes.audio_tokens} audio tokens, {shapes.text_tokens} text tokens; batch {args.batch_size}"),
        (f"build + quantize + LoRA + inputs: {r['build_s']:.1f} s (weights {r['load_s']:.1f} s); {args.warmup} "
         f"warm-up, {args.steps} timed; first step {r['first_step_s']:.2f} s"
         + (" (incl. compilation)" if r["compiled_blocks"] else "")),
        (f"s/step: median {r['median_s']:.3f}, mean {statistics.fmean(times):.3f}, best {min(times):.3f} "
         "(steps: " + ", ".join(f"{t:.3f}" for t in times) + ")"),
        f"loss: {', '.join(f'{v:.4f}' for v in r['losses'])} ({'finite' if r['losses_finite'] else 'NOT FINITE'})",
    ]
    if cuda:
        lines.append(f"GPU: after build {r['weights_bytes'] / GIB:.2f} GiB, load peak {r['load_peak_bytes'] / GIB:.2f}"
                     f" GiB; step peak allocated {m['measured'] / GIB:.2f} GiB, reserved {m['reserved'] / GIB:.2f} "
                     f"GiB, outside the allocator {m['outside_allocator'] / GIB:.2f} GiB")
    else:
        lines.append(f"peak RSS of this process (build included): {r['peak_rss_gib']:.2f} GiB")
    lines.append(f"memory ({'max_memory_allocated' if cuda else 'live tensor storage'} vs planner tensors, "
                 f"{m['planner_precision']}): predicted {m['predicted_tensors'] / GIB:.3f} GB, measured "
                 f"{m['measured'] / GIB:.3f} GB, error {m['error_percent']:+.1f} %")
    if cuda:
        lines.append(f"  with the GPU allowance: predicted {m['predicted_peak'] / GIB:.2f} GB vs reserved + outside "
                     f"the allocator {m['device_peak'] / GIB:.2f} GB")
    lines += gf.flops_lines(r["flops"])
    lines.append(f"achieved: {r['achieved_tflops']:.2f} TFLOP/s of model FLOPs, "
                 f"{r['achieved_tflops_incl_recompute']:.2f} TFLOP/s incl. recompute (median step)")
    lines.append(f"MFU {100 * r['mfu']:.1f} % | HFU {100 * r['hfu']:.1f} % of {r['peak_tflops']:g} TFLOP/s"
                 if r["peak_tflops"] else "MFU: n/a on CPU (give --peak-tflops to compute one)")
    lines.append("attention kernels (one more step, profiled): "
                 + (", ".join(f"{k} x{n}" for k, n in r["attention_kernels"].items()) or "none seen"))
    lines.append(f"host-device syncs in a step: {r['syncs']}" if cuda else "host-device syncs in a step: n/a (CPU)")
    if r["counted_flops"] is not None:
        lines.append(gf.check_line("FlopCounterMode around one more step", r["counted_flops"], r["flops"]["hardware"]))
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=("2.0", "2.3"), default="2.0", help="LTX-2 release (%(default)s)")
    parser.add_argument("--layers", type=int, default=48, help="transformer blocks (%(default)s)")
    parser.add_argument("--narrow", type=int, default=1, help="divide every width by this (CPU checks only)")
    parser.add_argument("--frames", type=int, default=89)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--fps", type=float, default=25.0, help="sets the audio length: 25 tokens/s")
    parser.add_argument("--text-tokens", type=int, default=REAL_MAX_SEQUENCE_LENGTH)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (%(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (%(default)s)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="base weights and inputs (default: bf16 on CUDA and for int8/fp8, fp32 on CPU)")
    parser.add_argument("--base-precision", choices=("bf16", "int8", "fp8"), default="bf16",
                        help="frozen base: as built, or quantized weight-only by model.quantize.quantize_base")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw")
    parser.add_argument("--compile", action="store_true", help="regional compilation of every block")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense FLOP/s for MFU (default: by GPU name, none on CPU)")
    parser.add_argument("--autocast", action="store_true",
                        help="bf16 autocast around the forward: LoRA matmuls in bf16 too (not the engine's way)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 for the fp32 LoRA matmuls on CUDA")
    parser.add_argument("--no-flop-check", action="store_true", help="skip the FlopCounterMode step")
    parser.add_argument("--meta", action="store_true",
                        help="build on the meta device: parameter counts and FLOPs only, no timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.dtype is None:
        cpu = not (args.meta or args.device.startswith("cuda"))
        args.dtype = "fp32" if cpu and args.base_precision == "bf16" else "bf16"
    if args.base_precision != "bf16" and args.dtype != "bf16":
        parser.error("an int8/fp8 base computes in bf16: --dtype bf16")
    if args.peak_tflops is None and args.meta:
        args.peak_tflops = gf.DEFAULT_PEAK_TFLOPS
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    config = model_config(args.version, args.layers, args.narrow)
    shapes = gf.sample_shapes(args.frames, args.height, args.width, args.fps, args.text_tokens)
    print(f"LTX-{args.version} transformer config (tests.memory_measure.real_transformer_config), "
          f"num_layers={args.layers}" + (f", widths / {args.narrow}" if args.narrow > 1 else ""), flush=True)
    result = run_meta(args, config, shapes) if args.meta else run_timed(args, config, shapes)
    result.update({"args": vars(args) | {"json": str(args.json) if args.json else None}, "config": config,
                   "shapes": shapes.__dict__, "python": sys.version.split()[0], "torch": torch.__version__,
                   "load_average": os.getloadavg()})
    print("\n" + "\n".join(result["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
