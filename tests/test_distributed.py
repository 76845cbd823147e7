"""Training under `accelerate launch` with two CPU processes (DDP over gloo) gives a valid, learning LoRA
(exported in fp32 here, as `--lora-dtype fp32` asks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import LTX2Pipeline
from safetensors.torch import load_file

from ltx2trainer.model.tiny import build_tiny_components
from tests.mediagen import prepared_dataset

ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.slow
def test_two_cpu_processes_train_a_valid_lora_with_falling_loss(tmp_path):
    prepared_dataset(tmp_path, {name: (source, 440, f"a {name} test clip") for name, source in
                                (("bars", "smptebars"), ("pattern", "testsrc2"), ("rgb", "rgbtestsrc"))},
                     number_of_frames=17, width=128, height=128)
    run = _launch(tmp_path / "ds", tmp_path / "out")
    assert run.returncode == 0, run.stderr[-3000:]

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    training = config["training"]
    assert training["processes"] == 2 and training["steps"] == 100
    assert training["loss_last_10"] < 0.8 * training["loss_first_10"], training
    assert config["lora"]["dtype"] == "fp32"  # as asked (bf16 is the default)
    for name in ("lora.safetensors", "lora_comfyui.safetensors"):
        assert {t.dtype for t in load_file(str(tmp_path / "out" / name)).values()} == {torch.float32}, name

    base = tmp_path / "base"
    build_tiny_components(0).save(base)
    pipe = LTX2Pipeline.from_pretrained(str(base))
    pipe.load_lora_weights(str(tmp_path / "out" / "lora.safetensors"))
    assert pipe.transformer.peft_config["default_0"].r == 8


def _launch(dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`ltx2trainer train` under `accelerate launch` with two CPU processes, 100 steps of a rank-8 LoRA.

    --multi_gpu makes accelerate spawn the processes with torchrun; with no GPU, Accelerate then sets them up
    as MULTI_CPU over gloo (its --cpu flag alone runs one process)."""
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "ltx2trainer.cli", "train", str(dataset), "--out", str(out),
               "--number-of-steps", "100", "--rank", "8", "--learning-rate", "0.002",
               "--first-frame-conditioning-p", "0", "--lora-dtype", "fp32", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.slow
def test_fsdp_shards_the_transformer_and_trains_exactly_like_ddp(tmp_path):
    """Two gloo processes, each holding half of every transformer tensor (FSDP2), give the loss curve and
    the LoRA of two DDP processes (same data and noise per process), with validation videos on the way.

    DDP is the reference rather than one process: two processes draw different samples and noise than one
    does, so only the sharding may differ between the two runs compared.
    """
    prepared_dataset(tmp_path, {name: (source, 440, f"a {name} test clip")
                                for name, source in (("bars", "smptebars"), ("pattern", "testsrc2"))},
                     seconds=0.6, number_of_frames=9, width=128, height=128)

    runs = {}
    for sharding in ("ddp", "fsdp"):
        out = tmp_path / sharding
        run = _launch(tmp_path / "ds", out, "--sharding", sharding, "--validation-prompt", "a bars test clip",
                      "--validation-resolution", "low", "--validation-number-of-frames", "9")
        assert run.returncode == 0, run.stderr[-3000:]
        config = json.loads((out / "config.json").read_text())
        assert config["training"]["sharding"] == sharding and config["training"]["processes"] == 2
        assert (out / "validation.mp4").exists()  # validation ran under both (all processes in lockstep for FSDP)
        runs[sharding] = config["training"], load_file(str(out / "lora.safetensors"))

    (ddp, ddp_lora), (fsdp, fsdp_lora) = runs["ddp"], runs["fsdp"]
    for key in ("loss_first_10", "loss_last_10", "final_loss"):
        assert fsdp[key] == pytest.approx(ddp[key], rel=1e-5), key
    assert fsdp["loss_last_10"] < 0.9 * fsdp["loss_first_10"]
    assert fsdp_lora.keys() == ddp_lora.keys()
    worst = max((fsdp_lora[k] - ddp_lora[k]).abs().max().item() for k in ddp_lora)
    assert worst < 1e-5, worst  # measured ~1e-7: summation order only


def test_each_fsdp_process_holds_the_share_the_planner_predicts():
    """Two gloo processes shard the tiny transformer as the engine does: each holds half of the base, the LoRA
    and the optimizer state, which is what `ltx2trainer plan --shards 2` counts per GPU."""
    from ltx2trainer.planning import MemoryRequest, MemorySettings, estimate
    from ltx2trainer.planning.dims import TINY

    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("fsdp_shares.py"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORA_RANK": "16",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    shares = [json.loads(line.removeprefix("SHARES ")) for line in run.stdout.splitlines()
              if line.startswith("SHARES ")]
    assert sorted(share["rank"] for share in shares) == [0, 1] and all(share["sharded"] for share in shares)
    request = MemoryRequest(frames=25, width=512, height=512, rank=16, validation=False)
    whole = estimate(request, TINY, MemorySettings(base_precision="fp32", gpu=False))["train"].terms
    half = estimate(request, TINY, MemorySettings(base_precision="fp32", gpu=False, shards=2))["train"].terms
    assert sum(share["base"] for share in shares) == whole["transformer_weights"]  # nothing held twice
    for share in shares:
        assert share["base"] == pytest.approx(half["transformer_weights"], rel=0.01)  # FSDP pads rows to 2
        assert share["lora"] == half["lora_weights"] and share["optimizer"] == half["optimizer_state"]
    assert half["transformer_weights"] < whole["transformer_weights"] / 1.9


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_to_the_lora_of_a_straight_one(tmp_path):
    """Both processes of a sharded run die hard after step 7 (checkpoint at 5); run again, the job resumes from
    step 5 (the sharded optimizer state scattered back) and ends with the LoRA and losses of an unbroken run."""
    from ltx2trainer.model.presets import load_model
    from ltx2trainer.pipeline.encode import encode_dataset

    dataset = prepared_dataset(tmp_path, {"bars": ("smptebars", 440, "a bars clip"),
                                          "pattern": ("testsrc2", 660, "a pattern clip")},
                               seconds=0.6, number_of_frames=9, width=128, height=128)
    encode_dataset(dataset, tmp_path / "cache", load_model("tiny"))
    script = str(Path(__file__).with_name("fsdp_resume.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}

    def torchrun(checkpoints: str, result: str, *extra: str) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                   script, str(dataset), str(tmp_path / "cache"), str(tmp_path / checkpoints),
                   str(tmp_path / result), "12", *extra]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)

    straight = torchrun("straight", "straight.pt")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = torchrun("broken", "never.pt", "7")
    assert killed.returncode != 0 and not (tmp_path / "never.pt").exists()
    assert sorted(p.name for p in (tmp_path / "broken").iterdir()) == ["step_000005"]
    resumed = torchrun("broken", "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    assert b["resumed_from"] == 5 and a["resumed_from"] is None
    assert b["losses"] == pytest.approx(a["losses"][5:], rel=1e-5)
    assert a["lora"].keys() == b["lora"].keys()
    worst = max((a["lora"][k] - b["lora"][k]).abs().max().item() for k in a["lora"])
    assert worst < 1e-5, worst
