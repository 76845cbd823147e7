"""A dataset's page (`/dashboard/datasets/{id}`) and the dashboard's datasets list in headless Chromium.

Seeded through the real API and worker code, as tests/test_datasets.py does: a dataset created with
`POST /v1/datasets` from a small zip (two usable captioned clips, one too short, one unreadable, one caption
that is not UTF-8) and prepared by `execute_preparation` (real report, contact sheet and H.264 sample clips in
the real storage); a training on it submitted with `dataset_id` and run by `execute_job`; a dataset whose data
is not a zip (failed); one never prepared (queued). The pages are read from Chromium's rendered DOM.
"""

from __future__ import annotations

import base64
import shutil
import threading
import time

import httpx
import pytest
import uvicorn

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.prepare_runner import execute_preparation
from ltx2trainer.worker.runner import execute_job
from tests.live_service import FAST_JOB, free_port
from tests.mediagen import make_video, make_zip
from tests.test_dashboard import (
    ARTIFACTS,
    CHROMIUM,
    Elements,
    assert_asks_for_a_key,
    assert_not_found,
    chromium,
    rendered,
    rendered_media,
)

pytestmark = [pytest.mark.slow,  # the module's fixture prepares datasets and runs a 100-step training (~50 s)
              pytest.mark.skipif(CHROMIUM is None or shutil.which("ffmpeg") is None,
                                 reason="scripts/setup.sh installs ffmpeg, scripts/test.sh Debian's chromium")]
# 10 frames is adjusted to 9 (8k + 1): the page lists that adjustment
FIELDS = {"number_of_frames": 10, "resolution": FAST_JOB["resolution"], "aspect_ratio": FAST_JOB["aspect_ratio"],
          "trigger_phrase": "zq style"}
TRAINING = {key: FAST_JOB[key] for key in ("number_of_steps", "rank", "learning_rate")}
LATIN1_CAPTION = "café au lait, crème brûlée, déjà vu".encode("latin-1")


def data_url(folder) -> str:
    """Two usable clips (0.6 s), one too short for 9 frames (0.2 s at 25 fps = 5 frames), one unreadable."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "clip0.mp4": make_video(folder / "clip0.mp4", seconds=0.6, size=(160, 120), source="smptebars"),
        "clip0.txt": LATIN1_CAPTION,
        "clip1.mp4": make_video(folder / "clip1.mp4", seconds=0.6, size=(160, 120), source="testsrc2", tone_hz=550),
        "clip1.txt": "test clip number 1",
        "short.mp4": make_video(folder / "short.mp4", seconds=0.2, size=(160, 120), source="rgbtestsrc"),
        "broken.mp4": b"this is not a video at all",
    }
    archive = make_zip(folder / "data.zip", files)
    return "data:application/zip;base64," + base64.b64encode(archive.read_bytes()).decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset_page")
    settings = Settings(data_dir=folder / "data", prepare_workers=1)
    services = Services(settings)
    keys = {owner: create_key(services.db, owner).token for owner in ("alice", "bob")}
    keys["admin"] = create_key(services.db, "ops", is_admin=True).token
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    alice = httpx.Client(base_url=base, headers={"Authorization": f"Key {keys['alice']}"}, timeout=60)

    def create(training_data_url: str) -> str:
        response = alice.post("/v1/datasets", json={"training_data_url": training_data_url, **FIELDS})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    datasets = {"ready": create(data_url(folder / "media")),
                "failed": create("data:application/zip;base64," + base64.b64encode(b"hello, not a zip").decode()),
                "queued": create(data_url(folder / "media"))}
    assert execute_preparation(datasets["ready"], settings, services=services) == "ready"
    assert execute_preparation(datasets["failed"], settings, services=services) == "failed"
    submitted = alice.post("/v1/trainings", json={**TRAINING, "dataset_id": datasets["ready"]})
    assert submitted.status_code == 201, submitted.text
    training_id = submitted.json()["id"]
    assert execute_job(training_id, settings, worker_id="w1", services=services) == "succeeded"
    yield {"base": base, "page": lambda dataset_id: f"{base}/dashboard/datasets/{dataset_id}", "api": alice,
           "datasets": datasets, "training": training_id, "profile": folder / "chromium", **keys}
    alice.close()
    server.should_exit = True
    thread.join(timeout=10)
    services.db.engine.dispose()


def test_the_page_is_served_without_caching(site):
    response = httpx.get(site["page"](site["datasets"]["ready"]))
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert "text/html" in response.headers["content-type"] and 'data-testid="contact-sheet"' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # nothing fetched from elsewhere


def test_a_ready_dataset_shows_its_fields_report_and_trainings(site):
    dataset_id = site["datasets"]["ready"]
    api = site["api"].get(f"/v1/datasets/{dataset_id}").json()
    page = rendered(f"{site['page'](dataset_id)}#key={site['alice']}", site["profile"])
    assert page.texts("dataset-id") == [dataset_id]
    assert page.texts("dataset-status") == ["ready"] and page.attributes("dataset-status")[0]["data-status"] == "ready"
    assert page.texts("dataset-samples") == ["2"] and api["samples"] == 2
    assert page.texts("dataset-error") == [""]
    # the fields, the data source as the API gives it (already redacted: an upload reference, not the bytes)
    shown = {name: page.texts(f"field-{name}") for name in ("number_of_frames", "frame_rate", "resolution",
                                                             "aspect_ratio", "trigger_phrase", "with_audio",
                                                             "auto_scale_input", "split_input_into_scenes")}
    assert shown == {"number_of_frames": ["9"], "frame_rate": ["25 fps"], "resolution": [FIELDS["resolution"]],
                     "aspect_ratio": [FIELDS["aspect_ratio"]], "trigger_phrase": ["zq style"],
                     "with_audio": ["if every clip has it"], "auto_scale_input": ["no"],
                     "split_input_into_scenes": ["yes"]}
    assert page.texts("field-training_data_url") == [api["fields"]["training_data_url"]]
    assert "base64" not in page.texts("field-training_data_url")[0]
    assert [a["data-field"] for a in page.attributes("adjustment")] == ["number_of_frames"]
    assert "10 → 9" in page.texts("adjustment")[0]

    # the report: counts, skipped clips with their reasons, the caption warning, the audio decision
    report = api["report"]
    assert page.texts("report-samples-out") == ["2"]
    assert page.texts("report-clips-in") == [str(report["counts"]["clips_in"])]
    assert page.texts("report-scenes") == [str(report["counts"]["scenes"])] and page.texts("report-skipped") == ["2"]
    skipped = {row["data-source"]: row["data-reason"] for row in page.attributes("skipped-row")}
    assert skipped == {"short.mp4": "too_short", "broken.mp4": "unreadable"}
    skipped_text = dict(zip([r["data-source"] for r in page.attributes("skipped-row")], page.texts("skipped-row"),
                            strict=True))
    assert "too short" in skipped_text["short.mp4"] and "9 frames" in skipped_text["short.mp4"]
    assert "unreadable" in skipped_text["broken.mp4"]
    assert [w["data-source"] for w in page.attributes("warning")] == ["clip0.txt"]
    assert "not UTF-8" in page.texts("warning")[0] or "undecodable" in page.texts("warning")[0]
    [audio] = page.texts("report-audio")
    assert audio.startswith("on: " if report["audio"]["enabled"] else "off: ") and report["audio"]["reason"] in audio

    # the trainings on it link to their pages
    assert [a["href"] for a in page.attributes("training-link")] == [f"/dashboard/trainings/{site['training']}"]
    assert [r["data-status"] for r in page.attributes("training-row")] == ["succeeded"]
    assert page.texts("training-count") == ["1"]
    assert page.attributes("back-link")[0]["href"] == "/dashboard"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dataset_page.png"
    taken = chromium(f"{site['page'](dataset_id)}#key={site['alice']}", site["profile"], f"--screenshot={shot}",
                     "--window-size=1280,1900")
    assert taken.returncode == 0 and shot.stat().st_size > 40_000


def test_the_contact_sheet_and_the_sample_clips_load_in_the_browser(site):
    dataset_id = site["datasets"]["ready"]
    api = site["api"].get(f"/v1/datasets/{dataset_id}").json()
    page = rendered_media(f"{site['page'](dataset_id)}#key={site['alice']}", site["profile"], "contact-sheet",
                          "sample-video")
    [sheet] = page.attributes("contact-sheet")
    assert (sheet.get("data-ready"), sheet.get("data-error")) == ("true", None), sheet
    assert int(sheet["data-natural-width"]) > 0 and int(sheet["data-natural-height"]) > 0
    assert httpx.get(sheet["src"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    videos = {video["data-sample"]: video for video in page.attributes("sample-video")}
    assert set(videos) == set(api["sample_files"]) and len(videos) == 2
    for sample, video in videos.items():
        assert (video.get("data-ready"), video.get("data-error")) == ("true", None), (sample, video)
        assert float(video["data-duration"]) > 0
        assert "controls" in video and video["preload"] == "metadata"
        assert httpx.get(video["src"]).content[4:8] == b"ftyp"


def test_a_failed_dataset_shows_its_error(site):
    dataset_id = site["datasets"]["failed"]
    error = site["api"].get(f"/v1/datasets/{dataset_id}").json()["error"]
    page = rendered(f"{site['page'](dataset_id)}#key={site['alice']}", site["profile"])
    assert page.texts("dataset-status") == ["failed"]
    [shown] = page.texts("dataset-error")
    assert shown == f"{error['type']}: {error['message']}" and "zip" in shown
    assert page.texts("dataset-samples") == ["–"] and page.attributes("contact-sheet") == []
    assert page.attributes("sample-video") == [] and "preparation failed" in page.texts("report-pending")[0]


def test_a_queued_dataset_shows_it_is_waiting(site):
    page = chromium(f"{site['page'](site['datasets']['queued'])}#key={site['alice']}", site["profile"],
                    "--dump-dom")
    assert 'data-loaded="true"' in page.stdout and 'data-status="queued"' in page.stdout
    assert "waiting for a worker" in page.stdout and 'data-testid="report-pending"' in page.stdout


def test_another_owners_or_a_missing_dataset_is_not_found(site):
    for url in (f"{site['page'](site['datasets']['ready'])}#key={site['bob']}",
                f"{site['page']('no-such-dataset')}#key={site['alice']}"):
        assert_not_found(url, site["profile"])


def test_without_a_key_the_page_asks_for_one(site):
    assert_asks_for_a_key(site["page"](site["datasets"]["ready"]), site["profile"])


def test_the_dashboard_lists_the_datasets_with_links(site):
    page = rendered(f"{site['base']}/dashboard#key={site['alice']}", site["profile"])
    rows = {row["data-id"]: row for row in page.attributes("dataset-row")}
    datasets = site["datasets"]
    assert set(rows) == set(datasets.values())
    assert {name: (rows[i]["data-status"], rows[i]["data-samples"]) for name, i in datasets.items()} == {
        "ready": ("ready", "2"), "failed": ("failed", ""), "queued": ("queued", "")}
    assert {a["href"] for a in page.attributes("dataset-link")} == {
        f"/dashboard/datasets/{dataset_id}" for dataset_id in datasets.values()}
    # the training on the dataset is listed as any other, linked to its page
    assert {a["href"] for a in page.attributes("training-link")} == {f"/dashboard/trainings/{site['training']}"}
    # an admin's all-owners view has no datasets list (GET /v1/datasets reads the key's own owner only)
    admin = chromium(f"{site['base']}/dashboard#key={site['admin']}", site["profile"], "--dump-dom")
    assert 'data-loaded="true"' in admin.stdout and '<section id="datasets-section" hidden="">' in admin.stdout
    elements = Elements()
    elements.feed(admin.stdout)
    assert elements.attributes("dataset-row") == [] and elements.attributes("training-row") != []
