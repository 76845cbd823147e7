"""The worker's side of a job: outcomes mapped onto the lifecycle, cooperative cancel, leases and requeues.

Jobs run in this process through `execute_job` (what the Celery task calls), on the tiny model.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from sqlalchemy import func, select

from ltx2trainer.billing.models import SettlementRow, UsageRecordRow
from ltx2trainer.jobs.models import JobStatus
from ltx2trainer.settings import Settings
from ltx2trainer.storage import job_prefix
from ltx2trainer.wiring import Services
from ltx2trainer.worker.app import announce_model, reap_dead_workers
from ltx2trainer.worker.runner import execute_job
from tests.live_service import FAST_JOB, tiny_dataset_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset_url(tmp_path_factory) -> str:
    return tiny_dataset_url(tmp_path_factory.mktemp("media"))


@pytest.fixture
def services(tmp_path) -> Services:
    return Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                             job_lease_s=6))


def submit(services: Services, body: dict, owner: str = "alice") -> str:
    from ltx2trainer.schemas import TrainingInput

    training_input = TrainingInput.model_validate(body)
    job, _ = services.lifecycle.submit(owner, training_input.model_dump(mode="json"))
    return job.id


def test_a_job_runs_to_success_with_outputs_in_storage_and_logs(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url,
                               "validation": [{"prompt": "a test clip"}], "validation_resolution": "low",
                               "validation_aspect_ratio": "16:9", "validation_number_of_frames": 9})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "succeeded"
    job = services.store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.error is None
    prefix = job_prefix("alice", job_id)
    for name in ("lora_file", "config_file", "video", "lora_comfyui_file"):
        ref = job.output[name]
        assert ref["key"].startswith(prefix) and services.storage.size(ref["key"]) == ref["file_size"] > 0
    assert job.output["debug_dataset"] is None
    assert job.progress["step"] == job.progress["total_steps"] == 100
    logs = [line["message"] for line in services.store.last_logs(job_id, 100)]
    assert any(message.startswith("dataset: 2 samples") for message in logs)
    # validation clips were published while training ran (as output events), four rounds of one prompt
    published = [event.data["name"] for event in services.store.events(job_id, kinds=("output",))]
    assert published == [f"validation/step_{step:06d}_prompt0.mp4" for step in (25, 50, 75, 100)]
    phases = [event.data["phase"] for event in services.store.events(job_id, kinds=("phase",))]
    assert phases[:4] == ["fetching", "preparing", "encoding", "training"] and "publishing" in phases
    assert not (services.settings.data_dir / "jobs" / job_id).exists()  # work dir cleaned up
    # the outputs say which base model they belong to, and the LoRA is bf16
    assert "base model: ltx-2 2.0 (preset: tiny)" in logs
    with services.storage.open(job.output["config_file"]["key"]) as handle:
        config = json.load(handle)
    assert config["base_model"] == {"family": "ltx-2", "version": "2.0", "format": "preset", "source": "tiny",
                                    "file_name": None, "size_bytes": None, "header_sha256": None,
                                    "quantization": None, "text_encoder": None}
    assert config["lora"]["dtype"] == "bf16"
    with services.storage.open(job.output["lora_file"]["key"]) as handle:
        lora = safetensors.torch.load(handle.read())
    assert {tensor.dtype for tensor in lora.values()} == {torch.bfloat16}


def test_debug_dataset_is_published_when_asked(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url, "debug_dataset": True})
    execute_job(job_id, services.settings, worker_id="w1", services=services)
    ref = services.store.get(job_id).output["debug_dataset"]
    import io
    import zipfile

    with services.storage.open(ref["key"]) as handle:
        names = zipfile.ZipFile(io.BytesIO(handle.read())).namelist()
    assert "manifest.jsonl" in names and "report.json" in names and any(n.startswith("media/") for n in names)


def test_a_service_job_reports_the_adjustments_made_at_submission_in_its_outputs(services, tmp_path):
    # Through the gateway, as a user submits: it stores the adjusted input (89 frames) and the adjustment
    # (90 → 89); the worker's outputs must say so, not re-validate 89 and find nothing was changed.
    import base64
    import io
    import zipfile

    from fastapi.testclient import TestClient

    from ltx2trainer.api import create_app
    from ltx2trainer.jobs.keys import create_key
    from tests.mediagen import make_image, make_zip

    images = {f"image{i}.png": make_image(tmp_path / f"image{i}.png", source=source)
              for i, source in enumerate(("testsrc2", "smptebars"))}  # images: the frame count costs nothing
    archive = make_zip(tmp_path / "images.zip", {**images, "image0.txt": "a test pattern"})
    body = {**FAST_JOB, "training_data_url": "data:application/zip;base64," +
            base64.b64encode(archive.read_bytes()).decode(), "number_of_frames": 90, "debug_dataset": True}
    key = create_key(services.db, "alice").token
    with TestClient(create_app(services.settings, services=services)) as client:
        submitted = client.post("/v1/trainings", json=body, headers={"Authorization": f"Key {key}"})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    expected = [{"field": "number_of_frames", "requested": 90, "used": 89}]
    assert [{k: a[k] for k in ("field", "requested", "used")} for a in submitted.json()["adjustments"]] == expected

    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "succeeded"
    output = services.store.get(job_id).output
    with services.storage.open(output["config_file"]["key"]) as handle:
        config = json.load(handle)
    assert config["training_input"]["number_of_frames"] == 89
    assert [{k: a[k] for k in ("field", "requested", "used")} for a in config["adjustments"]] == expected
    with services.storage.open(output["debug_dataset"]["key"]) as handle:
        report = json.loads(zipfile.ZipFile(io.BytesIO(handle.read())).read("report.json"))
    assert [{k: a[k] for k in ("field", "requested", "used")} for a in report["adjustments"]] == expected


def test_bad_training_data_fails_the_job_with_the_reason(services):
    job_id = submit(services, {**FAST_JOB, "training_data_url": "data:application/zip;base64,bm90IGEgemlw"})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    job = services.store.get(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error["type"] == "invalid_archive" and "not a readable zip" in job.error["message"]


def test_a_misconfigured_model_fails_the_job_at_once_with_model_error_and_costs_nothing(tmp_path):
    # an official-looking single file but no text encoder configured (LTX2T_TEXT_ENCODER)
    model = tmp_path / "ltx-2-19b-dev.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.audio_adaln_single.linear.weight": torch.zeros(2, 2)},
                                str(model), metadata={"config": json.dumps({"transformer": {}})})
    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                                 model=str(model)))
    # training data that is not a zip: had the job fetched it, it would fail with invalid_archive instead
    job_id = submit(services, {**FAST_JOB, "training_data_url": "data:application/zip;base64,bm90IGEgemlw"})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    job = services.store.get(job_id)
    assert job.status == JobStatus.FAILED and job.attempt == 1  # not retried
    assert job.error["type"] == "model_error"
    assert job.error["message"].startswith("ltx-2-19b-dev.safetensors is an official single-file checkpoint: "
                                           "it holds no text encoder")
    assert job.phase is None  # failed before fetching
    assert job.usage["steps_billed"] == 0
    with services.db.session() as session:
        settlement = session.get(SettlementRow, job_id)
        recorded = session.scalar(select(func.count()).select_from(UsageRecordRow)
                                  .where(UsageRecordRow.job_id == job_id))
    assert (settlement.outcome, settlement.steps_billed, settlement.amount_nano_usd, recorded) == ("failed", 0, 0, 0)


def test_a_job_runs_with_its_memory_plan_and_records_it_in_config_json(tmp_path, dataset_url):
    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                                 gpu_memory_gb=24))  # as a worker told its GPU's memory
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "succeeded"
    job = services.store.get(job_id)
    logs = [line["message"] for line in services.store.last_logs(job_id, 100)]
    assert any(m.startswith("memory plan for 24 GB (configured): bf16 base, adamw; predicted peaks (GB): encode ")
               for m in logs)
    with services.storage.open(job.output["config_file"]["key"]) as handle:
        config = json.load(handle)
    plan = config["memory_plan"]
    assert (plan["fits"], plan["model"], plan["base_precision"], plan["optimizer"]) == (True, "tiny", "bf16", "adamw")
    assert config["training"]["base_precision"] == "bf16"  # what the engine ran with


def test_a_job_that_fits_no_gpu_fails_before_fetching_and_costs_nothing(tmp_path):
    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                                 gpu_memory_gb=0.5))  # less than the CUDA context alone
    job_id = submit(services, {**FAST_JOB, "training_data_url": "data:application/zip;base64,bm90IGEgemlw"})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "failed"
    job = services.store.get(job_id)
    assert job.error["type"] == "insufficient_gpu_memory" and "the workers' GPUs have 0.5 GB" in job.error["message"]
    assert job.phase is None and job.usage["steps_billed"] == 0  # failed before fetching: not invalid_archive


def test_the_worker_names_its_model_at_start_up_and_logs_a_bad_one_without_stopping(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ltx2trainer.worker.app"):
        served = announce_model(Settings(data_dir=tmp_path / "data", model="tiny-2.3"))
    assert served.info["version"] == "2.3" and served.error is None
    assert "serving ltx-2 2.3 (preset: tiny-2.3)" in caplog.messages

    truncated = tmp_path / "ltx-2.3-22b-dev.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.audio_adaln_single.linear.weight": torch.zeros(64, 64)},
                                str(truncated), metadata={"config": json.dumps({"transformer": {}})})
    truncated.write_bytes(truncated.read_bytes()[:-100])  # an interrupted download
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ltx2trainer.worker.app"):
        served = announce_model(Settings(data_dir=tmp_path / "data", model=str(truncated)))
    assert served.info is None and served.error.startswith("ltx-2.3-22b-dev.safetensors is truncated")
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert record.getMessage().startswith("the configured model cannot be used: ltx-2.3-22b-dev.safetensors is "
                                          "truncated")
    assert "every job will fail with model_error" in record.getMessage()


def test_a_running_job_stops_within_a_step_of_cancel_and_keeps_its_last_checkpoint(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url, "number_of_steps": 2000})
    outcome: dict[str, str] = {}
    worker = threading.Thread(target=lambda: outcome.update(
        result=execute_job(job_id, services.settings, worker_id="w1", services=services)))
    worker.start()
    deadline = time.monotonic() + 120
    while (services.store.get(job_id).progress or {}).get("step", 0) < 5:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    services.lifecycle.request_cancel(job_id, "alice")
    cancelled_at_step = services.store.get(job_id).progress["step"]
    worker.join(timeout=60)
    assert outcome["result"] == "cancelled"
    job = services.store.get(job_id)
    assert job.status == JobStatus.CANCELLED and job.error["type"] == "cancelled"
    stopped_at = job.output["metrics"]["cancelled_at_step"]
    # progress is reported every 0.5 s and cancel read every 0.25 s: a few tiny steps at most
    assert cancelled_at_step <= stopped_at <= cancelled_at_step + 25
    assert services.storage.size(job.output["lora_file"]["key"]) > 0  # the LoRA of the last step


def test_a_step_is_in_the_usage_ledger_before_its_checkpoint_is_saved(services, dataset_url):
    # Found by bench/chaos.py: a task process killed between a checkpoint and the next usage flush left the
    # steps since the last flush trained and never billed (the resume starts after the checkpoint).
    from ltx2trainer.training.trainer import StepInfo
    from ltx2trainer.worker.context import WorkerContext

    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    job = services.lifecycle.start(job_id, "worker-1", lease_s=60, max_attempts=3)
    context = WorkerContext(job, services.lifecycle, services.storage, services.settings, "worker-1")

    def report(step: int, *, checkpoint_after: bool = False) -> list[int]:
        context.report_step(StepInfo(step, 100, 1.0, 1.0, 0.0, 1e-3, 0.01 * step, checkpoint_after))
        with services.db.session() as session:
            return sorted(session.scalars(select(UsageRecordRow.step).where(UsageRecordRow.job_id == job_id)))

    assert report(1) == [1]  # the first step is written at once
    assert report(2) == [1]  # later ones every half second…
    assert report(3, checkpoint_after=True) == [1, 2, 3]  # …but all of them before a checkpoint


def test_a_diverged_step_is_reported_on_postgresql_without_failing_the_job(tmp_path, postgres_url, dataset_url):
    # PostgreSQL's JSON type refuses Infinity and NaN: the progress write used to raise and fail the job.
    from ltx2trainer.training.trainer import StepInfo
    from ltx2trainer.worker.context import WorkerContext

    services = Services(Settings(data_dir=tmp_path / "data", database_url=postgres_url, allow_private_urls=True))
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    job = services.lifecycle.start(job_id, "worker-1", lease_s=60, max_attempts=3)
    context = WorkerContext(job, services.lifecycle, services.storage, services.settings, "worker-1")
    context.report_step(StepInfo(1, 100, float("inf"), float("nan"), 0.0, 1e-3, 0.01))
    progress = services.store.get(job_id).progress
    assert progress["step"] == 1 and progress["loss"] is None


def test_a_job_cancelled_while_queued_never_starts(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    services.lifecycle.request_cancel(job_id, "alice")
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "skipped"
    assert services.store.get(job_id).status == JobStatus.CANCELLED
    assert services.store.get(job_id).attempt == 0


def test_a_duplicate_delivery_does_not_run_a_job_another_worker_holds(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    assert services.lifecycle.start(job_id, "worker-a", lease_s=60, max_attempts=3) is not None
    assert execute_job(job_id, services.settings, worker_id="worker-b", services=services) == "skipped"
    assert services.store.get(job_id).attempt == 1


def test_an_expired_lease_is_requeued_and_resumed_by_another_worker(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    services.lifecycle.start(job_id, "worker-a", lease_s=0.1, max_attempts=3)
    time.sleep(0.3)
    assert reap_dead_workers(services) == [job_id]
    assert services.store.get(job_id).status == JobStatus.QUEUED
    broker = services.settings.data_dir / "broker" / "queue"
    assert list(broker.iterdir())  # the job was handed to the queue again
    assert execute_job(job_id, services.settings, worker_id="worker-b", services=services) == "succeeded"
    assert services.store.get(job_id).attempt == 2


def test_a_job_whose_worker_keeps_dying_fails_as_a_platform_error(services, dataset_url):
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    for attempt in range(services.settings.job_max_attempts):
        assert services.lifecycle.start(job_id, f"worker-{attempt}", lease_s=0.01, max_attempts=3) is not None
        time.sleep(0.05)
    assert execute_job(job_id, services.settings, worker_id="worker-x", services=services) == "skipped"
    job = services.store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error["type"] == "runner_disconnected"


def test_storage_outage_requeues_the_job_for_a_retry(tmp_path, dataset_url):
    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                                 storage_url="s3://bucket/prefix", s3_endpoint_url="http://127.0.0.1:9"))
    job_id = submit(services, {**FAST_JOB, "training_data_url": dataset_url})
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "requeued"
    job = services.store.get(job_id)
    assert job.status == JobStatus.QUEUED and job.error is None
    assert any("platform error" in line["message"] for line in services.store.last_logs(job_id, 50))


def test_the_embedded_broker_keeps_all_its_state_in_the_data_dir(tmp_path):
    # kombu's filesystem transport would otherwise write its exchange tables to ./control, wherever the
    # gateway or worker happens to be started. A fresh process: kombu declares an exchange once per process.
    script = ("from pathlib import Path; from ltx2trainer.settings import Settings; "
              "from ltx2trainer.wiring import Services; "
              "Services(Settings(data_dir=Path('data'))).queue.enqueue('job-1')")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    broker = tmp_path / "data" / "broker"
    assert len(list((broker / "queue").iterdir())) == 1
    assert (broker / "control" / "trainings.exchange").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]
