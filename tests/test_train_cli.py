"""`ltx2trainer train` and `ltx2trainer sample` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx2trainer.model.lora import BASE_MODEL_METADATA_KEY, read_lora_base_model
from ltx2trainer.model.tiny import build_tiny_components
from tests.mediagen import make_image, prepared_dataset, video_facts

CLI = [sys.executable, "-m", "ltx2trainer.cli"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    prepared_dataset(root, {"a": ("smptebars", 440, "colour bars")}, number_of_frames=17, width=128, height=128,
                     trigger_phrase="sks")
    build_tiny_components(0).save(root / "model")
    make_image(root / "first.png", size=(300, 200))
    return root


@pytest.mark.slow
def test_train_produces_lora_config_and_validation_video_from_weights_on_disk(prepared, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([
        *CLI, "train", str(prepared / "ds"), "--out", str(out), "--model", str(prepared / "model"),
        "--number-of-steps", "100", "--rank", "8", "--learning-rate", "0.001",
        "--validation-prompt", "sks colour bars", "--validation-image", str(prepared / "first.png"),
        "--validation-resolution", "low", "--validation-aspect-ratio", "16:9",
        "--validation-number-of-frames", "10", "--stg-scale", "1.5",
    ], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "validation-number-of-frames 10 → 9" in run.stderr
    for name in ("lora.safetensors", "lora_comfyui.safetensors", "config.json", "validation.mp4"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["trigger_phrase"] == "sks"  # taken from how the dataset was prepared
    base = config["base_model"]
    assert (base["family"], base["version"], base["format"], base["source"], base["file_name"]) == \
        ("ltx-2", "2.0", "diffusers", "model", "model")  # names, not the machine's paths
    assert read_lora_base_model(out / "lora.safetensors") == base  # from the file's own metadata
    assert config["lora"]["dtype"] == "bf16"  # the default
    for name in ("lora.safetensors", "lora_comfyui.safetensors"):
        assert {t.dtype for t in load_file(str(out / name)).values()} == {torch.bfloat16}, name
    assert config["training_input"]["validation"][0]["image_url"] == str(prepared / "first.png")
    assert config["training"]["steps"] == 100
    facts = video_facts(out / "validation.mp4")
    assert (facts["width"], facts["height"]) == (512, 288)
    assert facts["frames"] == 9 * 4  # validated at 25, 50, 75 and 100 steps
    assert facts["audio_streams"] == 1

    sample = tmp_path / "sample.mp4"
    run = subprocess.run([
        *CLI, "sample", "--lora", str(out / "lora.safetensors"), "--model", str(prepared / "model"),
        "--prompt", "sks colour bars", "--out", str(sample), "--resolution", "low", "--number-of-frames", "9",
    ], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "note:" not in run.stderr  # its base model is known and matches
    sampled = video_facts(sample)
    assert (sampled["frames"], sampled["width"], sampled["height"]) == (9, 512, 512)


def test_train_refuses_a_folder_that_was_not_prepared(tmp_path):
    run = subprocess.run([*CLI, "train", str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 1 and "not a prepared dataset" in run.stderr


def test_train_names_invalid_options(prepared, tmp_path):
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(tmp_path / "o"), "--rank", "12"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "invalid rank" in run.stderr


def test_train_rejects_an_unknown_lora_dtype(prepared, tmp_path):
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(tmp_path / "o"), "--lora-dtype", "fp16"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "fp16" in run.stderr


@pytest.mark.parametrize(("option", "expected"), [
    (["--base-precision", "fp8"],
     "error (unsupported_hardware): fp8 base precision needs a GPU with fp8 support (compute capability 8.9+, "
     "e.g. L40S, H100); use int8"),
    (["--optimizer", "adamw8bit"],
     "error (unsupported_hardware): optimizer adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit AdamW has CUDA "
     "kernels only) and this run is on the CPU; use optimizer adamw"),
])
def test_train_refuses_what_this_machine_cannot_run_before_loading_anything(prepared, tmp_path, option, expected):
    out = tmp_path / "o"
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(out), "--model", "tiny", *option],
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert expected in " ".join(run.stderr.split()), run.stderr[-2000:]  # (rich wraps long lines)
    assert not out.exists()  # refused before encoding


def test_train_takes_a_holdout_fraction_and_refuses_one_that_leaves_nothing_to_train_on(prepared, tmp_path):
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(tmp_path / "o"), "--model", "tiny",
                          "--holdout-fraction", "0.5"], capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert ("error (invalid_input): holdout_fraction 0.5 holds out 1 of the dataset's 1 sample, leaving none to "
            "train on") in " ".join(run.stderr.split()), run.stderr[-2000:]
    assert not (tmp_path / "o").exists()  # refused before loading the model and encoding
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(tmp_path / "o"),
                          "--holdout-fraction", "0.6"], capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 2 and "holdout-fraction" in run.stderr


def test_train_names_an_unknown_base_precision_or_accumulation(prepared, tmp_path):
    for option in (["--base-precision", "int4"], ["--gradient-accumulation-steps", "0"]):
        run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(tmp_path / "o"), *option],
                             capture_output=True, text=True, check=False, timeout=120)
        assert run.returncode == 2 and option[0] in run.stderr, run.stderr[-2000:]


# --- the base model: bad files are named before anything loads; a LoRA of another version is refused ------------

LTX2_KEYS = ("model.diffusion_model.audio_adaln_single.linear.weight",
             "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight")


def official_looking(path: Path, *, keys=LTX2_KEYS, config: dict | None = None) -> Path:
    """A small safetensors file shaped like Lightricks' single-file checkpoints (JSON `config` metadata)."""
    metadata = {"config": json.dumps(config if config is not None else {"transformer": {}, "vae": {}})}
    save_file({key: torch.zeros(4, 4) for key in keys}, str(path), metadata=metadata)
    return path


def crafted_model(kind: str, folder: Path) -> tuple[Path, str]:
    """(a bad model file, what the error must say)."""
    if kind == "random":
        path = folder / "weights.safetensors"
        save_file({"encoder.layer.0.weight": torch.zeros(8, 8)}, str(path))
        return path, "weights.safetensors has no `config` in its safetensors metadata: not an official LTX-2 checkpoint"
    if kind == "not-ltx2":
        path = official_looking(folder / "ltxv-0.9.safetensors",
                                keys=("model.diffusion_model.adaln_single.linear.weight",))
        return path, "ltxv-0.9.safetensors is an LTX-Video (0.9.x) checkpoint: it has no audio stream"
    if kind == "truncated":
        path = official_looking(folder / "ltx-2-19b-dev.safetensors")
        data = path.read_bytes()
        path.write_bytes(data[:-20])
        return path, "ltx-2-19b-dev.safetensors is truncated"
    path = official_looking(folder / "ltx-2-19b-dev.safetensors")
    return path, "is an official single-file checkpoint: it holds no text encoder. Name the Gemma-3 folder with --text-encoder"


@pytest.mark.parametrize("kind", ["random", "not-ltx2", "truncated", "no-text-encoder"])
def test_sample_names_what_is_wrong_with_the_model_at_once(kind, tmp_path):
    model, expected = crafted_model(kind, tmp_path)
    run = subprocess.run([*CLI, "sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "x.mp4")],
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "error (model_error):" in run.stderr and expected in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "x.mp4").exists()


def test_train_names_a_bad_model_and_reads_the_text_encoder_setting(prepared, tmp_path):
    model, expected = crafted_model("no-text-encoder", tmp_path)
    out = tmp_path / "o"
    run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(out), "--model", str(model)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 1 and "error (model_error):" in run.stderr and expected in run.stderr, run.stderr
    # --text-encoder (or LTX2T_TEXT_ENCODER) is checked too: a folder that is not Gemma's is named
    env_run = subprocess.run([*CLI, "train", str(prepared / "ds"), "--out", str(out), "--model", str(model)],
                             capture_output=True, text=True, check=False, timeout=60,
                             env={**_env_without_ltx2t(), "LTX2T_TEXT_ENCODER": str(tmp_path)})
    assert env_run.returncode == 1, env_run.stderr
    assert f"text encoder folder {tmp_path} has no config.json" in env_run.stderr
    assert not out.exists()  # nothing was started


def _env_without_ltx2t() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("LTX2T_")}


def fabricated_lora(path: Path, base: dict | None) -> Path:
    """A LoRA file in diffusers' layout whose metadata says it was trained on `base` (None: says nothing)."""
    metadata = {"format": "pt"}
    if base is not None:
        metadata[BASE_MODEL_METADATA_KEY] = json.dumps(base)
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(8, 32),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 8)},
              str(path), metadata=metadata)
    return path


def test_sample_refuses_a_lora_trained_on_another_ltx2_version(tmp_path):
    lora = fabricated_lora(tmp_path / "lora.safetensors", {
        "family": "ltx-2", "version": "2.3", "format": "official", "source": "/models/ltx-2.3-22b-dev.safetensors",
        "file_name": "ltx-2.3-22b-dev.safetensors", "size_bytes": 1, "header_sha256": "0" * 64,
        "quantization": None, "text_encoder": "/models/gemma"})
    run = subprocess.run([*CLI, "sample", "--model", "tiny", "--lora", str(lora), "--prompt", "x",
                          "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 1, run.stderr[-2000:]
    assert ("this LoRA was trained on LTX-2.3 (ltx-2.3-22b-dev.safetensors); the model is LTX-2.0 (tiny)"
            in run.stderr), run.stderr[-2000:]
    assert not (tmp_path / "x.mp4").exists()


def test_sample_reads_the_version_from_a_config_json_beside_a_lora_without_metadata(tmp_path):
    lora = fabricated_lora(tmp_path / "lora.safetensors", None)
    (tmp_path / "config.json").write_text(json.dumps({"base_model": {
        "family": "ltx-2", "version": "2.3", "format": "preset", "source": "tiny-2.3"}}))
    run = subprocess.run([*CLI, "sample", "--model", "tiny", "--lora", str(lora), "--prompt", "x",
                          "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 1 and "trained on LTX-2.3 (tiny-2.3); the model is LTX-2.0 (tiny)" in run.stderr, \
        run.stderr[-2000:]


@pytest.mark.slow
def test_sample_accepts_a_lora_that_records_no_base_model_with_a_note(tmp_path):
    lora = fabricated_lora(tmp_path / "foreign.safetensors", None)  # e.g. made by another trainer
    out = tmp_path / "x.mp4"
    run = subprocess.run([*CLI, "sample", "--model", "tiny", "--lora", str(lora), "--prompt", "x", "--out", str(out),
                          "--resolution", "low", "--number-of-frames", "9", "--no-audio"],
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "note: foreign.safetensors does not say which base model it was trained on" in run.stderr
    assert out.is_file()
