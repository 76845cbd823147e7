"""No server paths in what a user of the service sees: job errors and logs, /health, estimates.

The server's folders (data dir, a job's work dir, local storage, the configured model and text encoder, the
temp dir) appear there as placeholders (`<work>/…`, `<model>`), the rest of each message kept; the operator's
logs keep the full text (`ltx2trainer/server_paths.py`).
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from ltx2trainer import uploads
from ltx2trainer.api import create_app
from ltx2trainer.errors import InfraError, UserInputError
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.jobs.models import JobStatus
from ltx2trainer.jobs.workers import identify_model, recent_workers, record_worker
from ltx2trainer.pipeline.fetch import fetch_dataset
from ltx2trainer.pipeline.preprocess.media import UnreadableMedia, probe_media
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.server_paths import ServerPaths, error_reason, job_paths, model_paths
from ltx2trainer.settings import Settings
from ltx2trainer.storage import owner_prefix
from ltx2trainer.wiring import Services
from ltx2trainer.worker.app import announce_model
from ltx2trainer.worker.runner import execute_job
from tests.api_harness import auth
from tests.mediagen import make_video, make_zip

SMALL_JOB = {"number_of_steps": 100, "number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9", "rank": 8}


@pytest.fixture
def services(tmp_path) -> Services:
    return Services(Settings(data_dir=tmp_path / "data", prepare_workers=1))


def submit_upload(services: Services, data: bytes, owner: str = "alice") -> str:
    """A job whose training data the gateway stored as an upload (as a data: URL submit does): the worker
    copies it into the job's work dir, a path the server chose."""
    reference = uploads.reference(data)
    sha256, _ = uploads.parse_reference(reference)
    services.storage.put_bytes(uploads.storage_key(owner_prefix(owner), sha256), data, "application/zip")
    body = {**SMALL_JOB, "training_data_url": reference}
    training_input = TrainingInput.model_validate(body, context={"allow_uploads": True})
    job, _ = services.lifecycle.submit(owner, training_input.model_dump(mode="json"))
    return job.id


def shown(services: Services, job_id: str) -> str:
    """Everything of the job a user can read: its error and its log lines."""
    job = services.store.get(job_id)
    lines = [line["message"] for line in services.store.last_logs(job_id, 200)]
    return "\n".join([str(job.error), *lines])


# --- the placeholders -----------------------------------------------------------------------------------


def test_placeholders_replace_the_servers_folders_and_keep_the_rest_of_the_message(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", model=str(tmp_path / "models" / "ltx-2.safetensors"))
    paths = job_paths(settings, settings.data_dir / "jobs" / "J1")
    data = settings.data_dir

    assert paths.hide(f"cannot open '{data}/jobs/J1/dataset/media/a.mp4'") == "cannot open '<work>/dataset/media/a.mp4'"
    assert paths.hide(f"local storage could not write 'k' under {data / 'storage'}: disk full") == \
        "local storage could not write 'k' under <storage>: disk full"
    assert paths.hide(f"model file not found: {tmp_path}/models/ltx-2.safetensors.") == "model file not found: <model>."
    assert paths.hide(f"queued in {data}/broker") == "queued in <data>/broker"
    # a path is hidden whole or not at all: a sibling folder with a longer name is not "<data>2"
    assert paths.hide(f"{data}2/x") != "<data>2/x" and "<data>" not in paths.hide(f"{data}.bak")


def test_names_that_are_not_paths_are_shown_as_they_are():
    assert model_paths("tiny", None).hide("tiny: the tiny preset") == "tiny: the tiny preset"
    assert model_paths("Lightricks/LTX-2", None).hide("hub id Lightricks/LTX-2") == "hub id Lightricks/LTX-2"
    assert ServerPaths([]).hide("/anything/at/all") == "/anything/at/all"


def test_an_ffmpeg_error_is_quoted_by_its_reason_without_the_file_path(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(UnreadableMedia) as caught:
        probe_media(tmp_path, "broken.mp4")
    assert str(caught.value) == "cannot be decoded: Invalid data found when processing input"
    assert error_reason(FileNotFoundError(2, "No such file or directory", "/srv/x")) == "No such file or directory"
    assert error_reason(ValueError("bad value")) == "bad value"


# --- jobs: their error and their logs --------------------------------------------------------------------


def test_a_job_whose_upload_holds_only_a_broken_clip_fails_without_naming_server_paths(services, tmp_path):
    data = make_zip(tmp_path / "upload.zip", {"clips/broken.mp4": b"this is not a video"}).read_bytes()
    job_id = submit_upload(services, data)
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    job = services.store.get(job_id)
    assert job.error["type"] == "no_usable_media"
    assert job.error["message"] == ("none of the 1 media files could be read: clips/broken.mp4 (cannot be decoded: "
                                    "Invalid data found when processing input)")
    assert str(services.settings.data_dir) not in shown(services, job_id)
    assert str(tmp_path) not in shown(services, job_id)


def test_a_misconfigured_models_path_is_a_placeholder_in_the_jobs_error(tmp_path):
    model = tmp_path / "models" / "ltx-2-19b-dev.safetensors"
    services = Services(Settings(data_dir=tmp_path / "data", model=str(model)))
    job_id = submit_upload(services, b"not even a zip")
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    error = services.store.get(job_id).error
    assert error == {"type": "model_error", "message": "model file not found: <model>"}
    assert str(tmp_path) not in shown(services, job_id)


def test_a_crash_shows_its_error_with_placeholders_and_keeps_the_traceback_in_the_workers_log(
    services, monkeypatch, caplog
):
    job_id = submit_upload(services, b"unused")
    work = services.settings.data_dir / "jobs" / job_id

    def crash(ctx, training_input):
        logging.getLogger("ltx2trainer.training.trainer").info("resuming from step 50 (%s)", work / "train" / "ck")
        raise FileNotFoundError(2, "No such file or directory", str(work / "dataset" / "manifest.jsonl"))

    monkeypatch.setattr("ltx2trainer.pipeline.run.run_job", crash)
    with caplog.at_level(logging.INFO, logger="ltx2trainer"):
        assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    job = services.store.get(job_id)
    assert job.error["type"] == "internal_error"
    assert job.error["message"] == ("the worker failed: FileNotFoundError: [Errno 2] No such file or directory: "
                                    "'<work>/dataset/manifest.jsonl'")
    logs = [line["message"] for line in services.store.last_logs(job_id, 50)]
    assert "resuming from step 50 (<work>/train/ck)" in logs
    assert not any("Traceback" in line for line in logs)
    assert str(services.settings.data_dir) not in shown(services, job_id)
    # the operator's log has it all
    assert any("Traceback" in message and str(work) in message for message in caplog.messages)


def test_a_platform_errors_retry_note_shows_no_storage_path(services, monkeypatch):
    job_id = submit_upload(services, b"unused")
    root = services.settings.data_dir / "storage"

    def outage(ctx, training_input):
        raise InfraError(f"local storage could not write 'k' under {root}: [Errno 28] No space left on device")

    monkeypatch.setattr("ltx2trainer.pipeline.run.run_job", outage)
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "requeued"
    assert services.store.get(job_id).status == JobStatus.QUEUED
    assert "platform error, retrying: local storage could not write 'k' under <storage>: [Errno 28] No space " \
           "left on device" in shown(services, job_id)
    assert str(services.settings.data_dir) not in shown(services, job_id)


def test_a_missing_local_source_is_named_as_the_user_wrote_it(tmp_path, settings):
    with pytest.raises(UserInputError) as caught:
        fetch_dataset("~/no-such-dataset.zip", tmp_path / "work", settings, allow_local=True)
    assert caught.value.code == "not_found"
    assert caught.value.message == "training data not found: ~/no-such-dataset.zip"  # not the server's home


def test_a_prepare_reports_skipped_clips_without_server_paths(tmp_path, prepare):
    folder = tmp_path / "upload"
    folder.mkdir()
    make_video(folder / "good.mp4", seconds=1.0, size=(160, 120))
    (folder / "broken.mp4").write_bytes(b"garbage, not a video")
    result = prepare(folder)
    [skipped] = result.report.skipped
    assert skipped.source == "broken.mp4" and str(tmp_path) not in skipped.detail


# --- the gateway: /health and estimates --------------------------------------------------------------------


def test_health_says_why_the_configured_model_is_unusable_without_its_path(tmp_path, caplog):
    model = tmp_path / "weights" / "ltx-2-19b-dev.safetensors"
    settings = Settings(data_dir=tmp_path / "data", model=str(model))
    with caplog.at_level(logging.WARNING, logger="ltx2trainer.api.routes_ops"), \
            TestClient(create_app(settings, services=Services(settings))) as client:
        response = client.get("/health")
    assert response.json()["model"] == "model_error: model file not found: <model>"
    assert str(tmp_path) not in response.text
    assert any(str(model) in message for message in caplog.messages)  # the operator's log names it


def test_health_shows_a_workers_model_error_without_its_path_and_the_worker_logs_it(tmp_path, caplog):
    gemma = tmp_path / "gemma"
    gemma.mkdir()
    settings = Settings(data_dir=tmp_path / "data", model=str(tmp_path / "diffusers"), text_encoder=str(gemma))
    (tmp_path / "diffusers").mkdir()  # a folder without model_index.json
    with caplog.at_level(logging.ERROR, logger="ltx2trainer.worker.app"):
        served = announce_model(settings)
    assert served.error == "<model> is a folder without model_index.json: not a diffusers-format LTX-2 model"
    assert str(tmp_path / "diffusers") in caplog.text  # the worker's log keeps the path
    services = Services(settings)
    record_worker(services.db, "trainer@gpu-1", served)
    [worker] = recent_workers(services.db)
    assert worker["model"] == f"model_error: {served.error}"
    assert identify_model(str(gemma / "missing.safetensors"), None).error == "model file not found: <model>"


def test_an_estimates_memory_error_hides_the_plan_models_path(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", plan_model=str(tmp_path / "nowhere" / "ltx-2.safetensors"))
    services = Services(settings)
    token = create_key(services.db, "alice").token
    with TestClient(create_app(settings, services=services)) as client:
        answer = client.post("/v1/estimates", json={"training_data_url": "https://example.com/a.zip"},
                             headers=auth(token))
    assert answer.status_code == 200 and answer.json()["memory"] is None
    assert "not found" in answer.json()["memory_error"] and str(tmp_path) not in answer.text

