"""The native REST API: output downloads by signed URL, health, metrics, OpenAPI, the gateway's imports and the
status-poll cache."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from ltx2trainer.api import create_app
from ltx2trainer.jobs.db import utcnow
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.jobs.models import JobRow, WorkerRow
from ltx2trainer.jobs.workers import RECENT_S, identify_model, touch_worker
from ltx2trainer.settings import Settings
from ltx2trainer.storage import sign_path
from ltx2trainer.wiring import Services
from ltx2trainer.worker.app import Maintenance
from tests.api_harness import Api, auth, drive_to_success, store_output

# --- file downloads -----------------------------------------------------------------------------------------


def test_a_finished_trainings_output_urls_download_the_files(api: Api):
    job = api.submit()
    api.start(job["id"])
    data = b"\x00LoRA" * 1000
    store_output(api, job["id"], data)
    body = api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice).json()
    assert body["status"] == "succeeded" and body["finished_at"]
    lora = body["output"]["lora_file"]
    assert set(lora) == {"url", "content_type", "file_name", "file_size"}  # no storage key leaks out
    assert (lora["file_name"], lora["file_size"], lora["content_type"]) == \
        ("lora.safetensors", len(data), "application/octet-stream")
    assert lora["url"].startswith("http://testserver/v1/files/")
    assert body["output"]["video"] is None

    download = api.client.get(lora["url"])  # a signed URL needs no key
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert 'filename="lora.safetensors"' in download.headers["content-disposition"]
    config = api.client.get(body["output"]["config_file"]["url"])
    assert config.content == b"rank: 32\n" and config.headers["content-type"].startswith("application/x-yaml")
    assert 'filename="config.yaml"' in config.headers["content-disposition"]


def test_a_tampered_or_expired_file_url_is_refused_with_403(api: Api):
    job = api.submit()
    api.start(job["id"])
    store_output(api, job["id"])
    url = api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice).json()["output"]["lora_file"]["url"]
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}

    def with_query(**changes: str) -> str:
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, **changes})}"

    assert api.client.get(with_query()).status_code == 200
    bad_sig = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
    assert api.client.get(with_query(sig=bad_sig)).status_code == 403
    assert api.client.get(with_query(name="other.bin")).status_code == 403
    assert api.client.get(with_query(type="text/html")).status_code == 403
    assert api.client.get(with_query(expires=str(int(query["expires"]) + 3600))).status_code == 403
    other_key = parts.path.replace("lora.safetensors", "config.yaml")
    assert api.client.get(f"{other_key}?{parts.query}").status_code == 403
    assert api.client.get(parts.path).status_code == 403  # no signature at all

    # correctly signed, but its time is up
    key = parts.path.removeprefix("/v1/files/")
    expired = int(time.time()) - 10
    sig = sign_path(key, expired, query["name"], query["type"], api.settings.secret("file_url_secret"))
    response = api.client.get(with_query(expires=str(expired), sig=sig))
    assert response.status_code == 403
    assert response.json()["detail"] == "invalid or expired file URL"


def test_the_files_route_redirects_an_owner_to_a_signed_url(api: Api):
    job = api.submit()
    drive_to_success(api, job["id"])
    response = api.client.get(f"/v1/trainings/{job['id']}/files/lora_file", headers=api.alice,
                              follow_redirects=False)
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith("http://testserver/v1/files/") and "sig=" in location
    assert api.client.get(location).content == b"LoRA weights \x00\x01"
    # validation videos published during training are reachable by name too
    video = api.client.get(f"/v1/trainings/{job['id']}/files/validation_0", headers=api.alice)
    assert video.status_code == 200 and video.content == b"fake mp4"  # the redirect followed
    assert video.headers["content-type"] == "video/mp4"


def test_the_files_route_is_404_for_a_missing_file_or_another_owner(api: Api):
    job = api.submit()
    assert api.client.get(f"/v1/trainings/{job['id']}/files/lora_file", headers=api.alice).status_code == 404
    api.start(job["id"])
    store_output(api, job["id"])
    assert api.client.get(f"/v1/trainings/{job['id']}/files/video", headers=api.alice).status_code == 404
    assert api.client.get(f"/v1/trainings/{job['id']}/files/nothing", headers=api.alice).status_code == 404
    response = api.client.get(f"/v1/trainings/{job['id']}/files/lora_file", headers=api.bob, follow_redirects=False)
    assert response.status_code == 404


# --- operations ---------------------------------------------------------------------------------------------


TINY = {"family": "ltx-2", "version": "2.0", "format": "preset", "source": "tiny", "file_name": None,
        "size_bytes": None, "header_sha256": None, "quantization": None, "text_encoder": None}


def test_health_shows_the_configured_model_and_what_each_worker_serves(api: Api, tmp_path: Path):
    response = api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": TINY, "workers": [],  # no worker has started yet
                               "queue": {"queued": 0, "running": 0, "consumers": 0, "stalled_jobs": []}}

    # two workers' maintenance threads, as `ltx2trainer worker` starts them: one serving tiny, one whose
    # configured model is not an LTX-2 checkpoint (it keeps serving; its jobs fail with model_error)
    bad_model = tmp_path / "not-ltx.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(bad_model))
    threads = [Maintenance(api.settings, worker_name="trainer@gpu-1", served=identify_model("tiny", None)),
               Maintenance(api.settings, worker_name="trainer@gpu-2", served=identify_model(str(bad_model), None))]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(workers := api.client.get("/health").json()["workers"]) < 2:
            assert time.monotonic() < deadline, workers
            time.sleep(0.05)
    finally:
        for thread in threads:
            thread.stop_event.set()
            thread.join(timeout=10)
    assert [(w["name"], w["model"]) for w in workers] == [
        ("trainer@gpu-1", TINY),
        ("trainer@gpu-2", "model_error: not-ltx.safetensors has no `config` in its safetensors metadata: "
                          "not an official LTX-2 checkpoint (Lightricks' single files carry one); for "
                          "diffusers-format weights pass their folder")]
    assert all(dt.datetime.fromisoformat(w["seen_at"]) > dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
               for w in workers)
    # a worker not seen for longer than RECENT_S is gone from the list
    with api.services.db.session() as session:
        session.get(WorkerRow, "trainer@gpu-2").seen_at = utcnow() - dt.timedelta(seconds=RECENT_S + 1)
    assert [w["name"] for w in api.client.get("/health").json()["workers"]] == ["trainer@gpu-1"]


def test_health_is_degraded_when_jobs_wait_for_no_worker_or_a_job_outlived_its_lease(api: Api):
    queued = api.submit()
    body = api.client.get("/health").json()
    assert body["status"] == "degraded" and body["queue"]["queued"] == 1 and body["queue"]["consumers"] == 0
    assert "no worker seen" in body["problems"][0]
    touch_worker(api.services.db, "trainer@gpu-1", identify_model("tiny", None))
    api.start(queued["id"])
    assert api.client.get("/health").json()["status"] == "ok"  # a consumer, a job within its lease
    with api.services.db.session() as session:  # its worker stops renewing the lease
        session.get(JobRow, queued["id"]).lease_expires_at = utcnow() - dt.timedelta(seconds=1)
    body = api.client.get("/health").json()
    assert body["status"] == "degraded" and body["queue"]["stalled_jobs"] == [queued["id"]]
    assert "past their lease" in body["problems"][0]


def test_health_names_a_bad_configured_model_and_is_503_without_a_database(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", model=str(tmp_path / "missing.safetensors"))
    with TestClient(create_app(settings, services=Services(settings))) as client:
        body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == "model_error: model file not found: <model>"  # the path is the server's own

    unreachable = Settings(data_dir=tmp_path / "data2", database_url="postgresql+psycopg://u@127.0.0.1:9/none")
    services = Services(unreachable, ensure_schema=False)
    with TestClient(create_app(unreachable, services=services)) as client:
        response = client.get("/health")
    assert response.status_code == 503 and response.json()["detail"].startswith("database unreachable")


def test_metrics_count_jobs_by_status_queue_depth_and_step_rate(api: Api):
    for _ in range(3):
        api.submit()
    running = api.submit()
    api.start(running["id"])
    api.services.lifecycle.report_progress(running["id"], {"step": 10, "total_steps": 2000, "steps_per_s": 1.5})
    cancelled = api.submit()
    api.client.post(f"/v1/trainings/{cancelled['id']}/cancel", headers=api.alice)

    response = api.client.get("/metrics")  # scraped without a key
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    for expected in ('ltx2trainer_jobs{status="queued"} 3.0', 'ltx2trainer_jobs{status="running"} 1.0',
                     'ltx2trainer_jobs{status="cancelled"} 1.0', 'ltx2trainer_jobs{status="succeeded"} 0.0',
                     'ltx2trainer_jobs{status="failed"} 0.0', "ltx2trainer_queue_depth 3.0",
                     "ltx2trainer_training_steps_per_second 1.5"):
        assert expected in lines, expected


def test_metrics_can_be_kept_for_admin_keys(api):
    from ltx2trainer.jobs.keys import create_key

    api.services.settings.metrics_require_key = True
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers=api.alice).status_code == 403
    admin = create_key(api.services.db, "ops", is_admin=True).token
    answer = api.client.get("/metrics", headers={"Authorization": f"Key {admin}"})
    assert answer.status_code == 200 and "ltx2trainer_queue_depth" in answer.text


def test_openapi_documents_the_native_routes(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", allow_private_urls=True)
    with TestClient(create_app(settings, services=Services(settings))) as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    paths = schema["paths"]
    expected = {
        "/v1/trainings": {"post", "get"},
        "/v1/trainings/{job_id}": {"get"},
        "/v1/trainings/{job_id}/cancel": {"post"},
        "/v1/trainings/{job_id}/events": {"get"},
        "/v1/trainings/{job_id}/logs": {"get"},
        "/v1/trainings/{job_id}/files/{name}": {"get"},
        "/v1/estimates": {"post"},
        "/health": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert schema["info"]["title"] == "ltx2trainer"
    assert "TrainingJob" in schema["components"]["schemas"]


def test_the_gateway_does_not_import_torch_or_the_pipeline(tmp_path: Path):
    script = textwrap.dedent(f"""
        import sys
        import ltx2trainer.api
        from ltx2trainer.api import create_app
        from ltx2trainer.jobs.keys import create_key
        from ltx2trainer.settings import Settings
        from ltx2trainer.wiring import Services
        from fastapi.testclient import TestClient

        settings = Settings(data_dir={str(tmp_path / 'data')!r})
        services = Services(settings)
        client = TestClient(create_app(settings, services=services))
        headers = {{"Authorization": "Key " + create_key(services.db, "alice").token}}
        job = client.post("/v1/trainings", json={{"training_data_url": "https://example.com/x.zip"}}, headers=headers)
        assert job.status_code == 201, job.text
        assert client.get("/v1/trainings/" + job.json()["id"], headers=headers).status_code == 200
        assert client.post("/v1/estimates", json={{"training_data_url": "https://example.com/x.zip"}},
                           headers=headers).status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/health").json()["model"]["version"] == "2.0"  # described without torch
        # ltx2trainer.model.identity (and the torch-free helpers it reads headers with) may load for /health;
        # torch and the libraries on it, the pipeline and the training engine may not
        heavy = sorted(name for name in sys.modules
                       if name.split(".")[0] in ("torch", "diffusers", "transformers", "torchvision", "peft",
                                                 "accelerate")
                       or name.startswith(("ltx2trainer.pipeline", "ltx2trainer.training", "ltx2trainer.model.lora",
                                           "ltx2trainer.model.presets", "ltx2trainer.model.components")))
        print("HEAVY", heavy)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout


def test_status_polls_are_answered_from_a_short_cache(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    services = Services(settings)
    app = create_app(settings, services=services)
    headers = auth(create_key(services.db, "alice").token)
    bob = auth(create_key(services.db, "bob").token)
    with TestClient(app) as client:
        job = client.post("/v1/trainings", json={"training_data_url": "https://example.com/d.zip"},
                          headers=headers).json()
        assert client.get(f"/v1/trainings/{job['id']}", headers=headers).json()["status"] == "queued"
        services.lifecycle.start(job["id"], "worker-1", lease_s=60, max_attempts=3)  # a worker, elsewhere
        assert client.get(f"/v1/trainings/{job['id']}", headers=headers).json()["status"] == "queued"  # cached
        time.sleep(0.3)
        assert client.get(f"/v1/trainings/{job['id']}", headers=headers).json()["status"] == "running"
        # the cache never answers for another caller: another owner, or no valid key
        assert client.get(f"/v1/trainings/{job['id']}", headers=bob).status_code == 404
        assert client.get(f"/v1/trainings/{job['id']}", headers=auth("key_x:nope")).status_code == 401
        assert client.get(f"/v1/trainings/{job['id']}").status_code == 401
        # the queue protocol's status is cached the same way
        fal_status = f"/fal-ai/ltx2-video-trainer/requests/{job['id']}/status"
        assert client.get(fal_status, headers=headers).json()["status"] == "IN_PROGRESS"
        assert client.get(fal_status, headers=bob).status_code == 404
        # a change made through this gateway is seen at once
        assert client.post(f"/v1/trainings/{job['id']}/cancel", headers=headers).status_code == 202
        assert client.get(f"/v1/trainings/{job['id']}", headers=headers).json()["cancel_requested"] is True
        services.lifecycle.cancel(job["id"])
        assert client.put(f"/fal-ai/ltx2-video-trainer/requests/{job['id']}/cancel", headers=headers).status_code == 400
        assert client.get(fal_status, headers=headers).json()["status"] == "COMPLETED"
    services.db.engine.dispose()
