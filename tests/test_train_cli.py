"""`ltx2trainer train` and `ltx2trainer sample` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.pipeline.preprocess import PrepareOptions, prepare_dataset
from tests.mediagen import make_image, make_video, video_facts

CLI = [sys.executable, "-m", "ltx2trainer.cli"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    clips = root / "clips"
    clips.mkdir()
    make_video(clips / "a.mp4", seconds=1.0, source="smptebars", tone_hz=440)
    (clips / "a.txt").write_text("colour bars")
    prepare_dataset(clips, root / "ds", PrepareOptions(number_of_frames=17, width=128, height=128,
                                                       trigger_phrase="sks"))
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
    assert config["base_model"] == str(prepared / "model")
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
