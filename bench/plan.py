"""The memory planner: what it chooses for common GPUs, and its predictions against measured memory.

    .venv/bin/python bench/plan.py             # the three tables below (a few minutes on 2 cores)
    .venv/bin/python bench/plan.py --quick     # real sizes with 4 blocks instead of 48
    .venv/bin/python bench/plan.py --derive    # re-count the training coefficients of planning/memory.py

1. The plan for a typical job (89 frames 768x768, rank 32, one validation prompt at 89 frames 960x960) on
   24, 48 and 80 GB GPUs, for LTX-2.0 and LTX-2.3: settings chosen and the predicted peak of each phase.
2. Tiny presets on this CPU, real tensors, through the engine's functions: measured peak tensor storage of
   each phase against the prediction without its GPU-only allocator allowance.
3. The real sizes on fake tensors (FakeTensorMode: nothing allocated): one training step of the whole 48-block
   transformer, a validation forward, the VAE, Gemma-3-12B and the connectors, against the prediction.

"Measured" is live tensor storage (tests/memory_measure.py), not a GPU's `max_memory_allocated`: no CUDA
context, no caching-allocator rounding. No GPU was used.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ltx2trainer.planning import GIB, MemoryRequest, MemorySettings, estimate, plan  # noqa: E402
from ltx2trainer.planning.dims import LTX_2_19B, LTX_23, TINY, TINY_23  # noqa: E402
from ltx2trainer.planning.memory import (  # noqa: E402
    connectors_activation,
    gemma_activation,
    inference_activation,
    tokens,
    vae_activation,
)
from ltx2trainer.planning.sources import with_layers  # noqa: E402

MIB = 2**20


def plans_table() -> None:
    print("1. plan for 89 frames 768x768, rank 32, validation 89 frames 960x960 (peaks in GB, GiB as sold)")
    print(f"{'model':<10} {'GPU':>6} {'fits':<5} {'base':<5} {'optimizer':<10} {'encode':>7} "
          f"{'train':>6} {'validate':>8} {'headroom/needed':>16}  adjustments")
    for dims in (LTX_2_19B, LTX_23):
        for gpu, fp8, shards in ((24, False, 1), (48, False, 1), (48, True, 1), (80, True, 1), (40, False, 2),
                                 (32, False, 4)):
            chosen = plan(MemoryRequest(), dims, gpu, supports_fp8=fp8, validation_resolution="high",
                          validation_aspect_ratio="1:1", settings=MemorySettings(shards=shards))
            d = chosen.as_dict()
            peaks = {name: f"{phase['peak_gb']:.1f}" for name, phase in d["phases"].items()}
            margin = f"+{d['headroom_gb']:.1f}" if chosen.fits else f"needs {d['needed_gb']:.1f}"
            adjusted = ", ".join(f"{a['field'].removeprefix('validation_')} {a['used']}" for a in d["adjustments"])
            name = f"{gpu}{'*' if fp8 else ''}" + (f"x{shards}" if shards > 1 else "")
            print(f"{dims.name:<10} {name:>6} {str(chosen.fits):<5} {d['base_precision']:<5} {d['optimizer']:<10} "
                  f"{peaks['encode']:>7} {peaks['train']:>6} {peaks['validate']:>8} "
                  f"{margin:>16}  {adjusted}")
    print("   * the GPU converts fp8 in hardware. xN: FSDP over N GPUs of that size (peaks per GPU).\n")


def tiny_table() -> None:
    from tests import memory_measure as mm

    print("2. tiny presets, this CPU, real tensors: measured peak vs predicted (MiB, without allocator overhead)")
    print(f"{'model':<9} {'phase':<9} {'setting':<22} {'measured':>9} {'predicted':>10} {'error':>7}")
    clip = dict(frames=25, width=512, height=512)
    for dims in (TINY, TINY_23):
        rows = []
        for precision, checkpointing in (("fp32", True), ("fp32", False), ("bf16", True), ("int8", True)):
            measured = mm.measure_tiny_train(dims.version, rank=16, checkpointing=checkpointing, precision=precision,
                                             **clip)
            predicted = estimate(MemoryRequest(**clip, rank=16, validation=False), dims,
                                 MemorySettings(base_precision=precision, gpu=False,
                                                gradient_checkpointing=checkpointing))["train"]
            rows.append(("train", f"{precision}, ckpt {'on' if checkpointing else 'off'}", measured.peak,
                         predicted.tensors))
        small = dict(frames=17, width=512, height=288)
        phases = estimate(MemoryRequest(**small, rank=16, validation_frames=17, validation_width=512,
                                        validation_height=288), dims, MemorySettings(base_precision="fp32", gpu=False))
        rows.append(("encode", "17x512x288", mm.measure_tiny_encode(dims.version, **small).peak,
                     phases["encode"].tensors))
        rows.append(("validate", "17x512x288, CFG+STG", mm.measure_tiny_validate(dims.version, rank=16, **small).peak,
                     phases["validate"].tensors))
        for phase, setting, measured, predicted in rows:
            print(f"{dims.name:<9} {phase:<9} {setting:<22} {measured / MIB:>9.2f} {predicted / MIB:>10.2f} "
                  f"{100 * (predicted / measured - 1):>+6.1f}%")
    print()


def real_table(layers: int) -> None:
    from tests import memory_measure as mm

    print(f"3. real sizes on fake tensors: measured peak vs predicted (GiB); transformer with {layers} of 48 blocks")
    print(f"{'what':<66} {'measured':>9} {'predicted':>10} {'error':>7} {'s':>5}")

    def row(label: str, predicted: int, whole: bool, measure, **kwargs) -> None:
        """`whole`: compare the whole peak (weights included), else the activations above the baseline."""
        started = time.perf_counter()
        measured = measure(**kwargs)
        value = measured.peak if whole else measured.peak - measured.baseline
        print(f"{label:<66} {value / GIB:>9.3f} {predicted / GIB:>10.3f} {100 * (predicted / value - 1):>+6.1f}% "
              f"{time.perf_counter() - started:>5.0f}", flush=True)

    for dims in (LTX_2_19B, LTX_23):
        v = dims.version
        for checkpointing in (True, False) if layers <= 4 else (True,):
            predicted = estimate(MemoryRequest(validation=False), with_layers(dims, layers),
                                 MemorySettings(gpu=False, gradient_checkpointing=checkpointing))["train"]
            row(f"LTX-{v} training step 89x768x768 bf16 ckpt {'on' if checkpointing else 'off'} (whole peak)",
                predicted.tensors, True, mm.measure_fake_train, version=v, layers=layers, frames=89, width=768,
                height=768, checkpointing=checkpointing)
        for frames, width, height in ((89, 960, 960), (121, 960, 544)):
            n = tokens(dims, frames, width, height, 25.0)
            size = f"{frames}x{width}x{height}"
            clip = dict(version=v, layers=2, batch=2, frames=frames, width=width, height=height)
            row(f"LTX-{v} validation forward, CFG batch 2, {size}",
                inference_activation(dims, n, 2, 2, per_token_timesteps=False), False, mm.measure_fake_inference,
                **clip)
            row(f"LTX-{v} same, image-to-video (per-token timesteps)",
                inference_activation(dims, n, 2, 2, per_token_timesteps=True), False, mm.measure_fake_inference,
                per_token_timesteps=True, **clip)
            outside_one_tile = 3 * frames * (width * height - min(width, 512) * min(height, 512)) * 2
            row(f"LTX-{v} VAE decode, {size}, 512-pixel tiles",
                vae_activation(dims, frames, width, height, 2, encode=False) + outside_one_tile, False,
                mm.measure_fake_vae, version=v, encode=False, frames=frames, width=width, height=height)
        for frames, side in ((89, 768), (49, 960)):
            row(f"LTX-{v} VAE encode, {frames}x{side}x{side}, 512-pixel tiles",
                vae_activation(dims, frames, side, side, 2, encode=True), False, mm.measure_fake_vae, version=v,
                encode=True, frames=frames, width=side, height=side)
        row(f"LTX-{v} connectors, CFG pair of 1024-token prompts", connectors_activation(dims, 2, 2), False,
            mm.measure_fake_connectors, version=v, batch=2)
    row("Gemma-3-12B, 48 layers, one 1024-token prompt, all hidden states", gemma_activation(LTX_2_19B, 2), False,
        mm.measure_fake_gemma, layers=48)
    print("   the coefficients of the validation forward, the VAE and the connectors were measured at 89x960x960,\n"
          "   89x768x768 and this batch: other sizes show how they carry over (tests/test_planning.py checks more)\n")


def derive() -> None:
    """Count what one block keeps for backward, per token stream, in bytes per token and unit width: the
    `_SAVED_PER_BLOCK` table of planning/memory.py (less the LoRA A outputs, which it counts separately)."""
    import torch

    print("saved per block, bytes per token and unit width (video d, audio d_a, text: cross-attention width)")
    for version in ("2.0", "2.3"):
        for dtype in (torch.bfloat16, torch.float32):
            counted = count_saved(version, dtype)
            print(f"  LTX-{version} {str(dtype).removeprefix('torch.'):<9} "
                  + ", ".join(f"{stream} {value:.1f}" for stream, value in counted.items()))


def count_saved(version: str, dtype, rank: int = 32) -> dict[str, float]:
    import torch
    from diffusers import LTX2VideoTransformer3DModel

    from ltx2trainer.model.lora import attach_lora
    from ltx2trainer.training.flow import prepare_flow_step
    from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler
    from tests import memory_measure as mm

    sv, sa, st = 12 * 24 * 24, 89, 1024  # distinct token counts tell the streams apart
    config = mm.real_transformer_config(version, 1)
    mode = mm.fake_mode()
    model = mm.fake_module(lambda: LTX2VideoTransformer3DModel(**config), mode, dtype,
                           prepare=lambda module: attach_lora(module, rank))
    batch = mm.synthetic_batch(config, latent_frames=12, latent_height=24, latent_width=24, audio_tokens=sa,
                               text_tokens=st)
    flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                             first_frame_p=1.0, device="cpu", dtype=dtype)
    kwargs = {k: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for k, x in flow.model_kwargs.items()}
    inside = [False]
    block = model.transformer_blocks[0]
    block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    block.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    weights = {id(p.untyped_storage()) for p in model.parameters()}
    saved: dict[int, tuple] = {}

    def pack(t):
        key = id(t.untyped_storage())
        if inside[0] and key not in weights and key not in saved:
            saved[key] = (tuple(t.shape), t.untyped_storage().nbytes(), t.untyped_storage())
        return t

    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()
        model(**kwargs)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    da = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    per = collections.Counter()
    for shape, size, _ in saved.values():
        stream = "video" if sv in shape else "audio" if sa in shape else "text" if st in shape else None
        if stream is not None:
            per[stream] += size
    lora_a = {"video": 12 * rank * 4 * sv, "audio": 12 * rank * 4 * sa, "text": 4 * rank * 4 * st}
    units = {"video": sv * d, "audio": sa * da, "text": st * config["cross_attention_dim"]}
    return {stream: (per[stream] - lora_a[stream]) / units[stream] for stream in ("video", "audio", "text")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 transformer blocks instead of 48")
    parser.add_argument("--derive", action="store_true", help="re-count the training coefficients")
    parser.add_argument("--plans", action="store_true", help="only table 1 (seconds)")
    args = parser.parse_args()
    if args.derive:
        derive()
        return
    plans_table()
    if args.plans:
        return
    tiny_table()
    real_table(4 if args.quick else 48)


if __name__ == "__main__":
    main()
