"""The production configuration end to end: PostgreSQL job store, Redis broker, S3 object storage (moto's
standalone server over HTTP), a real Celery worker process, and the gateway on loopback."""

from __future__ import annotations

import os
import socket
import time

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.live_service import FAST_JOB, live_service, tiny_dataset_url

pytestmark = pytest.mark.slow

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def s3_endpoint(monkeypatch):
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outputs")
    yield endpoint
    server.stop()


def test_a_job_runs_on_postgresql_redis_and_s3(tmp_path, postgres_url, redis_url, s3_endpoint):
    dataset = tiny_dataset_url(tmp_path / "media")
    env = {"LTX2T_DATABASE_URL": postgres_url, "LTX2T_BROKER_URL": redis_url,
           "LTX2T_STORAGE_URL": "s3://outputs/ltx2", "LTX2T_S3_ENDPOINT_URL": s3_endpoint,
           **{name: os.environ[name] for name in AWS_TEST_ENV}}
    with live_service(tmp_path / "svc", **env) as service, service.client() as client:
        assert service.settings.database_url.startswith("postgresql")
        submitted = time.monotonic()
        job = client.post("/v1/trainings", json={**FAST_JOB, "training_data_url": dataset}).json()
        running_after = None
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() - submitted < 180, job
            time.sleep(0.05)
            job = client.get(f"/v1/trainings/{job['id']}").json()
            if job["status"] == "running" and running_after is None:
                running_after = time.monotonic() - submitted
        assert job["status"] == "succeeded", job.get("error")
        assert running_after is not None and running_after < 2.0  # Redis hands the job over at once

        lora = job["output"]["lora_file"]
        assert lora["url"].startswith(s3_endpoint)  # a presigned S3 URL, not the gateway
        downloaded = httpx.get(lora["url"], timeout=30)
        assert downloaded.status_code == 200 and len(downloaded.content) == lora["file_size"]
        keys = [item["Key"] for item in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
                .list_objects_v2(Bucket="outputs", Prefix="ltx2/jobs/")["Contents"]]
        outputs = [key for key in keys if f"/{job['id']}/" in key]
        uploads = [key for key in keys if "/uploads/" in key]  # the data: URL, stored once at submit
        dataset_id = job["output"]["metrics"]["dataset_id"]  # its data, kept as a dataset for the next training
        datasets = [key for key in keys if f"/datasets/{dataset_id}/" in key]
        assert sorted(outputs + uploads + datasets) == sorted(keys) and len(uploads) == 1
        assert uploads[0].rsplit("/", 1)[1] in job["input"]["training_data_url"]
        names = sorted(key.split(f"/{job['id']}/", 1)[1] for key in outputs)
        steps = job["input"]["number_of_steps"]  # checkpoints every quarter by default, the last is the output
        checkpoints = [f"checkpoints/step_{step:06d}/{name}" for step in range(steps // 4, steps, steps // 4)
                       for name in ("config.json", "lora.safetensors", "lora_comfyui.safetensors")]
        assert names == sorted(["config.json", "lora.safetensors", "lora_comfyui.safetensors",
                                "prepared/prepared_data.zip", *checkpoints])
        kept = sorted(key.split(f"/datasets/{dataset_id}/", 1)[1] for key in datasets)
        assert "contact_sheet.png" in kept and "prepared.zip" in kept
        assert len([name for name in kept if name.startswith("encoded/encoded-")]) == 1  # this model's latents
        assert len([name for name in kept if name.startswith("samples/")]) == job["output"]["metrics"]["samples"]

        # the worker said at start-up what it serves, and /health shows it under its Celery node name
        assert '"message": "serving ltx-2 2.0 (preset: tiny)"' in service.worker_log.read_text()
        health = httpx.get(f"{service.url}/health", timeout=10).json()
        assert health["status"] == "ok" and health["model"]["source"] == "tiny"
        [worker] = health["workers"]
        assert worker["name"] == f"trainer@{socket.gethostname()}"
        assert (worker["model"]["family"], worker["model"]["version"], worker["model"]["format"]) == \
            ("ltx-2", "2.0", "preset")
