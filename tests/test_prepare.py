"""prepare end to end: the manifest contract, resuming, parallel workers, cancel, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltx2trainer.errors import JobCancelled, UserInputError
from ltx2trainer.pipeline.preprocess import PrepareOptions, prepare_dataset, read_manifest
from ltx2trainer.pipeline.preprocess.manifest import MANIFEST_NAME
from tests.mediagen import make_image, make_video, make_zip, read_wav, video_facts

CLI = [sys.executable, "-m", "ltx2trainer.cli"]


@pytest.fixture
def upload(tmp_path) -> Path:
    """A user's zip: two captioned clips with sound in a folder, one inside a nested zip, one too short."""
    a = make_video(tmp_path / "a.mp4", seconds=1.5, fps=30, size=(320, 240), tone_hz=440)
    b = make_video(tmp_path / "b.mov", seconds=1.2, fps=24, size=(240, 320), tone_hz=660)
    short = make_video(tmp_path / "short.mp4", seconds=0.3, tone_hz=550)
    inner = make_zip(tmp_path / "inner.zip", {"b.mov": b, "b.txt": "a tall clip"})
    return make_zip(tmp_path / "upload.zip", {
        "clips/a.mp4": a, "clips/a.txt": "a test pattern", "more.zip": inner, "short.mp4": short,
    })


def test_manifest_rows_follow_the_dataset_contract(upload, prepare):
    result = prepare(upload, number_of_frames=25, trigger_phrase="TOK")
    rows = read_manifest(result.out_dir)
    assert rows == result.rows
    assert [row.source for row in rows] == ["clips/a.mp4", "more/b.mov"]
    for row in rows:
        assert row.kind == "video" and row.scene is None
        assert (row.width, row.height, row.frames, row.fps) == (512, 512, 25, 25.0)
        assert row.audio_sample_rate == 16_000 and row.audio_peak == pytest.approx(0.999, abs=0.001)
        assert video_facts(result.out_dir / row.media)["frames"] == 25
        samples, rate = read_wav(result.out_dir / row.audio)
        assert samples.shape == (2, rate)  # exactly as long as the video: 25 frames / 25 fps
    assert [row.caption for row in rows] == ["TOK a test pattern", "TOK a tall clip"]
    with open(result.out_dir / MANIFEST_NAME, encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {"id", "source", "scene", "media", "kind", "caption", "width", "height", "frames", "fps",
                          "audio", "audio_sample_rate", "audio_peak"}
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["counts"] == {"media_files": 3, "clips_in": 3, "scenes": 0, "samples_out": 2, "reused": 0,
                                "skipped": 1}
    assert report["skipped"][0]["source"] == "short.mp4"


def test_rerunning_skips_finished_clips(upload, prepare):
    first = prepare(upload, number_of_frames=25)
    stamps = {row.id: os.stat(first.out_dir / row.media).st_mtime_ns for row in first.rows}
    second = prepare(upload, number_of_frames=25)
    assert second.counts.reused == 2
    assert second.rows == first.rows
    assert {row.id: os.stat(second.out_dir / row.media).st_mtime_ns for row in second.rows} == stamps


def test_an_interrupted_run_is_completed_on_the_next_run(upload, prepare):
    first = prepare(upload, number_of_frames=25)
    lost = first.rows[1]
    (first.out_dir / lost.media).unlink()  # as if the worker died before this clip's video was renamed
    (first.out_dir / "media" / f".{lost.id}.mp4.tmp-999.mp4").write_bytes(b"half a video")
    (first.out_dir / MANIFEST_NAME).unlink()
    second = prepare(upload, number_of_frames=25)
    assert second.counts.reused == 1
    assert second.rows == first.rows
    assert video_facts(second.out_dir / lost.media)["frames"] == 25


def test_changed_options_remake_the_samples(upload, prepare):
    prepare(upload, number_of_frames=25)
    again = prepare(upload, number_of_frames=17)
    assert again.counts.reused == 0
    assert all(video_facts(again.out_dir / row.media)["frames"] == 17 for row in again.rows)


def test_a_failed_rerun_leaves_no_stale_manifest(upload, prepare, tmp_path):
    result = prepare(upload, number_of_frames=25)
    with pytest.raises(UserInputError):
        prepare(upload, number_of_frames=121)  # nothing is 4.84 s long
    assert not (result.out_dir / MANIFEST_NAME).exists()
    assert json.loads((result.out_dir / "report.json").read_text())["error"]["code"] == "no_usable_clips"


def test_nothing_long_enough_is_refused_with_advice(upload, prepare):
    with pytest.raises(UserInputError) as caught:
        prepare(upload, number_of_frames=121)
    message = caught.value.message
    assert "3 too short" in message and "4.84 s" in message and "auto_scale_input" in message


def test_parallel_workers_produce_the_same_dataset(tmp_path, upload, prepare):
    serial = prepare(upload, out=tmp_path / "serial", number_of_frames=25)
    parallel = prepare(upload, out=tmp_path / "parallel", number_of_frames=25, workers=2)
    assert parallel.rows == serial.rows and len(serial.rows) == 2  # not two empty datasets alike
    for row in serial.rows:
        assert video_facts(parallel.out_dir / row.media) == video_facts(serial.out_dir / row.media)


def test_cancel_stops_preparation(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        make_video(folder / f"{i}.mp4", seconds=1)
    with pytest.raises(JobCancelled):
        prepare_dataset(folder, tmp_path / "out", PrepareOptions(number_of_frames=9), cancel=lambda: True)


def test_images_dataset(tmp_path, prepare):
    archive = make_zip(tmp_path / "s.zip", {
        "one.png": make_image(tmp_path / "one.png"), "two.jpg": make_image(tmp_path / "two.jpg"),
        "two.txt": "second image",
    })
    result = prepare(archive, trigger_phrase="TOK")
    assert [(row.source, row.kind, row.frames, row.caption) for row in result.rows] == [
        ("one.png", "image", 1, "TOK"), ("two.jpg", "image", 1, "TOK second image"),
    ]
    assert all(row.media.endswith(".png") for row in result.rows)


def test_cli_prepares_a_zip_and_prints_a_summary(tmp_path, upload):
    out = tmp_path / "cli-out"
    run = subprocess.run(
        [*CLI, "prepare", str(upload), "--out", str(out), "--number-of-frames", "26", "--resolution", "low",
         "--aspect-ratio", "16:9", "--trigger-phrase", "TOK", "--workers", "2"],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "number-of-frames 26 → 25" in run.stderr
    assert "samples out" in run.stderr and "skipped short.mp4" in run.stderr
    rows = read_manifest(out)
    assert len(rows) == 2 and all((row.width, row.height, row.frames) == (512, 288, 25) for row in rows)


def test_cli_names_invalid_options(tmp_path, upload):
    run = subprocess.run([*CLI, "prepare", str(upload), "--out", str(tmp_path / "o"), "--frame-rate", "100"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "frame-rate" in run.stderr and "60" in run.stderr


def test_cli_reports_a_bad_upload_clearly(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"this is not a zip")
    run = subprocess.run([*CLI, "prepare", str(bogus), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert "invalid_archive" in run.stderr and "not a readable zip" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_demo_command_prepares_the_sample_dataset_and_trains_a_lora(tmp_path):
    run = subprocess.run([*CLI, "demo", "--local", "--out", str(tmp_path / "demo")], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stderr
    rows = read_manifest(tmp_path / "demo" / "dataset")
    assert len(rows) == 7  # three clips and the four scenes of the long video
    assert sum(row.scene is not None for row in rows) == 4
    assert all(row.caption.startswith("DEMO ") and row.audio for row in rows)
    lora = tmp_path / "demo" / "lora"
    for name in ("lora.safetensors", "lora_comfyui.safetensors", "config.json", "validation.mp4"):
        assert (lora / name).stat().st_size > 0, name
    training = json.loads((lora / "config.json").read_text())["training"]
    assert training["steps"] == 100 and training["samples"] == 7
    assert video_facts(lora / "validation.mp4")["audio_streams"] == 1
