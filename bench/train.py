"""Benchmark of the training engine (`train_lora`) against a bare hand-written loop, on the tiny preset.

    .venv/bin/python bench/train.py [--out DIR] [--sizes 256,512] [--steps 40] [--warmup 5] [--repeat 9]
                                    [--profile]

Target: the engine's steps/s >= 0.95x the bare loop's, on the same model, sizes and batch shapes, in one
process. For each clip size (17 frames at SIZE x SIZE, 25 fps, with audio; batch 1; LoRA rank 32; fp32 on the
CPU), the two are run `--repeat` times, interleaved (engine, bare, bare, engine, engine, bare, ...: each
round alternates which goes first, so a drift in the load from other processes favours neither), each on a
fresh copy of the same seeded tiny transformer:

  engine  `train_lora(components, data, TrainConfig(number_of_steps=W+N, checkpoint_every=0,
          validation_every=0), tmp, on_step=None, on_validate=None, resume=False)`: per step it draws the
          sample, noise, sigmas and first-frame conditioning, builds the model inputs, runs forward, loss,
          backward, clip, AdamW, LR schedule and the loss reduction;
  bare    `attach_lora` with the same rank, AdamW on the LoRA parameters, one `FlowStep` from
          `prepare_flow_step` made once and reused: per step only forward, `flow_matching_loss`, backward,
          clip_grad_norm_, optimizer.step, zero_grad.

Timing: a global optimizer step post-hook (`torch.optim.optimizer.register_optimizer_step_post_hook`, the
same for both, about a microsecond) stamps the end of every AdamW step, so steady-state steps/s is
N / (t[W+N] - t[W]): the W warm-up steps, the engine's set-up (LoRA, Accelerator, optimizer) and its final
LoRA read-out are outside the window, while everything the engine does between two optimizer steps is inside.
The engine's whole-call rate (set-up included) is reported too. The dataset is built without ffmpeg: one
random clip per size is encoded by the tiny VAEs (`encode_video`, `encode_audio`) to get the latent shapes,
the other samples are random latents of those shapes; captions go through `encode_prompts` +
`connect_prompts`. Besides the direct comparison, what the engine does per step beyond the bare loop is
timed piece by piece (best of 7, so hardly affected by load) and turned into an expected ratio. Prints a
summary and writes OUT/bench_train.json. With `--profile`, or when the median or best ratio of a size misses
the target, the steady-state steps of engine and bare runs of that size are profiled with cProfile.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import itertools
import json
import math
import os
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.optim.optimizer import register_optimizer_step_post_hook

from ltx2trainer.model.components import ModelComponents
from ltx2trainer.model.encoders import (
    audio_latent_length,
    connect_prompts,
    encode_audio,
    encode_prompts,
    encode_video,
)
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.flow import flow_matching_loss, prepare_flow_step
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler
from ltx2trainer.training.trainer import StepInfo, TrainConfig, train_lora

TARGET_RATIO = 0.95
FRAMES = 17
FPS = 25.0
RANK = 32
SEED = 0
SAMPLES = 4
PROMPTS = ["a dog running on the street", "a red car at night", "a woman singing on stage",
           "waves of the sea under the moon"]
AUDIO_SAMPLE_RATE_HZ = 16_000


# ---------------------------------------------------------------------------------------------- data


def build_data(components: ModelComponents, size: int, samples: int = SAMPLES) -> TrainingData:
    """`samples` encoded samples of 17 frames at size x size with audio and a caption each."""
    generator = torch.Generator().manual_seed(size)
    pixels = torch.rand(3, FRAMES, size, size, generator=generator) * 2 - 1
    video = encode_video(components, pixels)
    first_frame = encode_video(components, pixels[:, :1])
    length = audio_latent_length(components, FRAMES, FPS)
    waveform = 0.1 * torch.randn(2, round(FRAMES / FPS * AUDIO_SAMPLE_RATE_HZ), generator=generator)
    audio = encode_audio(components, waveform, length)
    embeds, mask = encode_prompts(components, PROMPTS[:samples])
    video_context, audio_context, context_mask = connect_prompts(components, embeds, mask)
    rows = []
    for i in range(samples):
        row = {"video": video, "first_frame": first_frame, "audio": audio} if i == 0 else {
            "video": torch.randn(video.shape, generator=generator),
            "first_frame": torch.randn(first_frame.shape, generator=generator),
            "audio": torch.randn(audio.shape, generator=generator),
        }
        row.update(video_context=video_context[i], audio_context=audio_context[i], mask=context_mask[i])
        rows.append(row)
    return TrainingData(samples=rows, fps=FPS, silence=None)


# -------------------------------------------------------------------------------------------- timing


class StepClock:
    """Stamps the end of every AdamW step (a global optimizer post-hook; the engine's AcceleratedOptimizer
    calls the wrapped AdamW's step, which is the one counted)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.profile: tuple[cProfile.Profile, int, int] | None = None  # profiler, first and last stamp
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        if isinstance(optimizer, torch.optim.AdamW):
            self.stamps.append(time.perf_counter())
            if self.profile is not None:
                profiler, start, stop = self.profile
                if len(self.stamps) == start:
                    profiler.enable()
                elif len(self.stamps) == stop:
                    profiler.disable()

    def reset(self, profile: tuple[cProfile.Profile, int, int] | None = None) -> None:
        """Forget the stamps; with `profile`, profile from stamp `start` to stamp `stop` of the next run."""
        self.stamps = []
        self.profile = profile

    def rates(self, warmup: int, steps: int) -> tuple[float, float]:
        """(steps / window, 1 / median step interval) over the `steps` steps after `warmup` (>= 1) steps.
        The second is robust to a burst of load from other processes hitting a few steps of one run."""
        if len(self.stamps) != warmup + steps:
            raise RuntimeError(f"expected {warmup + steps} optimizer steps, saw {len(self.stamps)}")
        window = self.stamps[warmup - 1:]
        intervals = [b - a for a, b in itertools.pairwise(window)]
        return steps / (window[-1] - window[0]), 1.0 / statistics.median(intervals)


def run_engine(components: ModelComponents, pristine: torch.nn.Module, data: TrainingData, steps: int,
               clock: StepClock, profile: tuple[cProfile.Profile, int, int] | None = None) -> dict:
    """One train_lora call on a fresh copy of the pristine transformer."""
    run_components = dataclasses.replace(components, transformer=copy.deepcopy(pristine))
    config = TrainConfig(number_of_steps=steps, rank=RANK, seed=SEED, checkpoint_every=0, validation_every=0)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        torch.manual_seed(SEED)  # the LoRA's A matrices are drawn from the global generator
        clock.reset(profile)
        started = time.perf_counter()
        result = train_lora(run_components, data, config, Path(tmp), sample_ids=[f"s{i}" for i in
                                                                                  range(len(data.samples))],
                            on_step=None, on_validate=None, resume=False)
        call_s = time.perf_counter() - started
    return {"call_s": call_s, "final_loss": result.losses[-1]}


def run_bare(pristine: torch.nn.Module, data: TrainingData, steps: int, clock: StepClock,
             profile: tuple[cProfile.Profile, int, int] | None = None) -> dict:
    """The bare loop: forward, loss, backward, clip, AdamW step, zero_grad on one reused FlowStep."""
    model = copy.deepcopy(pristine)
    torch.manual_seed(SEED)
    parameters = attach_lora(model, RANK)
    model.train()
    optimizer = torch.optim.AdamW(parameters, lr=TrainConfig.learning_rate)
    generator = torch.Generator().manual_seed(SEED)
    flow = prepare_flow_step(data.batch([0]), ShiftedLogitNormalSampler(), generator,
                             first_frame_p=TrainConfig.first_frame_conditioning_p)
    clock.reset(profile)
    started = time.perf_counter()
    for _ in range(steps):
        video, audio = model(**flow.model_kwargs)
        loss, _, _ = flow_matching_loss(video, audio, flow)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, TrainConfig.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"call_s": time.perf_counter() - started, "final_loss": float(loss.detach())}


def summarise(values: list[float]) -> dict:
    return {"best": max(values), "median": statistics.median(values), "worst": min(values), "all": values}


def measure_size(components: ModelComponents, pristine: torch.nn.Module, size: int, args, clock: StepClock
                 ) -> dict:
    print(f"\n17 frames {size}x{size}: encoding the dataset (not timed)...", flush=True)
    data = build_data(components, size)
    shapes = {key: list(value.shape) for key, value in data.samples[0].items()}
    total = args.warmup + args.steps
    # One untimed short round first: allocator, Accelerator state and lazy initialisation.
    run_engine(components, pristine, data, args.warmup + 1, clock)
    run_bare(pristine, data, args.warmup + 1, clock)
    engine, bare, engine_robust, bare_robust, engine_call, rounds = [], [], [], [], [], []
    for i in range(args.repeat):
        # Order engine-bare, then bare-engine, ... so that a load trend favours neither.
        for which in (("engine", "bare") if i % 2 == 0 else ("bare", "engine")):
            if which == "engine":
                e = run_engine(components, pristine, data, total, clock)
                e_rate, e_robust = clock.rates(args.warmup, args.steps)
            else:
                b = run_bare(pristine, data, total, clock)
                b_rate, b_robust = clock.rates(args.warmup, args.steps)
        engine.append(e_rate)
        bare.append(b_rate)
        engine_robust.append(e_robust)
        bare_robust.append(b_robust)
        engine_call.append(total / e["call_s"])
        rounds.append({"engine_steps_per_s": e_rate, "bare_steps_per_s": b_rate, "ratio": e_rate / b_rate,
                       "engine_median_step_ms": 1000 / e_robust, "bare_median_step_ms": 1000 / b_robust,
                       "engine_call_s": e["call_s"], "bare_loop_s": b["call_s"],
                       "engine_final_loss": e["final_loss"], "bare_final_loss": b["final_loss"],
                       "load_average": os.getloadavg()[0]})
        print(f"  round {i + 1}/{args.repeat}: engine {e_rate:6.2f} steps/s ({1000 / e_rate:6.1f} ms/step, "
              f"median step {1000 / e_robust:5.1f} ms), bare {b_rate:6.2f} steps/s ({1000 / b_rate:6.1f} "
              f"ms/step, median step {1000 / b_robust:5.1f} ms), ratio {e_rate / b_rate:.3f}", flush=True)
    result = {
        "size": size, "frames": FRAMES, "shapes": shapes,
        "video_tokens": shapes["video"][1] * shapes["video"][2] * shapes["video"][3],
        "audio_tokens": shapes["audio"][0], "text_tokens": shapes["video_context"][0],
        "engine": summarise(engine), "bare": summarise(bare), "engine_whole_call": summarise(engine_call),
        "engine_median_step": summarise(engine_robust), "bare_median_step": summarise(bare_robust),
        "ratio_median": statistics.median(engine) / statistics.median(bare),
        "ratio_best": max(engine) / max(bare),
        "ratio_median_step": statistics.median(engine_robust) / statistics.median(bare_robust),
        "ratio_per_round_median": statistics.median(r["ratio"] for r in rounds),
        "rounds": rounds,
    }
    result["meets_target"] = result["ratio_median"] >= TARGET_RATIO
    extras = engine_extras(pristine, data)
    bare_ms = 1000 / statistics.median(bare_robust)
    result["engine_extras_us"] = extras
    result["ratio_from_extras"] = bare_ms / (bare_ms + extras["total"] / 1000)
    if args.profile or min(result["ratio_median"], result["ratio_best"]) < TARGET_RATIO:
        print("  profiling one engine and one bare run...", flush=True)
        result["profile"] = profile_size(components, pristine, data, args.warmup, args.steps, clock)
    return result


# ------------------------------------------------------------------------------------------- profile


def _short(key: tuple[str, int, str]) -> str:
    file, line, function = key
    if file == "~":
        return function
    return f"{file.split('site-packages/')[-1].split('/work/main/')[-1]}:{line}({function})"


def _flat(stats: pstats.Stats) -> dict[str, tuple[int, float, float]]:
    """function -> (calls, own time, cumulative time)."""
    return {_short(key): (calls, own, cumulative)
            for key, (_, calls, own, cumulative, _) in stats.stats.items()}


def profile_size(components: ModelComponents, pristine: torch.nn.Module, data: TrainingData, warmup: int,
                 steps: int, clock: StepClock, repeat: int = 3) -> dict:
    """cProfile the steady-state steps (after the warm-up, between two optimizer steps, so set-up and
    read-out are excluded) of `repeat` interleaved engine and bare runs, and list where the engine spends
    more. Per function the smallest time over the repetitions counts, so that a burst of load from other
    processes during one run does not show up as engine overhead.

    cProfile slows Python-heavy code more than tensor kernels, so the engine's extra Python per step is
    exaggerated here relative to the model; the differences still show where the extra time goes."""
    flats: dict[str, dict[str, tuple[int, float, float]]] = {"engine": {}, "bare": {}}
    totals: dict[str, float] = {}
    for _ in range(repeat):
        for name in ("engine", "bare"):
            profiler = cProfile.Profile()
            window = (profiler, warmup, warmup + steps)
            if name == "engine":
                run_engine(components, pristine, data, warmup + steps, clock, window)
            else:
                run_bare(pristine, data, warmup + steps, clock, window)
            stats = pstats.Stats(profiler)
            totals[name] = min(totals.get(name, math.inf), stats.total_tt)
            for function, (calls, own, cumulative) in _flat(stats).items():
                best = flats[name].get(function)
                flats[name][function] = (calls, own, cumulative) if best is None else (
                    calls, min(best[1], own), min(best[2], cumulative))
    engine, bare = flats["engine"], flats["bare"]
    rows = []
    for function in set(engine) | set(bare):
        e, b = engine.get(function, (0, 0.0, 0.0)), bare.get(function, (0, 0.0, 0.0))
        rows.append({"function": function,
                     "own_ms_engine": 1000 * e[1] / steps, "own_ms_bare": 1000 * b[1] / steps,
                     "cum_ms_engine": 1000 * e[2] / steps, "cum_ms_bare": 1000 * b[2] / steps,
                     "calls_engine": e[0] / steps, "calls_bare": b[0] / steps})
    rows.sort(key=lambda r: r["own_ms_engine"] - r["own_ms_bare"], reverse=True)
    engine_only = sorted((r for r in rows if r["calls_bare"] == 0 and r["cum_ms_engine"] > 0),
                         key=lambda r: r["cum_ms_engine"], reverse=True)
    return {"steps": steps, "repeat": repeat, "ms_per_step_engine": 1000 * totals["engine"] / steps,
            "ms_per_step_bare": 1000 * totals["bare"] / steps, "own_time_diff_top": rows[:15],
            "engine_only_cumulative_top": engine_only[:15]}


def _best_us(function, calls: int, repeat: int = 7) -> float:
    """Smallest mean time of `calls` calls over `repeat` tries, in microseconds."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - started) / calls)
    return 1e6 * best


def engine_extras(pristine: torch.nn.Module, data: TrainingData) -> dict[str, float]:
    """What one engine step does beyond the bare loop's work, each piece timed on its own (best of 7,
    so little affected by other processes), in microseconds per step.

    Mirrors `train_lora`'s loop body: the step's generator, sample indices, batch and `prepare_flow_step`;
    Accelerate's wrappers the engine still uses (autocast context, backward, each as the difference to the
    plain call; the optimizer and gradient clipping are plain torch in the engine, as in the bare loop); the
    LR schedule; the loss reduction with its three float() reads and the StepInfo."""
    accelerator = Accelerator(cpu=True)
    sampler = ShiftedLogitNormalSampler()
    counter = iter(range(1, 10**9))

    def data_step() -> None:
        step = next(counter)
        generator = torch.Generator().manual_seed((SEED * 1_000_003 + step) * 1_009)
        indices = data.indices(step, 1, SEED, 0, 1)
        prepare_flow_step(data.batch(indices), sampler, generator,
                          first_frame_p=TrainConfig.first_frame_conditioning_p, device=accelerator.device)

    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(plain, lambda done: 1.0 - 1e-9 * done)
    weight = torch.nn.Parameter(torch.ones(4))

    def with_autocast() -> None:
        with accelerator.autocast():
            pass

    def report() -> None:
        losses = accelerator.reduce(torch.stack([torch.ones(())] * 3), reduction="mean")
        StepInfo(1, 1, float(losses[0]), float(losses[1]), float(losses[2]), schedule.get_last_lr()[0], 0.0)

    def report_bare() -> None:
        torch.stack([torch.ones(())] * 3)

    extras = {
        "batch + prepare_flow_step": _best_us(data_step, 50),
        "accelerator.autocast()": _best_us(with_autocast, 2000),
        "accelerator.backward": _best_us(lambda: accelerator.backward((weight * 2).sum()), 500)
        - _best_us(lambda: (weight * 2).sum().backward(), 500),
        "LambdaLR.step": _best_us(schedule.step, 2000),
        "reduce + float + StepInfo": _best_us(report, 2000) - _best_us(report_bare, 2000),
    }
    extras["total"] = sum(extras.values())
    return extras


def profile_lines(profile: dict) -> list[str]:
    lines = [
        (f"  cProfile of {profile['steps']} steady-state steps, best of {profile['repeat']} runs each "
         f"(profiler overhead included): engine {profile['ms_per_step_engine']:.2f}, "
         f"bare {profile['ms_per_step_bare']:.2f} ms/step"),
        ("    functions only the engine calls, cumulative ms per step (wrappers such as accelerator.backward "
         "include the shared work they wrap):"),
    ]
    for r in profile["engine_only_cumulative_top"][:10]:
        lines.append(f"      {r['cum_ms_engine']:6.3f}  ({r['calls_engine']:.0f} calls) {r['function']}")
    lines.append("    largest own-time differences engine - bare, ms per step:")
    for r in profile["own_time_diff_top"][:10]:
        diff = r["own_ms_engine"] - r["own_ms_bare"]
        calls = f"{r['calls_engine']:.0f} vs {r['calls_bare']:.0f}"
        lines.append(f"      {diff:+6.3f}  ({calls} calls) {r['function']}")
    return lines


# -------------------------------------------------------------------------------------------- report


def summary_lines(results: dict) -> list[str]:
    env = results["environment"]
    lines = [
        (f"tiny preset, LoRA rank {RANK}, batch 1, fp32 on CPU ({env['torch_threads']} torch threads, "
         f"{env['cpu_count']} CPUs); load average {results['load_before']:.1f} before, "
         f"{results['load_after']:.1f} after"),
        (f"{results['steps']} timed steps after {results['warmup']} warm-up steps per run, "
         f"{results['repeat']} interleaved rounds (engine-bare, bare-engine, ...); steps/s from "
         "optimizer-step timestamps"),
    ]
    for r in results["sizes"]:
        e, b, extras = r["engine"], r["bare"], r["engine_extras_us"]
        robust_e = 1000 / r["engine_median_step"]["median"]
        robust_b = 1000 / r["bare_median_step"]["median"]
        pieces = ", ".join(f"{k} {v:.0f}" for k, v in extras.items() if k != "total")
        verdict = "MET" if r["meets_target"] else "NOT MET"
        lines += [
            (f"17 frames {r['size']}x{r['size']} ({r['video_tokens']} video + {r['audio_tokens']} audio + "
             f"{r['text_tokens']} text tokens; latents {r['shapes']['video']}):"),
            f"  engine  best {e['best']:6.2f}  median {e['median']:6.2f} steps/s",
            f"  bare    best {b['best']:6.2f}  median {b['median']:6.2f} steps/s",
            (f"  ratio engine/bare: median {r['ratio_median']:.3f}, best {r['ratio_best']:.3f}, median of "
             f"per-round ratios {r['ratio_per_round_median']:.3f}  (target >= {TARGET_RATIO}) {verdict}"),
            (f"  robust to load bursts (1 / median step interval, median over rounds): engine "
             f"{robust_e:.1f} ms, bare {robust_b:.1f} ms per step, ratio {r['ratio_median_step']:.3f}"),
            (f"  engine whole call incl. set-up and LoRA read-out: median "
             f"{r['engine_whole_call']['median']:.2f} steps/s"),
            (f"  engine-only work per step, timed piece by piece (best of 7): {extras['total']:.0f} us "
             f"= {pieces}; bare median step + this → expected ratio {r['ratio_from_extras']:.3f}"),
        ]
        if "profile" in r:
            lines += profile_lines(r["profile"])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"), help="output folder (%(default)s)")
    parser.add_argument("--sizes", default="256,512", help="clip sizes in pixels, comma-separated "
                        "(%(default)s)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps at the start of a run (%(default)s)")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved rounds (%(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile engine and bare runs of every size")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first stamp opens the timing window)")

    environment = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "python": platform.python_version(), "torch": torch.__version__,
                   "platform": platform.platform()}
    print("  ".join(f"{k} {v}" for k, v in environment.items()), flush=True)
    components = build_tiny_components(SEED)
    pristine = components.transformer  # never trained: every run gets a deep copy
    clock = StepClock()
    results = {"environment": environment, "steps": args.steps, "warmup": args.warmup, "repeat": args.repeat,
               "load_before": os.getloadavg()[0], "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        results["sizes"].append(measure_size(components, pristine, size, args, clock))
    results["load_after"] = os.getloadavg()[0]
    lines = summary_lines(results)
    results["summary"] = lines
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_train.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\n" + "\n".join(lines) + f"\n\nfull results: {path}")


if __name__ == "__main__":
    main()
