"""Checkpoints as API resources (issue 13): published every `checkpoint_every_steps`, listed by
`GET /v1/trainings/{id}/checkpoints` with the final output last, announced by `training.checkpoint` webhooks
(filtered by `webhook_events`), and the input's validation of both fields."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import safetensors.torch
from fastapi.testclient import TestClient

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.notify.models import WebhookMessageRow
from ltx2trainer.notify.webhooks import CHECKPOINT_EVENT_TYPE, EVENT_TYPES, WebhookDeliverer
from ltx2trainer.schemas import WEBHOOK_EVENT_TYPES, TrainingInput
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.runner import execute_job
from tests.api_harness import DATA_URL, Api
from tests.live_service import FAST_JOB, tiny_dataset_url
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401, F811 - the receiver fixture

CHECKPOINT = {"step": 50, "train_loss": 0.5, "files": {"lora_file": None, "lora_comfyui_file": None, "video": None}}


# --- the input ----------------------------------------------------------------------------------------------


def test_checkpoint_interval_defaults_to_the_validation_interval_and_is_checked():
    assert TrainingInput(training_data_url=DATA_URL, number_of_steps=2000).checkpoint_interval == 500
    assert TrainingInput(training_data_url=DATA_URL, number_of_steps=2000,
                         checkpoint_every_steps=100).checkpoint_interval == 100
    assert set(WEBHOOK_EVENT_TYPES) == {*EVENT_TYPES.values(), CHECKPOINT_EVENT_TYPE}  # the schema names them all


@pytest.mark.parametrize(("value", "message"), [
    (0, "greater than or equal to 1"),
    (101, "checkpoint_every_steps (101) must be at most number_of_steps (100)"),
])
def test_a_bad_checkpoint_interval_is_a_clear_422(api: Api, value, message):
    response = api.client.post("/v1/trainings", headers=api.alice, json={
        "training_data_url": DATA_URL, "number_of_steps": 100, "checkpoint_every_steps": value})
    assert response.status_code == 422, response.text
    assert message in response.text


def test_an_unknown_webhook_event_is_a_clear_422(api: Api):
    response = api.client.post("/v1/trainings", headers=api.alice, json={
        "training_data_url": DATA_URL, "webhook_events": ["training.succeeded", "training.finished"]})
    assert response.status_code == 422, response.text
    assert "unknown event type 'training.finished'" in response.text
    assert api.submit(webhook_events=["training.checkpoint"])["input"]["webhook_events"] == ["training.checkpoint"]


# --- the lifecycle and the outbox ---------------------------------------------------------------------------


def _running_job(api: Api, **fields) -> str:
    job_id = api.submit(webhook_url="https://hooks.example.com/t", **fields)["id"]
    api.start(job_id)
    return job_id


def _event_types(api: Api, job_id: str) -> list[str]:
    with api.services.db.session() as session:
        rows = session.query(WebhookMessageRow).filter_by(job_id=job_id).all()
        return sorted(row.event_type for row in rows)


def test_a_checkpoint_is_recorded_once_per_step_with_its_webhook(api: Api):
    job_id = _running_job(api)
    lifecycle = api.services.lifecycle
    assert lifecycle.record_checkpoint(job_id, CHECKPOINT)
    assert not lifecycle.record_checkpoint(job_id, CHECKPOINT)  # a resumed attempt publishing it again
    events = api.services.store.events(job_id, kinds=("checkpoint",))
    assert len(events) == 1 and events[0].data["final"] is False and events[0].data["created_at"]
    assert _event_types(api, job_id) == ["training.checkpoint", "training.started"]
    listed = api.client.get(f"/v1/trainings/{job_id}/checkpoints", headers=api.alice).json()["checkpoints"]
    assert [(c["step"], c["final"], c["holdout_loss"]) for c in listed] == [(50, False, None)]
    assert Decimal(listed[0]["cost_usd"]) == 50 * api.settings.price_per_step
    assert api.client.get(f"/v1/trainings/{job_id}/checkpoints", headers=api.bob).status_code == 404


def test_webhook_events_filters_the_native_events(api: Api):
    job_id = _running_job(api, webhook_events=["training.succeeded"])
    api.services.lifecycle.record_checkpoint(job_id, CHECKPOINT)
    api.services.lifecycle.succeed(job_id, {})
    assert _event_types(api, job_id) == ["training.succeeded"]


# --- a real job ----------------------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path) -> Iterator[tuple[TestClient, Services, dict[str, str], dict[str, str]]]:
    settings = Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1,
                        webhook_secret=SECRET, webhook_timeout_s=5)
    services = Services(settings)
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0
    alice = {"Authorization": f"Key {create_key(services.db, 'alice').token}"}
    bob = {"Authorization": f"Key {create_key(services.db, 'bob').token}"}
    with TestClient(app) as client:
        yield client, services, alice, bob
    services.db.engine.dispose()


@pytest.mark.slow
def test_a_job_publishes_its_checkpoints_and_lists_the_final_one_last(tmp_path, gateway, receiver: Receiver):  # noqa: F811
    client, services, alice, bob = gateway
    body = {**FAST_JOB, "training_data_url": tiny_dataset_url(tmp_path / "media"), "checkpoint_every_steps": 25,
            "validation": [{"prompt": "a test clip"}], "validation_resolution": "low",
            "validation_aspect_ratio": "16:9", "validation_number_of_frames": 9,
            "webhook_url": receiver.url("/hook")}
    response = client.post("/v1/trainings", json=body, headers=alice)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "succeeded"

    response = client.get(f"/v1/trainings/{job_id}/checkpoints", headers=alice)
    assert response.status_code == 200, response.text
    checkpoints = response.json()["checkpoints"]
    assert [(c["step"], c["final"]) for c in checkpoints] == [(25, False), (50, False), (75, False), (100, True)]
    assert client.get(f"/v1/trainings/{job_id}/checkpoints", headers=bob).status_code == 404
    price = services.settings.price_per_step
    weights = {}
    for checkpoint in checkpoints:
        assert Decimal(checkpoint["cost_usd"]) == checkpoint["step"] * price
        assert checkpoint["train_loss"] is not None and checkpoint["created_at"]
        files = checkpoint["files"]
        assert files["video"] is not None and files["video"]["content_type"] == "video/mp4"
        for name in ("lora_file", "lora_comfyui_file"):
            download = client.get(files[name]["url"])  # a signed File, like the outputs
            assert download.status_code == 200 and len(download.content) == files[name]["file_size"]
            weights[checkpoint["step"], name] = safetensors.torch.load(download.content)
    assert weights[100, "lora_file"].keys() == weights[50, "lora_file"].keys()
    assert any(not weights[100, "lora_file"][k].equal(weights[50, "lora_file"][k]) for k in weights[50, "lora_file"])
    final = client.get(f"/v1/trainings/{job_id}", headers=alice).json()["output"]
    assert checkpoints[-1]["files"]["lora_file"]["file_size"] == final["lora_file"]["file_size"]
    # also under the job's files route
    redirect = client.get(f"/v1/trainings/{job_id}/files/checkpoints/step_000050/lora.safetensors",
                          headers=alice, follow_redirects=False)
    assert redirect.status_code == 307

    with WebhookDeliverer(services.db, services.settings) as deliverer:
        deliverer.deliver_due()
    payloads = [r.payload for r in receiver.on("/hook")]
    assert all(isinstance(p, dict) for p in payloads), payloads
    sent = [(p["type"], p["data"].get("checkpoint", {}).get("step")) for p in sorted(payloads,
                                                                                      key=lambda p: p["sequence"])]
    assert sent == [("training.started", None), ("training.checkpoint", 25), ("training.checkpoint", 50),
                    ("training.checkpoint", 75), ("training.succeeded", None)]
    hooked = next(p for p in payloads if p["data"].get("checkpoint", {}).get("step") == 50)["data"]["checkpoint"]
    assert hooked["files"]["lora_file"]["url"].startswith("http")  # signed when sent
    assert safetensors.torch.load(client.get(hooked["files"]["lora_file"]["url"]).content).keys() == \
        weights[50, "lora_file"].keys()
