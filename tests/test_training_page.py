"""A training's page (`/dashboard/trainings/{id}`) in a real browser (headless Chromium from Debian).

A finished job is seeded through the real Lifecycle, ledger and metrics table: 100 billed steps, a metrics row per
step with a falling loss, three checkpoints (25, 50, 75) with their files in the real storage and real H.264 clips
(the checkpoints' made by ffmpeg, the output's by the pipeline's own PyAV writer, H.264 High + AAC, as the service
publishes them), then its output. The page is read from Chromium's rendered DOM (`--dump-dom`).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn

from ltx2trainer.api import create_app
from ltx2trainer.billing.ledger import initial_usage, record_steps
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.jobs.metrics import metric_row, record_metrics
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.settings import Settings
from ltx2trainer.storage import job_prefix
from ltx2trainer.wiring import Services
from tests.live_service import free_port
from tests.test_dashboard import (
    ARTIFACTS,
    CHROMIUM,
    assert_asks_for_a_key,
    assert_not_found,
    chromium,
    rendered,
    rendered_media,
)

pytestmark = pytest.mark.skipif(CHROMIUM is None or shutil.which("ffmpeg") is None,
                                reason="scripts/setup.sh installs ffmpeg, scripts/test.sh Debian's chromium")
PRICE = Decimal("0.0048")
STEPS = 100
CHECKPOINTS = (25, 50, 75)
HOLDOUT = {25: 0.61, 75: 0.43}  # 50 was published without a held-out loss
CLIPS = (50, 75)  # 25 without a validation clip
INPUT = {"training_data_url": "https://example.com/d.zip", "number_of_steps": STEPS, "rank": 16,
         "learning_rate": 0.0001, "number_of_frames": 49, "frame_rate": 24, "resolution": "low",
         "aspect_ratio": "16:9", "trigger_phrase": "in the style of TOK", "with_audio": False,
         "checkpoint_every_steps": 25}


def loss_at(step: int) -> float:
    return round(1.0 / (1.0 + step / 20), 6)


def train_loss_at(step: int) -> float:  # as the worker reports it: the mean of the 10 steps before
    return round(sum(loss_at(s) for s in range(step - 9, step + 1)) / 10, 6)


def h264_clip(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=8", "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)],
                   check=True, timeout=60)
    return path


def pyav_clip(path: Path) -> Path:
    """A 1 s clip written the way the pipeline writes validation videos (PyAV: H.264 High, AAC audio)."""
    import numpy as np

    from ltx2trainer.pipeline.annotate import write_video

    frames = np.random.default_rng(0).integers(0, 256, (25, 64, 64, 3), dtype=np.uint8)
    return write_video(path, frames, 25, np.zeros((2, 48_000), dtype=np.float32), 48_000)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = tmp_path_factory.mktemp("training_page")
    settings = Settings(data_dir=data / "data")
    services = Services(settings)
    lifecycle, storage = services.lifecycle, services.storage
    keys = {owner: create_key(services.db, owner).token for owner in ("alice", "bob")}
    keys["admin"] = create_key(services.db, "ops", is_admin=True).token
    clip, output_clip = h264_clip(data / "clip.mp4"), pyav_clip(data / "output.mp4")

    def stored(owner: str, job_id: str, name: str, content: bytes | Path, kind: str) -> dict:
        key = job_prefix(owner, job_id) + name
        if isinstance(content, Path):
            size = storage.put_file(key, content, kind).size
        else:
            size = storage.put_bytes(key, content, kind).size
        return {"key": key, "file_name": name.rsplit("/", 1)[-1], "content_type": kind, "file_size": size}

    def files(owner: str, job_id: str, folder: str, step: int, clip_file: Path | None) -> dict:
        return {
            "lora_file": stored(owner, job_id, f"{folder}lora.safetensors", f"lora {step}".encode(),
                                "application/octet-stream"),
            "lora_comfyui_file": stored(owner, job_id, f"{folder}lora_comfyui.safetensors",
                                        f"comfyui lora {step}".encode(), "application/octet-stream"),
            "config_file": stored(owner, job_id, f"{folder}config.json", b"{}", "application/json"),
            "video": stored(owner, job_id, f"{folder}validation.mp4", clip_file, "video/mp4") if clip_file else None,
        }

    def training(owner: str, done: int, finish: bool) -> str:
        stored_input = TrainingInput.model_validate(INPUT).model_dump(mode="json")
        job, _ = lifecycle.submit(owner, stored_input, usage=initial_usage(PRICE))
        lifecycle.start(job.id, "worker-1", lease_s=3600, max_attempts=3)
        lifecycle.set_phase(job.id, "training")
        step = 0
        for stop in [*(s for s in CHECKPOINTS if s <= done), done]:
            steps = list(range(step + 1, stop + 1))
            record_steps(services.db, job.id, steps, PRICE)
            record_metrics(services.db, job.id, [metric_row(s, loss_at(s), learning_rate=1e-4, grad_norm=0.5,
                                                            sigma=0.3) for s in steps])
            step = stop
            if stop in CHECKPOINTS:
                checkpoint = {"step": stop, "train_loss": train_loss_at(stop), "holdout_loss": HOLDOUT.get(stop),
                              "files": files(owner, job.id, f"checkpoints/step_{stop:06d}/", stop,
                                               clip if stop in CLIPS else None)}
                assert lifecycle.record_checkpoint(job.id, checkpoint)
        lifecycle.report_progress(job.id, {"step": done, "total_steps": STEPS, "loss": loss_at(done), "eta_s": 30.0})
        if finish:
            lifecycle.set_phase(job.id, "publishing")
            lifecycle.succeed(job.id, {**files(owner, job.id, "", STEPS, output_clip), "debug_dataset": None,
                                       "metrics": {"steps": STEPS, "final_loss": train_loss_at(STEPS),
                                                   "training_seconds": 12.5, "samples": 4}})
        return job.id

    def long_run(owner: str, steps: int, done: int) -> str:  # metrics only: more steps than the curve draws
        job, _ = lifecycle.submit(owner, {**INPUT, "number_of_steps": steps}, usage=initial_usage(PRICE))
        lifecycle.start(job.id, "worker-1", lease_s=3600, max_attempts=3)
        record_metrics(services.db, job.id, [metric_row(s, 2.0 / (1 + s / 100)) for s in range(1, done + 1)])
        return job.id

    jobs = {"succeeded": training("alice", STEPS, finish=True), "running": training("alice", 40, finish=False),
            "promoted": training("alice", STEPS, finish=True), "long": long_run("alice", 5000, 2500)}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services=services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    yield {"base": base, "page": lambda job_id: f"{base}/dashboard/trainings/{job_id}", "jobs": jobs,
           "profile": data / "chromium", **keys}
    server.should_exit = True
    thread.join(timeout=10)


def rows_by_step(page) -> dict[int, dict[str, str]]:
    return {int(row["data-step"]): row for row in page.attributes("checkpoint-row")}


def test_the_page_is_served_without_caching(site):
    response = httpx.get(site["page"](site["jobs"]["succeeded"]))
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert "text/html" in response.headers["content-type"] and 'data-testid="loss-curve"' in response.text
    assert "http://" not in response.text.replace("http://www.w3.org", "") and "https://" not in response.text


def test_a_finished_training_shows_status_cost_input_curve_and_checkpoints(site):
    job_id = site["jobs"]["succeeded"]
    page = rendered(f"{site['page'](job_id)}#key={site['alice']}", site["profile"])
    assert page.texts("job-id") == [job_id]
    assert page.texts("job-status") == ["succeeded"]
    assert page.texts("job-cost") == ["$0.4800"]  # 100 steps × $0.0048
    [estimate] = page.texts("job-estimate")
    assert "$0.4800" in estimate
    assert page.texts("job-steps") == ["100/100"]
    shown = {name: page.texts(f"input-{name}") for name in INPUT if name != "training_data_url"}
    assert shown == {"number_of_steps": ["100"], "rank": ["16"], "learning_rate": ["0.0001"],
                     "number_of_frames": ["49"], "frame_rate": ["24 fps"], "resolution": ["low"],
                     "aspect_ratio": ["16:9"], "trigger_phrase": ["in the style of TOK"], "with_audio": ["no"],
                     "checkpoint_every_steps": ["25 steps"]}
    [curve] = page.attributes("loss-curve")
    assert (curve["data-points"], curve["data-total-points"]) == ("100", "100")
    assert (curve["data-first-step"], curve["data-last-step"]) == ("1", "100")
    assert float(curve["data-max-loss"]) == pytest.approx(loss_at(1))
    assert float(curve["data-min-loss"]) == pytest.approx(loss_at(100))
    assert page.texts("axis-first-step") == ["step 1"] and page.texts("axis-last-step") == ["step 100"]
    assert page.texts("axis-max-loss") == [f"{loss_at(1):.4f}"] and page.texts("axis-min-loss") == [f"{loss_at(100):.4f}"]
    assert curve["data-holdout-points"] == str(len(HOLDOUT))
    assert {int(p["data-step"]): float(p["data-loss"]) for p in page.attributes("holdout-point")} == HOLDOUT

    rows = rows_by_step(page)
    assert list(rows) == [25, 50, 75, 100]
    assert {step: (float(row["data-train-loss"]), row["data-holdout-loss"], row["data-cost"], row["data-final"])
            for step, row in rows.items()} == {
        25: (train_loss_at(25), "0.61", "0.1200", "false"), 50: (train_loss_at(50), "", "0.2400", "false"),
        75: (train_loss_at(75), "0.43", "0.3600", "false"), 100: (train_loss_at(100), "", "0.4800", "true")}
    row_text = dict(zip([int(r["data-step"]) for r in page.attributes("checkpoint-row")], page.texts("checkpoint-row"),
                        strict=True))
    assert f"{train_loss_at(25):.4f}" in row_text[25] and "0.6100" in row_text[25] and "$0.1200" in row_text[25]
    assert [badge["data-step"] for badge in page.attributes("output-badge")] == ["100"]
    assert sorted(int(b["data-step"]) for b in page.attributes("promote-button")) == [25, 50, 75]
    assert sorted(int(v["data-step"]) for v in page.attributes("checkpoint-video")) == [*CLIPS, STEPS]

    # the download links fetch the stored files
    loras = [a["href"] for a in page.attributes("download-lora")]
    comfy = [a["href"] for a in page.attributes("download-comfyui")]
    assert len(loras) == len(comfy) == 4
    assert [httpx.get(url).content for url in loras] == [f"lora {s}".encode() for s in (25, 50, 75, 100)]
    assert [httpx.get(url).content for url in comfy] == [f"comfyui lora {s}".encode() for s in (25, 50, 75, 100)]
    assert page.attributes("back-link")[0]["href"] == "/dashboard"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "training_page.png"
    taken = chromium(f"{site['page'](job_id)}#key={site['alice']}", site["profile"], f"--screenshot={shot}",
                     "--window-size=1280,1500")
    assert taken.returncode == 0 and shot.stat().st_size > 20_000


def test_the_checkpoint_clips_load_in_the_browser(site):
    """The clips are real H.264 mp4s (ffmpeg's, and the output's from the pipeline's PyAV writer): Chromium reads
    their metadata (duration 1 s) from the signed URLs."""
    page = rendered_media(f"{site['page'](site['jobs']['succeeded'])}#key={site['alice']}", site["profile"],
                          "checkpoint-video")
    videos = {int(v["data-step"]): v for v in page.attributes("checkpoint-video")}
    assert set(videos) == {*CLIPS, STEPS}
    for step, video in videos.items():
        assert (video.get("data-ready"), video.get("data-error")) == ("true", None), (step, video)
        assert float(video["data-duration"]) == pytest.approx(1.0, abs=0.15)
        assert "controls" in video and video["preload"] == "metadata"
        assert httpx.get(video["src"]).content[4:8] == b"ftyp"


def test_a_running_training_shows_progress_and_offers_no_promotion(site):
    page = rendered(f"{site['page'](site['jobs']['running'])}#key={site['alice']}", site["profile"])
    assert page.texts("job-status") == ["running"]
    assert page.texts("job-cost") == ["$0.1920"]  # 40 steps so far
    assert page.texts("job-steps") == ["40/100"]
    assert "training" in page.texts("job-progress")[0]
    [curve] = page.attributes("loss-curve")
    assert (curve["data-points"], curve["data-last-step"]) == ("40", "40")
    assert list(rows_by_step(page)) == [25]
    assert page.attributes("promote-button") == [] and page.attributes("output-badge") == []


def test_a_long_run_is_drawn_as_means_of_runs_of_steps(site):
    page = rendered(f"{site['page'](site['jobs']['long'])}#key={site['alice']}", site["profile"])
    [curve] = page.attributes("loss-curve")
    # 2500 steps in runs of 3 (at most 1000 points): 834 means, the last one at step 2500
    assert (curve["data-total-points"], curve["data-points"]) == ("2500", "834")
    assert (curve["data-first-step"], curve["data-last-step"]) == ("3", "2500")
    assert float(curve["data-max-loss"]) == pytest.approx(sum(2.0 / (1 + s / 100) for s in (1, 2, 3)) / 3)
    assert page.attributes("checkpoint-row") == [] and curve["data-holdout-points"] == "0"


def test_promoting_a_checkpoint_moves_the_output_badge(site):
    job_id = site["jobs"]["promoted"]
    response = httpx.post(f"{site['base']}/v1/trainings/{job_id}/checkpoints/50/promote",
                          headers={"Authorization": f"Key {site['alice']}"})
    assert response.status_code == 200, response.text
    assert response.json()["output"]["promoted_step"] == 50
    page = rendered(f"{site['page'](job_id)}#key={site['alice']}", site["profile"])
    assert [badge["data-step"] for badge in page.attributes("output-badge")] == ["50"]
    rows = rows_by_step(page)
    assert rows[50]["data-output"] == "true" and rows[100]["data-output"] == "false"
    assert rows[100]["data-final"] == "true"
    # any other checkpoint may be promoted now, the final one too (that restores the job's own output)
    assert sorted(int(b["data-step"]) for b in page.attributes("promote-button")) == [25, 75, 100]


def test_another_owners_training_is_not_found(site):
    assert_not_found(f"{site['page'](site['jobs']['succeeded'])}#key={site['bob']}", site["profile"])


def test_without_a_key_the_page_asks_for_one(site):
    assert_asks_for_a_key(site["page"](site["jobs"]["succeeded"]), site["profile"])


def test_the_dashboard_links_each_training_to_its_page(site):
    page = rendered(f"{site['base']}/dashboard#key={site['alice']}", site["profile"])
    links = {a["href"] for a in page.attributes("training-link")}
    assert links == {f"/dashboard/trainings/{job_id}" for job_id in site["jobs"].values()}
    # an admin's all-owners view lists trainings whose pages its key cannot read (another owner's): no links
    admin = rendered(f"{site['base']}/dashboard#key={site['admin']}", site["profile"])
    assert len(admin.attributes("training-row")) == len(site["jobs"]) and admin.attributes("training-link") == []
