"""FLOPs of one LoRA training step of the LTX-2.0 / LTX-2.3 transformer, and which attention kernel runs.

Used by bench/gpu_step.py (its docstring explains the counting rules). 1 multiply-add = 2 FLOPs; batch B;
S_v video tokens, S_a audio tokens, T text tokens; only matmuls and attention are counted, not norms, RoPE,
activations, gates or the optimizer.

  * every nn.Linear of the model is listed with the number of tokens it sees (`linear_inventory`): per block
    the six attentions' to_q/to_k/to_v/to_out.0 (and LTX-2.3's frozen per-head `to_gate_logits`, query
    width → heads, on the query tokens) and both feed-forwards; outside the blocks proj_in/out, LTX-2.0's
    caption projections (on T tokens), the timestep embeddings (on S_v tokens for video, because the timestep
    is per token; on 1 token per sample for audio, the four a2v/v2a modulations and LTX-2.3's two prompt
    AdaLNs, which read `sigma` / `audio_sigma` of shape [B]). `check_inventory` compares the list with the
    model's own nn.Linear modules (names and shapes).
  * forward of a linear: 2·n·d_in·d_out. LoRA adds 2·n·r·(d_in + d_out).
  * backward of a FROZEN linear: no weight gradient, only the input gradient (2·n·d_in·d_out), and only where
    the input needs a gradient. It does not for everything before the first LoRA (proj_in, caption
    projections, timestep embeddings: forward only), for the text-side to_k/to_v of the two text
    cross-attentions in every block (the text context never needs a gradient; LTX-2.3's prompt modulation of
    it only uses frozen tables and the sigma embedding), and for block 0's self-attention to_q/to_k/to_v and
    gate (their input comes from proj_in). A gate's input needs a gradient exactly when its to_q's does.
  * backward of a LoRA pair A (d_in→r), B (r→d_out): dB, d(Ax) and dA: 2·n·r·(2·d_out + d_in), plus the
    input gradient 2·n·r·d_in where the input needs one (= 2x the LoRA forward there).
  * attention core (QKᵀ and PV): forward 4·B·S_q·S_k·d_inner per attention; backward twice that.
  * gradient checkpointing recomputes each block's forward during backward: one more forward of every block.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

TFLOP = 1e12
TIMESTEP_FEATURES = 256  # sinusoidal timestep projection fed to every AdaLN embedder


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

    Follows diffusers 0.42's `transformer_ltx2.py` for both layouts: LTX-2.0 (caption projections inside the
    DiT, 6 AdaLN rows) and LTX-2.3 (`gated_attn`/`audio_gated_attn`: a `to_gate_logits` per attention;
    `cross_attn_mod`: 9 AdaLN rows and a prompt AdaLN; `use_prompt_embeddings=False`: no caption projection).
    Timestep inputs as `prepare_flow_step` makes them: video timestep per token [B, S_v], the audio timestep
    and both sigmas [B] (`use_cross_timestep=True`: the a2v/v2a modulations see one token per sample).
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    da = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    heads, audio_heads = config["num_attention_heads"], config["audio_num_attention_heads"]
    d_av = da  # a2v / v2a attentions use the audio heads: inner width = audio heads x audio head dim
    cap = config["caption_channels"]
    out_v = config["out_channels"] or config["in_channels"]
    out_a = config["audio_out_channels"] or config["audio_in_channels"]
    video_rows = 9 if config.get("cross_attn_mod") else 6
    audio_rows = 9 if config.get("audio_cross_attn_mod") else 6
    prompt_adaln = (config.get("cross_attn_mod") or config.get("audio_cross_attn_mod")) \
        and config.get("use_prompt_adaln_single", True)
    gated_video, gated_audio = bool(config.get("gated_attn")), bool(config.get("audio_gated_attn"))
    linears: list[LinearUse] = []
    attentions: list[AttentionUse] = []

    def add(name, d_in, d_out, tokens, *, lora=False, input_grad=False, in_block=False):
        linears.append(LinearUse(name, d_in, d_out, tokens, lora, input_grad, in_block))

    def ada_single(name, dim, mods, tokens):  # LTX2AdaLayerNormSingle: 256→dim→dim embedder, dim→mods·dim
        add(f"{name}.emb.timestep_embedder.linear_1", TIMESTEP_FEATURES, dim, tokens)
        add(f"{name}.emb.timestep_embedder.linear_2", dim, dim, tokens)
        add(f"{name}.linear", dim, mods * dim, tokens)

    add("proj_in", config["in_channels"], d, s_v)
    add("audio_proj_in", config["audio_in_channels"], da, s_a)
    if config.get("use_prompt_embeddings", True):
        add("caption_projection.linear_1", cap, d, t)
        add("caption_projection.linear_2", d, d, t)
        add("audio_caption_projection.linear_1", cap, da, t)
        add("audio_caption_projection.linear_2", da, da, t)
    ada_single("time_embed", d, video_rows, s_v)  # per-token video timestep
    ada_single("audio_time_embed", da, audio_rows, 1)
    ada_single("av_cross_attn_video_scale_shift", d, 4, 1)
    ada_single("av_cross_attn_audio_scale_shift", da, 4, 1)
    ada_single("av_cross_attn_video_a2v_gate", d, 1, 1)
    ada_single("av_cross_attn_audio_v2a_gate", da, 1, 1)
    if prompt_adaln:
        ada_single("prompt_adaln", d, 2, 1)  # sigma: one value per sample
        ada_single("audio_prompt_adaln", da, 2, 1)

    def attention(name, d_q, d_kv, d_inner, n_heads, gated, s_q, s_k, *, q_grad, kv_grad):
        if gated:  # computed first in the processor, on the query-side input
            add(f"{name}.to_gate_logits", d_q, n_heads, s_q, input_grad=q_grad, in_block=True)
        add(f"{name}.to_q", d_q, d_inner, s_q, lora=True, input_grad=q_grad, in_block=True)
        add(f"{name}.to_k", d_kv, d_inner, s_k, lora=True, input_grad=kv_grad, in_block=True)
        add(f"{name}.to_v", d_kv, d_inner, s_k, lora=True, input_grad=kv_grad, in_block=True)
        add(f"{name}.to_out.0", d_inner, d_q, s_q, lora=True, input_grad=True, in_block=True)
        attentions.append(AttentionUse(name, s_q, s_k, d_inner))

    for i in range(config["num_layers"]):
        b = f"transformer_blocks.{i}"
        first = i == 0  # block 0's self-attention input comes from proj_in: no gradient needed there
        attention(f"{b}.attn1", d, d, d, heads, gated_video, s_v, s_v, q_grad=not first, kv_grad=not first)
        attention(f"{b}.audio_attn1", da, da, da, audio_heads, gated_audio, s_a, s_a, q_grad=not first,
                  kv_grad=not first)
        attention(f"{b}.attn2", d, config["cross_attention_dim"], d, heads, gated_video, s_v, t, q_grad=True,
                  kv_grad=False)
        attention(f"{b}.audio_attn2", da, config["audio_cross_attention_dim"], da, audio_heads, gated_audio,
                  s_a, t, q_grad=True, kv_grad=False)
        attention(f"{b}.audio_to_video_attn", d, da, d_av, audio_heads, gated_video, s_v, s_a, q_grad=True,
                  kv_grad=True)
        attention(f"{b}.video_to_audio_attn", da, d, d_av, audio_heads, gated_audio, s_a, s_v, q_grad=True,
                  kv_grad=True)
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
    weight count. Works on the meta device, quantized, and with a LoRA attached (PEFT's base_layer is the
    Linear)."""
    linears, _ = linear_inventory(config, 1, 1, 1)
    expected = {lin.name: (lin.d_out, lin.d_in) for lin in linears}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
            found[name.removesuffix(".base_layer")] = (module.out_features, module.in_features)
    if found != expected:
        missing = sorted(set(expected) - set(found))[:5]
        extra = sorted(set(found) - set(expected))[:5]
        wrong = [k for k in expected if k in found and found[k] != expected[k]][:5]
        raise AssertionError(f"FLOP inventory mismatch: missing {missing}, unlisted {extra}, shapes {wrong}")
    return sum(o * i for o, i in expected.values())


def expected_lora_params(config: dict, rank: int) -> int:
    linears, _ = linear_inventory(config, 1, 1, 1)
    return sum(rank * (lin.d_in + lin.d_out) for lin in linears if lin.lora)


PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("A100", 312.0),
               ("L40S", 362.0))  # dense bf16, by device name
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16


def peak_tflops_for(name: str) -> float:
    for key, value in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value
    return DEFAULT_PEAK_TFLOPS


def math_attention(device_type: str):
    """The math SDPA kernel where the flop counter does not know the fused one (CPU, meta)."""
    if device_type == "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def count_flops(run) -> tuple[float, dict[str, float]]:
    """torch's FlopCounterMode around `run()`: (total, {op: FLOPs})."""
    with FlopCounterMode(display=False) as counter:
        run()
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


# ------------------------------------------------------------------------------------------- tokens

AUDIO_TOKENS_PER_SECOND = 16_000 / 160 / 4  # 25: sample rate / mel hop / 4x audio VAE compression


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


# ------------------------------------------------------------------------------------ attention kernels

SDPA_IMPLEMENTATION = re.compile(r"^aten::_(scaled_dot_product_\w+|flash_attention_\w+|efficient_attention_\w+"
                                 r"|cudnn_attention_\w+)$")


def attention_kernels(run, cuda: bool) -> dict[str, int]:
    """{aten op: calls} of the scaled-dot-product-attention implementations `run()` dispatches to (e.g.
    `aten::_scaled_dot_product_flash_attention`, `..._efficient_attention`, `..._cudnn_attention`,
    `..._flash_attention_for_cpu`, `..._attention_math`, and their `_backward`s), under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    counts: Counter[str] = Counter()
    for event in prof.events():
        if SDPA_IMPLEMENTATION.match(event.name):
            counts[event.name] += 1
    return dict(sorted(counts.items()))


def kernel_summary(kernels: dict[str, int]) -> str:
    """Short form for a table: the SDPA implementations' forward ops with their call counts."""
    forward = {name: n for name, n in kernels.items() if name.startswith("aten::_scaled_dot_product")
               and not name.endswith("_backward")}
    if not forward:
        return "none seen"
    return ", ".join(f"{name.removeprefix('aten::_scaled_dot_product_')} x{n}" for name, n in forward.items())


# ------------------------------------------------------------------------------------------------ text


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


def difference_percent(counted: float, analytic: float) -> float:
    return 100 * (counted / analytic - 1)


def check_line(label: str, counted: float, analytic: float) -> str:
    return (f"{label}: {fmt_t(counted)} vs analytic {fmt_t(analytic)} incl. recompute "
            f"(difference {difference_percent(counted, analytic):+.3f} %)")
