"""One LoRA training step of the real-size LTX-2.0 transformer: s/step, peak memory, FLOPs and MFU.

    .venv/bin/python bench/gpu_step.py                      # on a GPU: 48 blocks, 89 frames 768x768, bf16
    .venv/bin/python bench/gpu_step.py --meta               # anywhere: full-size build on the meta device,
                                                            # parameter counts and FLOPs per step, no timing
    .venv/bin/python bench/gpu_step.py --device cpu --dtype fp32 --layers 1 --frames 9 --height 256 \
        --width 256 --steps 2 --warmup 1                    # CPU: reduced-depth correctness check only

The transformer is `LTX2VideoTransformer3DModel` with LTX-2.0's configuration (the class defaults, which are
LTX-2.0's values, plus `rope_type="split"` from the published hub config and `perturbed_attn=True`, which is
what `ltx2trainer.model.components.load_components` switches on) and random weights: nothing is downloaded.
It is built directly on the target device in the target dtype (no fp32 copy first). A rank-`--rank` LoRA is
attached with the package's own `attach_lora` (LoRA weights in fp32, as the engine trains them), gradient
checkpointing is on, and the inputs are those of one real sample: `prepare_flow_step` on a synthetic `Batch`
of the real shapes (video latents [128, F', H', W'], first-frame latents, 128-wide audio tokens at 25 per
second, 1024 text tokens of the connectors' 3840-wide output for both the video and the audio context, since
LTX-2.0 projects captions inside the transformer: `use_prompt_embeddings=True`, `caption_channels=3840`).
One timed step is what the engine does per step: forward, `flow_matching_loss`, backward, clip_grad_norm_,
AdamW step, zero_grad, between two `torch.cuda.synchronize()` calls. The FlowStep is built once and reused.

FLOPs per step (analytic; `step_flops` below; 1 multiply-add = 2 FLOPs; batch B; S_v video tokens, S_a audio
tokens, T text tokens; only matmuls and attention are counted, not norms, RoPE, activations or the optimizer):

  * every nn.Linear of the model is listed with the number of tokens it sees (`linear_inventory`): per block
    the six attentions' to_q/to_k/to_v/to_out.0 and both feed-forwards; outside the blocks proj_in/out,
    the caption projections (on T tokens), the timestep embeddings (on S_v tokens for video, because the
    timestep is per token; on 1 token per sample for audio and the four a2v/v2a modulations).
    The inventory's weight count is checked against the model's nn.Linear weights.
  * forward of a linear: 2·n·d_in·d_out. LoRA adds 2·n·r·(d_in + d_out).
  * backward of a FROZEN linear: no weight gradient, only the input gradient (2·n·d_in·d_out), and only where
    the input needs a gradient. It does not for everything before the first LoRA (proj_in, caption
    projections, timestep embeddings: forward only), for the text-side to_k/to_v of the two text
    cross-attentions in every block (the text context never needs a gradient), and for block 0's self-
    attention to_q/to_k/to_v (their input comes from proj_in). proj_out does get an input gradient.
  * backward of a LoRA pair A (d_in→r), B (r→d_out): dB, d(Ax) and dA: 2·n·r·(2·d_out + d_in), plus the
    input gradient 2·n·r·d_in where the input needs one (= 2x the LoRA forward there).
  * attention core (QKᵀ and PV): forward 4·B·S_q·S_k·d_inner per attention; backward twice that (dQ, dK,
    dV, dP), since every q/k/v carries a LoRA; so 3x forward over a step (the brief's "x3").
  * gradient checkpointing recomputes each block's forward during backward: one more forward of every
    block (not of the parts outside the blocks).

  model FLOPs    = forward + backward                         → MFU = model FLOPs / s·step / peak FLOP/s
  hardware FLOPs = forward + backward + checkpoint recompute  → HFU ("model FLOPs incl. recompute")

So for frozen base weights a linear costs ≈ 2x its forward (fwd + input grad), not the 3x of full training,
and ≈ 3x with recompute. The analytic total is cross-checked against torch's `FlopCounterMode`
(which counts what autograd really runs): on the meta device in `--meta` mode (full size, no compute) and
around one extra step after timing in a real run (attention forced to the math kernel on CPU, which the
counter understands).

Peak FLOP/s: `--peak-tflops`, default 989 (H100 SXM dense bf16) on CUDA; on CPU MFU is "n/a" unless given.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import LTX2VideoTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from ltx2trainer.model.components import REAL_MAX_SEQUENCE_LENGTH
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.training.flow import Batch, flow_matching_loss, prepare_flow_step
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler

H100_SXM_BF16_DENSE_TFLOPS = 989.0
AUDIO_TOKENS_PER_SECOND = 16_000 / 160 / 4  # 25: sample rate / mel hop / 4x audio VAE compression
REFERENCE_PARAMS = 18.88e9  # the LTX-2.0 transformer (its published config, counted)
# What differs from the class defaults (which are LTX-2.0's values otherwise):
CONFIG_OVERRIDES = {
    "rope_type": "split",  # Lightricks/LTX-2 transformer/config.json (no parameters, no FLOPs)
    "rope_double_precision": True,  # likewise (it is also the default)
    "perturbed_attn": True,  # load_components -> enable_perturbed_attention: STG processors, no weights
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TFLOP = 1e12


def real_config(layers: int) -> dict:
    """LTX2VideoTransformer3DModel's __init__ defaults (LTX-2.0) with CONFIG_OVERRIDES and `layers` blocks."""
    signature = inspect.signature(LTX2VideoTransformer3DModel.__init__)
    config = {name: p.default for name, p in signature.parameters.items()
              if name != "self" and p.default is not inspect.Parameter.empty}
    config.update(CONFIG_OVERRIDES)
    config["num_layers"] = layers
    return config


# ------------------------------------------------------------------------------------------------ FLOPs


@dataclass(frozen=True)
class LinearUse:
    """One nn.Linear of the transformer and how a training step uses it."""

    name: str
    d_in: int
    d_out: int
    tokens: int  # rows it multiplies per sample
    lora: bool  # carries a LoRA pair
    input_grad: bool  # its input needs a gradient in backward
    in_block: bool  # inside a (checkpointed) transformer block


@dataclass(frozen=True)
class AttentionUse:
    name: str
    s_q: int
    s_k: int
    d_inner: int


def linear_inventory(config: dict, s_v: int, s_a: int, t: int) -> tuple[list[LinearUse], list[AttentionUse]]:
    """Every nn.Linear (and attention core) of LTX2VideoTransformer3DModel with the tokens it sees per sample.

    Follows the module structure of diffusers 0.42.1 `transformer_ltx2.py` for LTX-2.0 (no gated attention,
    no cross-attention AdaLN, prompt projection inside the DiT, FeedForward mult 4). Timestep inputs as
    `prepare_flow_step` makes them: video timestep per token [B, S_v], audio timestep and both sigmas [B]
    (`use_cross_timestep=True`, so the a2v/v2a modulations see one token per sample).
    """
    if config["gated_attn"] or config["audio_gated_attn"] or config["cross_attn_mod"] \
            or config["audio_cross_attn_mod"] or not config["use_prompt_embeddings"]:
        raise NotImplementedError("the FLOP inventory covers the LTX-2.0 layout only")
    d = config["num_attention_heads"] * config["attention_head_dim"]
    da = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    d_av = da  # a2v / v2a attentions use the audio heads: inner width = audio heads x audio head dim
    cap = config["caption_channels"]
    out_v = config["out_channels"] or config["in_channels"]
    out_a = config["audio_out_channels"] or config["audio_in_channels"]
    linears: list[LinearUse] = []
    attentions: list[AttentionUse] = []

    def add(name, d_in, d_out, tokens, *, lora=False, input_grad=False, in_block=False):
        linears.append(LinearUse(name, d_in, d_out, tokens, lora, input_grad, in_block))

    def ada_single(name, dim, mods, tokens):  # LTX2AdaLayerNormSingle: 256→dim→dim embedder, dim→mods·dim
        add(f"{name}.emb.timestep_embedder.linear_1", 256, dim, tokens)
        add(f"{name}.emb.timestep_embedder.linear_2", dim, dim, tokens)
        add(f"{name}.linear", dim, mods * dim, tokens)

    add("proj_in", config["in_channels"], d, s_v)
    add("audio_proj_in", config["audio_in_channels"], da, s_a)
    add("caption_projection.linear_1", cap, d, t)
    add("caption_projection.linear_2", d, d, t)
    add("audio_caption_projection.linear_1", cap, da, t)
    add("audio_caption_projection.linear_2", da, da, t)
    ada_single("time_embed", d, 6, s_v)  # per-token video timestep
    ada_single("audio_time_embed", da, 6, 1)
    ada_single("av_cross_attn_video_scale_shift", d, 4, 1)
    ada_single("av_cross_attn_audio_scale_shift", da, 4, 1)
    ada_single("av_cross_attn_video_a2v_gate", d, 1, 1)
    ada_single("av_cross_attn_audio_v2a_gate", da, 1, 1)

    def attention(name, d_q, d_kv, d_inner, s_q, s_k, *, q_grad, kv_grad):
        add(f"{name}.to_q", d_q, d_inner, s_q, lora=True, input_grad=q_grad, in_block=True)
        add(f"{name}.to_k", d_kv, d_inner, s_k, lora=True, input_grad=kv_grad, in_block=True)
        add(f"{name}.to_v", d_kv, d_inner, s_k, lora=True, input_grad=kv_grad, in_block=True)
        add(f"{name}.to_out.0", d_inner, d_q, s_q, lora=True, input_grad=True, in_block=True)
        attentions.append(AttentionUse(name, s_q, s_k, d_inner))

    for i in range(config["num_layers"]):
        b = f"transformer_blocks.{i}"
        first = i == 0  # block 0's self-attention input comes from proj_in: no gradient needed there
        attention(f"{b}.attn1", d, d, d, s_v, s_v, q_grad=not first, kv_grad=not first)
        attention(f"{b}.audio_attn1", da, da, da, s_a, s_a, q_grad=not first, kv_grad=not first)
        attention(f"{b}.attn2", d, config["cross_attention_dim"], d, s_v, t, q_grad=True, kv_grad=False)
        attention(f"{b}.audio_attn2", da, config["audio_cross_attention_dim"], da, s_a, t,
                  q_grad=True, kv_grad=False)
        attention(f"{b}.audio_to_video_attn", d, da, d_av, s_v, s_a, q_grad=True, kv_grad=True)
        attention(f"{b}.video_to_audio_attn", da, d, d_av, s_a, s_v, q_grad=True, kv_grad=True)
        for prefix, dim, tokens in (("ff", d, s_v), ("audio_ff", da, s_a)):
            add(f"{b}.{prefix}.net.0.proj", dim, 4 * dim, tokens, lora=True, input_grad=True, in_block=True)
            add(f"{b}.{prefix}.net.2", 4 * dim, dim, tokens, lora=True, input_grad=True, in_block=True)

    add("proj_out", d, out_v, s_v, input_grad=True)
    add("audio_proj_out", da, out_a, s_a, input_grad=True)
    return linears, attentions


def step_flops(config: dict, s_v: int, s_a: int, t: int, rank: int, batch: int = 1,
               checkpointing: bool = True) -> dict[str, float]:
    """Analytic FLOPs of one training step (see the module docstring); keys in FLOPs."""
    linears, attentions = linear_inventory(config, s_v, s_a, t)
    f = {"linear_fwd": 0.0, "linear_bwd": 0.0, "lora_fwd": 0.0, "lora_bwd": 0.0, "attention_fwd": 0.0,
         "attention_bwd": 0.0, "recompute": 0.0}
    for lin in linears:
        n = batch * lin.tokens
        fwd = 2 * n * lin.d_in * lin.d_out
        lora_fwd = 2 * n * rank * (lin.d_in + lin.d_out) if lin.lora else 0
        f["linear_fwd"] += fwd
        f["lora_fwd"] += lora_fwd
        if lin.input_grad:
            f["linear_bwd"] += fwd  # input gradient only: the base weight is frozen
        if lin.lora:
            f["lora_bwd"] += 2 * n * rank * (2 * lin.d_out + lin.d_in) + (2 * n * rank * lin.d_in
                                                                           if lin.input_grad else 0)
        if checkpointing and lin.in_block:
            f["recompute"] += fwd + lora_fwd
    for att in attentions:
        fwd = 4 * batch * att.s_q * att.s_k * att.d_inner
        f["attention_fwd"] += fwd
        f["attention_bwd"] += 2 * fwd
        if checkpointing:
            f["recompute"] += fwd
    f["forward"] = f["linear_fwd"] + f["lora_fwd"] + f["attention_fwd"]
    f["backward"] = f["linear_bwd"] + f["lora_bwd"] + f["attention_bwd"]
    f["model"] = f["forward"] + f["backward"]
    f["hardware"] = f["model"] + f["recompute"]
    return f


def check_inventory(model: torch.nn.Module, config: dict) -> int:
    """The inventory lists exactly the model's base nn.Linear layers (by name and shape); returns their
    weight count. Works on the meta device and with a LoRA attached (PEFT's base_layer is the Linear)."""
    linears, _ = linear_inventory(config, 1, 1, 1)
    expected = {lin.name: (lin.d_out, lin.d_in) for lin in linears}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
            found[name.removesuffix(".base_layer")] = tuple(module.weight.shape)
    if found != expected:
        missing = sorted(set(expected) - set(found))[:5]
        extra = sorted(set(found) - set(expected))[:5]
        wrong = [k for k in expected if k in found and found[k] != expected[k]][:5]
        raise AssertionError(f"FLOP inventory mismatch: missing {missing}, unlisted {extra}, shapes {wrong}")
    return sum(o * i for o, i in expected.values())


def expected_lora_params(config: dict, rank: int) -> int:
    linears, _ = linear_inventory(config, 1, 1, 1)
    return sum(rank * (lin.d_in + lin.d_out) for lin in linears if lin.lora)


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Shapes:
    frames: int
    height: int
    width: int
    fps: float
    latent_frames: int
    latent_height: int
    latent_width: int
    video_tokens: int
    audio_tokens: int
    text_tokens: int


def sample_shapes(frames: int, height: int, width: int, fps: float, text_tokens: int) -> Shapes:
    """Token counts of one clip: 8x temporal / 32x spatial VAE, 1 token per latent voxel, 25 audio
    tokens per second."""
    if frames % 8 != 1 or height % 32 or width % 32:
        raise SystemExit("frames must be 8k+1 and height/width multiples of 32")
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    audio = round(frames / fps * AUDIO_TOKENS_PER_SECOND)
    return Shapes(frames, height, width, fps, f, h, w, f * h * w, audio, text_tokens)


def synthetic_batch(config: dict, shapes: Shapes, batch: int, generator: torch.Generator) -> Batch:
    """A Batch of the real shapes (float32, CPU, like TrainingData.batch gives), filled with noise."""
    c, ca, cap = config["in_channels"], config["audio_in_channels"], config["caption_channels"]
    f, h, w = shapes.latent_frames, shapes.latent_height, shapes.latent_width

    def randn(*size):
        return torch.randn(*size, generator=generator)

    return Batch(
        video=randn(batch, c, f, h, w), first_frame=randn(batch, c, 1, h, w),
        audio=randn(batch, shapes.audio_tokens, ca), audio_in_loss=True,
        video_context=randn(batch, shapes.text_tokens, cap),
        audio_context=randn(batch, shapes.text_tokens, cap),
        mask=torch.ones(batch, shapes.text_tokens), fps=shapes.fps,
    )


# ---------------------------------------------------------------------------------------------- model


def build_transformer(config: dict, device: torch.device | str, dtype: torch.dtype
                      ) -> LTX2VideoTransformer3DModel:
    """Random weights, created directly on `device` in `dtype` (no fp32 or CPU copy on the way)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LTX2VideoTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)


def count_flops(run) -> tuple[float, dict[str, float]]:
    with FlopCounterMode(display=False) as counter:
        run()
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def math_attention(device_type: str):
    """The math SDPA kernel where the flop counter does not know the fused one (CPU, meta)."""
    if device_type == "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fmt_t(flops: float) -> str:
    return f"{flops / TFLOP:,.2f} TFLOP" if flops >= TFLOP else f"{flops / 1e9:,.2f} GFLOP"


def flops_lines(flops: dict[str, float]) -> list[str]:
    f = {key: fmt_t(value) for key, value in flops.items()}
    return [
        (f"analytic FLOPs per step: forward {f['forward']} (frozen linears {f['linear_fwd']}, "
         f"LoRA {f['lora_fwd']}, attention {f['attention_fwd']})"),
        (f"  backward {f['backward']} (frozen-linear input grads {f['linear_bwd']}, LoRA {f['lora_bwd']}, "
         f"attention {f['attention_bwd']})"),
        f"  checkpoint recompute {f['recompute']}",
        f"  model FLOPs (fwd+bwd) {f['model']}; hardware FLOPs (incl. recompute) {f['hardware']}",
    ]


def check_line(label: str, counted: float, analytic: float) -> str:
    return (f"{label}: {fmt_t(counted)} vs analytic {fmt_t(analytic)} incl. recompute "
            f"(difference {100 * (counted / analytic - 1):+.3f} %)")


# ----------------------------------------------------------------------------------------------- modes


def run_meta(args, config: dict, shapes: Shapes) -> dict:
    """Full-size build on the meta device: parameter counts, inventory check, analytic and counted FLOPs."""
    started = time.perf_counter()
    model = build_transformer(config, "meta", DTYPES[args.dtype])
    params = sum(p.numel() for p in model.parameters())
    block_params = sum(p.numel() for p in model.transformer_blocks[0].parameters()) if args.layers else 0
    lora = attach_lora(model, args.rank)
    lora_params = sum(p.numel() for p in lora)
    if lora_params != expected_lora_params(config, args.rank):
        raise AssertionError(f"LoRA has {lora_params} parameters, inventory says "
                             f"{expected_lora_params(config, args.rank)}")
    linear_weights = check_inventory(model, config)
    flops = step_flops(config, shapes.video_tokens, shapes.audio_tokens, shapes.text_tokens, args.rank,
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

    with math_attention("meta"):
        counted, by_op = count_flops(step)
    result = {
        "mode": "meta", "params": params, "params_per_block": block_params, "lora_params": lora_params,
        "linear_weights": linear_weights, "flops": flops, "counted_flops": counted, "counted_by_op": by_op,
        "build_and_count_s": time.perf_counter() - started,
    }
    latent = [config["in_channels"], shapes.latent_frames, shapes.latent_height, shapes.latent_width]
    lines = [
        (f"FULL-SIZE CONFIG ON THE META DEVICE (no weights, no timing): {args.layers} blocks, "
         f"{args.frames} frames {args.height}x{args.width}, rank {args.rank}, batch {args.batch_size}"),
        (f"transformer parameters: {params / 1e9:.3f} B ({params:,}; published LTX-2.0: 18.88 B); "
         f"per block {block_params / 1e6:.2f} M"),
        f"LoRA rank {args.rank} parameters: {lora_params / 1e6:.1f} M ({lora_params:,}) = inventory",
        f"FLOP inventory matches the model's {linear_weights / 1e9:.3f} B nn.Linear weights",
        (f"tokens per sample: video {shapes.video_tokens} ({latent}), audio {shapes.audio_tokens}, "
         f"text {shapes.text_tokens}"),
        *flops_lines(flops),
        check_line("FlopCounterMode on meta (fwd + bwd + recompute, math attention)", counted,
                   flops["hardware"]),
    ]
    if args.peak_tflops:
        floor = flops["model"] / (args.peak_tflops * TFLOP)
        lines.append(f"at {args.peak_tflops:g} TFLOP/s peak, 100 % MFU would be {floor:.2f} s/step "
                     f"({flops['hardware'] / (args.peak_tflops * TFLOP):.2f} s with the recompute)")
    result["summary"] = lines
    return result


def run_timed(args, config: dict, shapes: Shapes) -> dict:
    """Build, attach LoRA, time `--steps` training steps after `--warmup`, then count one step's FLOPs."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_transformer(config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    parameters = attach_lora(model, args.rank)
    trainable = sum(p.numel() for p in parameters)
    check_inventory(model, config)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(parameters, lr=2e-4)
    batch = synthetic_batch(config, shapes, args.batch_size, torch.Generator().manual_seed(0))
    flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                             first_frame_p=0.5, device=device, dtype=dtype)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    weights_mb = torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    losses: list[float] = []

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast else contextlib.nullcontext():
            video, audio = model(**flow.model_kwargs)
        loss, _, _ = flow_matching_loss(video, audio, flow)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(elapsed)
        print(f"  step {i + 1}/{args.warmup + args.steps}{' (warm-up)' if i < args.warmup else ''}: "
              f"{elapsed:.3f} s", flush=True)
    loss_values = [float(v) for v in losses]
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    reserved_mb = torch.cuda.max_memory_reserved() / 2**20 if cuda else float("nan")

    flops = step_flops(config, shapes.video_tokens, shapes.audio_tokens, shapes.text_tokens, args.rank,
                       args.batch_size, checkpointing=True)
    counted = by_op = None
    if not args.no_flop_check:
        with math_attention(device.type):
            counted, by_op = count_flops(step)

    mean_s = sum(times) / len(times)
    best_s = min(times)
    median_s = statistics.median(times)
    peak = args.peak_tflops if args.peak_tflops else (H100_SXM_BF16_DENSE_TFLOPS if cuda else None)
    achieved = flops["model"] / median_s / TFLOP
    achieved_hw = flops["hardware"] / median_s / TFLOP
    mfu = achieved / peak if peak else None
    hfu = achieved_hw / peak if peak else None
    reduced = args.layers < 48 or (args.frames, args.height, args.width) != (89, 768, 768)

    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    lines = []
    if not cuda:
        lines.append("*** CPU RUN: a REDUCED-DEPTH / REDUCED-SIZE CORRECTNESS CHECK, NOT THE REAL "
                     "MEASUREMENT. The real numbers need a GPU (48 blocks, 89 frames 768x768, bf16). ***")
    elif reduced:
        lines.append("*** reduced depth or size: not the real 48-block 89x768x768 measurement ***")
    precision = args.dtype + (" + bf16 autocast" if args.autocast else "")
    precision += ", TF32 on" if args.tf32 else ""
    finite = "finite" if all(math.isfinite(v) for v in loss_values) else "NOT FINITE"
    lines += [
        (f"device {name} ({device.type}), dtype {precision}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} CPU threads"),
        (f"model: LTX-2.0 transformer, {args.layers} of 48 blocks, {params / 1e9:.3f} B parameters, random "
         f"weights; LoRA rank {args.rank}: {trainable / 1e6:.2f} M trainable (fp32); gradient checkpointing "
         "on"),
        (f"sample: {args.frames} frames {args.height}x{args.width} → {shapes.video_tokens} video tokens, "
         f"{shapes.audio_tokens} audio tokens, {shapes.text_tokens} text tokens; batch {args.batch_size}"),
        f"build + LoRA + inputs: {build_s:.1f} s; {args.warmup} warm-up step(s), {args.steps} timed",
        (f"s/step: median {median_s:.3f}, mean {mean_s:.3f}, best {best_s:.3f} (steps: "
         + ", ".join(f"{t:.3f}" for t in times) + ")"),
        f"loss: {', '.join(f'{v:.4f}' for v in loss_values)} ({finite})",
    ]
    if cuda:
        lines.append(f"GPU memory: weights + LoRA + inputs {weights_mb / 1024:.2f} GiB before the first "
                     f"step; peak allocated {peak_mb / 1024:.2f} GiB, peak reserved "
                     f"{reserved_mb / 1024:.2f} GiB")
    else:
        lines.append(f"peak RSS of this process (build included): {peak_mb / 1024:.2f} GiB")
    lines += flops_lines(flops)
    lines.append(f"achieved: {achieved:.2f} TFLOP/s of model FLOPs, {achieved_hw:.2f} TFLOP/s incl. "
                 "recompute (median step)")
    if peak:
        fp32_peak = cuda and dtype != torch.bfloat16 and not args.peak_tflops
        note = " (the bf16 dense peak: give --peak-tflops for fp32)" if fp32_peak else ""
        lines.append(f"MFU {100 * mfu:.1f} % (model FLOPs: fwd+bwd) | HFU {100 * hfu:.1f} % (incl. "
                     f"checkpoint recompute) of {peak:g} TFLOP/s peak{note}")
    else:
        lines.append("MFU: n/a on CPU (give --peak-tflops to compute one)")
    if counted is not None:
        lines.append(check_line("FlopCounterMode around one more step", counted, flops["hardware"]))
    return {
        "mode": "timed", "device": name, "reduced": reduced, "params": params, "lora_params": trainable,
        "build_s": build_s, "step_s": times, "median_s": median_s, "mean_s": mean_s, "best_s": best_s,
        "losses": loss_values, "peak_memory_mb": peak_mb, "peak_reserved_mb": reserved_mb,
        "weights_mb": weights_mb, "flops": flops, "counted_flops": counted, "counted_by_op": by_op,
        "achieved_tflops": achieved, "achieved_tflops_incl_recompute": achieved_hw, "peak_tflops": peak,
        "mfu": mfu, "hfu": hfu, "summary": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=48, help="transformer blocks (%(default)s)")
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
                        help="base weights and inputs (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"peak dense FLOP/s for MFU (default {H100_SXM_BF16_DENSE_TFLOPS:g} on CUDA, "
                             "none on CPU)")
    parser.add_argument("--autocast", action="store_true",
                        help="bf16 autocast around the forward: LoRA matmuls in bf16 too (not the engine's "
                             "way)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 for the fp32 LoRA matmuls on CUDA")
    parser.add_argument("--no-flop-check", action="store_true", help="skip the FlopCounterMode step")
    parser.add_argument("--meta", action="store_true",
                        help="build on the meta device: parameter counts and FLOPs only, no timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bf16" if (args.meta or args.device.startswith("cuda")) else "fp32"
    if args.peak_tflops is None and args.meta:
        args.peak_tflops = H100_SXM_BF16_DENSE_TFLOPS

    config = real_config(args.layers)
    shapes = sample_shapes(args.frames, args.height, args.width, args.fps, args.text_tokens)
    print("LTX2VideoTransformer3DModel config: class defaults + "
          + ", ".join(f"{k}={v!r}" for k, v in CONFIG_OVERRIDES.items()) + f", num_layers={args.layers}",
          flush=True)
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
