"""Training on official single-file checkpoints (LTX-2.0 and LTX-2.3) through the CLI, and the LoRA it ships
fused by Lightricks' own ltx-core: every key matched, the same weights and the same outputs as ours.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ltx2trainer.model.lora import ORIGINAL_PREFIX
from ltx2trainer.model.presets import load_model
from tests.ltxcore_ref import diffusers_transformer_kwargs, transformer_inputs
from tests.mediagen import prepared_dataset, video_facts
from tests.official_ckpt import fuse_lora_ltxcore, write_tiny_gemma_folder, write_tiny_official_checkpoint

CLI = [sys.executable, "-m", "ltx2trainer.cli"]
# ltx-core fuses into bf16 weights only: the fused weight is W + B·A rounded to bf16 once.
WEIGHT_ULP = 2.0 ** -8  # bf16's relative rounding step
DELTA_TOLERANCE = 0.25  # the fused change vs. B·A: bf16 rounding of W dominates (deltas are ~5 % of W here)
OUTPUT_TOLERANCE = 5e-3  # relative: ltx-core fuses into bf16 weights, we run fp32 + adapter (measured ~1.5e-3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("official-train")
    prepared_dataset(root, {"a": ("smptebars", 440, "colour bars")}, number_of_frames=9, width=64, height=64,
                     trigger_phrase="sks")
    return root, write_tiny_gemma_folder(root / "gemma")


@pytest.fixture(scope="module", params=["2.0", "2.3"])
def trained(request, setup):
    """A LoRA trained by `ltx2trainer train` on a tiny official file of each version."""
    root, gemma = setup
    version = request.param
    checkpoint = write_tiny_official_checkpoint(root / f"ltx-{version}-tiny.safetensors", version, seed=5)
    out = root / f"out-{version}"
    run = subprocess.run([
        *CLI, "train", str(root / "ds"), "--out", str(out), "--model", str(checkpoint), "--text-encoder", str(gemma),
        "--number-of-steps", "100", "--rank", "8", "--learning-rate", "0.002",
        "--validation-prompt", "sks colour bars", "--validation-resolution", "low",
        "--validation-number-of-frames", "9",
    ], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return version, checkpoint, gemma, out


def test_train_on_official_checkpoint_records_its_base(trained):
    version, checkpoint, _, out = trained
    config = json.loads((out / "config.json").read_text())
    base = config["base_model"]
    assert (base["family"], base["version"], base["format"]) == ("ltx-2", version, "official")
    assert base["file_name"] == checkpoint.name and base["size_bytes"] == checkpoint.stat().st_size
    assert len(base["header_sha256"]) == 64
    assert base["source"] == checkpoint.name and base["text_encoder"] == "gemma"  # no server paths
    facts = video_facts(out / "validation.mp4")
    assert facts["frames"] == 9 * 4 and facts["audio_streams"] == 1


def test_comfyui_lora_fuses_into_ltxcore_with_every_key_matched(trained):
    _, checkpoint, gemma, out = trained
    lora_file = out / "lora_comfyui.safetensors"
    lora = load_file(str(lora_file))
    fused, matched, total = fuse_lora_ltxcore(checkpoint, lora_file)
    assert total == len(lora) > 0
    assert matched == total, f"ltx-core matched {matched} of {total} LoRA keys"

    # The fused weights are W + B·A of our adapter, to bf16 rounding: within one bf16 step of the tensor's
    # largest value, and the change ltx-core made (fused − W) is B·A itself, not a transposed, scaled or
    # misplaced delta (those would be off by about 100 %, not a few).
    base = {k: v.float() for k, v in load_file(str(checkpoint)).items()}
    fused_state = fused.state_dict()
    checked = 0
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(ORIGINAL_PREFIX):-len(".lora_A.weight")]
        a, b = lora[key].float(), lora[key.replace("lora_A", "lora_B")].float()
        weight, delta = base[f"model.diffusion_model.{module}.weight"], b @ a
        got = fused_state[f"{module}.weight"].float()
        assert (got - (weight + delta)).abs().max() <= WEIGHT_ULP * (weight + delta).abs().max(), module
        assert ((got - weight) - delta).abs().max() < DELTA_TOLERANCE * delta.abs().max(), module
        checked += 1
    assert checked == total // 2


def test_fused_official_model_matches_ours_with_the_adapter(trained):
    _, checkpoint, gemma, out = trained
    fused, _, _ = fuse_lora_ltxcore(checkpoint, out / "lora_comfyui.safetensors")
    fused = fused.float()
    ours = load_model(str(checkpoint), device=torch.device("cpu"), dtype=torch.float32, text_encoder=str(gemma))
    video, audio, perturbations = transformer_inputs(json.loads(_metadata(checkpoint)), batch=1, latent_frames=2)
    kwargs = diffusers_transformer_kwargs(video, audio)
    with torch.no_grad():
        base_video, _ = ours.transformer(**kwargs)
        ours.pipeline().load_lora_weights(str(out / "lora.safetensors"))
        our_video, our_audio = ours.transformer(**kwargs)
        ref_video, ref_audio = fused(video, audio, perturbations)
    scale = ref_video.abs().max()
    error = ((our_video - ref_video).abs().max() / scale).item()
    effect = ((our_video - base_video).abs().max() / scale).item()
    assert error < OUTPUT_TOLERANCE, error
    assert effect > 5 * error, (effect, error)  # the adapter visibly changes the output, and ltx-core agrees
    assert ((our_audio - ref_audio).abs().max() / ref_audio.abs().max()).item() < OUTPUT_TOLERANCE


def _metadata(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["config"]


@pytest.mark.slow
def test_the_service_trains_on_an_official_checkpoint(setup, tmp_path):
    """A worker configured with LTX2T_MODEL / LTX2T_TEXT_ENCODER runs a job on an LTX-2.3 single file."""
    from ltx2trainer.jobs.models import JobStatus
    from ltx2trainer.schemas import TrainingInput
    from ltx2trainer.settings import Settings
    from ltx2trainer.wiring import Services
    from ltx2trainer.worker.runner import execute_job
    from tests.live_service import FAST_JOB, tiny_dataset_url

    root, gemma = setup
    checkpoint = write_tiny_official_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=6)
    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                                 model=str(checkpoint), text_encoder=str(gemma)))
    body = TrainingInput.model_validate({**FAST_JOB, "training_data_url": tiny_dataset_url(tmp_path / "media")})
    job, _ = services.lifecycle.submit("alice", body.model_dump(mode="json"))
    assert execute_job(job.id, services.settings, worker_id="w1", services=services) == "succeeded"
    job = services.store.get(job.id)
    assert job.status == JobStatus.SUCCEEDED
    logs = [line["message"] for line in services.store.last_logs(job.id, 100)]
    assert f"base model: ltx-2 2.3 (official: {checkpoint.name})" in logs
    with services.storage.open(job.output["config_file"]["key"]) as handle:
        base = json.load(handle)["base_model"]
    assert (base["version"], base["format"], base["file_name"]) == ("2.3", "official", checkpoint.name)
    with services.storage.open(job.output["lora_comfyui_file"]["key"]) as handle:
        lora_file = tmp_path / "lora_comfyui.safetensors"
        lora_file.write_bytes(handle.read())
    _, matched, total = fuse_lora_ltxcore(checkpoint, lora_file)
    assert matched == total > 0
