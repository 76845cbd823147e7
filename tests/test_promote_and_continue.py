"""Promote a checkpoint to be a training's output, and continue a training from a checkpoint (`resume_from`).

One real tiny job (100 steps, a checkpoint every 25) is trained once for the module; the tests promote its
checkpoints through the API and continue it, and check what a user would: the files the output links are the
checkpoint's, the continued job fetched, prepared and encoded nothing, started from the checkpoint's
weights and was billed only its own steps.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import safetensors.torch
from fastapi.testclient import TestClient

from ltx2trainer.api import create_app
from ltx2trainer.billing.ledger import record_steps
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.runner import execute_job
from tests.live_service import FAST_JOB, tiny_dataset_url


@dataclass
class Trained:
    client: TestClient
    services: Services
    alice: dict[str, str]
    bob: dict[str, str]
    job_id: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[Trained]:
    folder = tmp_path_factory.mktemp("promote")
    settings = Settings(data_dir=folder / "data", prepare_workers=1)
    services = Services(settings)
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0
    alice = {"Authorization": f"Key {create_key(services.db, 'alice').token}"}
    bob = {"Authorization": f"Key {create_key(services.db, 'bob').token}"}
    with TestClient(app) as client:
        body = {**FAST_JOB, "training_data_url": tiny_dataset_url(folder / "media"), "checkpoint_every_steps": 25,
                "trigger_phrase": "zq style"}
        response = client.post("/v1/trainings", json=body, headers=alice)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert execute_job(job_id, settings, worker_id="w1", services=services) == "succeeded"
        yield Trained(client, services, alice, bob, job_id)
    services.db.engine.dispose()


def _get(t: Trained, path: str, headers=None) -> dict:
    response = t.client.get(path, headers=headers or t.alice)
    assert response.status_code == 200, response.text
    return response.json()


def _download(t: Trained, file: dict) -> bytes:
    response = t.client.get(file["url"])
    assert response.status_code == 200, response.text
    return response.content


def _promote(t: Trained, step: int, job_id: str | None = None, headers=None):
    return t.client.post(f"/v1/trainings/{job_id or t.job_id}/checkpoints/{step}/promote",
                         headers=headers or t.alice)


def _checkpoints(t: Trained, job_id: str | None = None) -> dict[int, dict]:
    listed = _get(t, f"/v1/trainings/{job_id or t.job_id}/checkpoints")["checkpoints"]
    return {c["step"]: c for c in listed}


@pytest.mark.slow
def test_promoting_a_checkpoint_makes_its_files_the_output_and_can_be_undone(trained: Trained):
    t = trained
    before = _checkpoints(t)
    assert list(before) == [25, 50, 75, 100] and not any(c["promoted"] for c in before.values())
    final_lora = _download(t, _get(t, f"/v1/trainings/{t.job_id}")["output"]["lora_file"])

    response = _promote(t, 50)
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["promoted_step"] == 50
    for name in ("lora_file", "lora_comfyui_file", "config_file"):
        assert _download(t, output[name]) == _download(t, before[50]["files"][name]), name
    assert json.loads(_download(t, output["config_file"]))["training"]["steps"] == 50
    assert json.loads(_download(t, output["config_file"]))["trigger_phrase"] == "zq style"
    # the status, the history, the queue facade's result and the files route all say so
    assert _get(t, f"/v1/trainings/{t.job_id}")["output"]["promoted_step"] == 50
    history = _get(t, "/v1/trainings")["data"]
    assert next(job for job in history if job["id"] == t.job_id)["output"]["promoted_step"] == 50
    redirect = t.client.get(f"/v1/trainings/{t.job_id}/files/lora_file", headers=t.alice)
    assert redirect.content == _download(t, before[50]["files"]["lora_file"])
    listed = _checkpoints(t)
    assert [step for step, c in listed.items() if c["promoted"]] == [50]
    assert listed[100]["final"] and _download(t, listed[100]["files"]["lora_file"]) == final_lora  # kept

    again = _promote(t, 50)  # idempotent
    assert again.status_code == 200 and again.json()["output"]["promoted_step"] == 50
    assert [e for e in _get(t, f"/v1/trainings/{t.job_id}/logs")["data"]
            if e["message"].startswith("output promoted")].__len__() == 1

    restored = _promote(t, 100)  # the last step: the job's own output again
    assert restored.status_code == 200, restored.text
    assert restored.json()["output"].get("promoted_step") is None
    assert _download(t, restored.json()["output"]["lora_file"]) == final_lora
    assert not any(c["promoted"] for c in _checkpoints(t).values())


@pytest.mark.slow
def test_promote_refuses_what_it_cannot_do_with_a_clear_answer(trained: Trained):
    t = trained
    missing = _promote(t, 40)
    assert missing.status_code == 404 and "no checkpoint of step 40" in missing.json()["detail"]
    assert _promote(t, 50, headers=t.bob).status_code == 404  # another owner's job does not exist for bob
    running = t.client.post("/v1/trainings", headers=t.alice, json={
        **FAST_JOB, "training_data_url": "https://example.com/d.zip"}).json()["id"]
    t.services.lifecycle.start(running, "w2", lease_s=60, max_attempts=3)
    refused = _promote(t, 50, job_id=running)
    assert refused.status_code == 409 and "is running" in refused.json()["detail"]
    t.services.lifecycle.fail(running, "internal_error", "test over")


@pytest.mark.parametrize(("fields", "status", "message"), [
    ({"resume_from": {"training_id": "nope", "step": 50}}, 422, "no training nope"),
    ({"resume_from": {"step": 30}}, 422, "has no checkpoint of step 30 (its checkpoints: 25, 50, 75, 100)"),
    ({"resume_from": {"step": 50}, "rank": 16}, 422, "rank: a training continued from"),
    ({"resume_from": {"step": 50}, "training_data_url": "https://example.com/other.zip"}, 422,
     "uses its training data"),
    ({"resume_from": {"step": 50}, "resolution": "high"}, 422, "uses its resolution"),
    ({"resume_from": {"step": 50}, "holdout_fraction": 0.5}, 422, "uses its holdout_fraction (null)"),
    ({"resume_from": {"step": 0}}, 422, "has no checkpoint of step 0"),
    ({"resume_from": {"training_id": "x"}}, 422, "Field required"),
])
@pytest.mark.slow
def test_resume_from_refuses_what_it_cannot_honour(trained: Trained, fields, status, message):
    t = trained
    resume = fields.get("resume_from")
    if resume is not None and "training_id" not in resume:
        fields = {**fields, "resume_from": {"training_id": t.job_id, **resume}}
    response = t.client.post("/v1/trainings", headers=t.alice, json={"number_of_steps": 100, **fields})
    assert response.status_code == status, response.text
    assert message in response.text
    other = t.client.post("/v1/trainings", headers=t.bob, json={
        "number_of_steps": 100, "resume_from": {"training_id": t.job_id, "step": 50}})
    assert other.status_code == 422 and f"no training {t.job_id}" in other.text  # bob cannot see alice's


@pytest.mark.slow
def test_a_continued_training_starts_from_the_checkpoint_encodes_nothing_and_bills_its_own_steps(trained: Trained):
    t = trained
    parent = _get(t, f"/v1/trainings/{t.job_id}")
    response = t.client.post("/v1/trainings", headers=t.alice, json={
        "resume_from": {"training_id": t.job_id, "step": 50}, "number_of_steps": 100, "learning_rate": 1e-6,
        "checkpoint_every_steps": 50})
    assert response.status_code == 201, response.text
    child = response.json()
    for name in ("training_data_url", "rank", "number_of_frames", "resolution", "trigger_phrase"):
        assert child["input"][name] == parent["input"][name], name  # the parent's data and adapter shape
    assert Decimal(child["estimated_cost_usd"]) == 100 * t.services.settings.price_per_step

    assert execute_job(child["id"], t.services.settings, worker_id="w1", services=t.services) == "succeeded"
    done = _get(t, f"/v1/trainings/{child['id']}")
    assert done["usage"]["steps_completed"] == 100 and done["usage"]["steps_billed"] == 100
    assert Decimal(done["usage"]["amount_usd"]) == 100 * t.services.settings.price_per_step
    logs = [line["message"] for line in _get(t, f"/v1/trainings/{child['id']}/logs?limit=1000")["data"]]
    assert any(f"continuing training {t.job_id} from its checkpoint of step 50" in line for line in logs)
    assert any(line.startswith("encoded 0 samples (2 cached)") for line in logs), logs
    assert not any("fetching the training data" in line for line in logs)
    config = json.loads(_download(t, done["output"]["config_file"]))
    assert config["parent"] == {"training_id": t.job_id, "step": 50}
    assert config["training_input"]["resume_from"] == {"training_id": t.job_id, "step": 50}

    # It started from step 50's adapter: at the smallest learning rate 100 steps barely move it, while a fresh
    # adapter starts with every B matrix at zero.
    start = safetensors.torch.load(_download(t, _checkpoints(t)[50]["files"]["lora_file"]))
    end = safetensors.torch.load(_download(t, done["output"]["lora_file"]))
    assert start.keys() == end.keys()
    b_keys = [key for key in start if "lora_B" in key]
    moved = max((end[k].float() - start[k].float()).abs().max().item() for k in b_keys)
    size = max(start[k].float().abs().max().item() for k in b_keys)
    assert size > 0 and moved < 0.05 * size, (moved, size)

    # and it can be continued in turn (its own prepared data was stored too)
    grandchild = t.client.post("/v1/trainings", headers=t.alice, json={
        "resume_from": {"training_id": child["id"], "step": 100}, "number_of_steps": 100})
    assert grandchild.status_code == 201, grandchild.text
    assert grandchild.json()["input"]["training_data_url"] == parent["input"]["training_data_url"]


@pytest.mark.slow
def test_the_stored_prepared_data_holds_the_dataset_and_its_latents_only(trained: Trained):
    from ltx2trainer.pipeline.continuation import PREPARED_ARCHIVE
    from ltx2trainer.storage import job_prefix

    t = trained
    with t.services.storage.open(job_prefix("alice", t.job_id) + PREPARED_ARCHIVE) as handle:
        names = zipfile.ZipFile(io.BytesIO(handle.read())).namelist()
    assert "dataset/manifest.jsonl" in names or any(n.startswith("dataset/manifest") for n in names), names
    assert sum(1 for n in names if "/samples/" in n and n.endswith(".safetensors")) == 2
    assert all(n.startswith("dataset/") or n.startswith("train/encoded-") for n in names), names
    assert not any("/." in n or "checkpoints" in n for n in names)


@pytest.mark.slow
def test_a_training_without_stored_prepared_data_cannot_be_continued(trained: Trained, tmp_path):
    """A job that finished before prepared data was kept (no archive): the worker says so, bills nothing."""
    t = trained
    old = t.client.post("/v1/trainings", headers=t.alice, json={**FAST_JOB,
                                                                 "training_data_url": "https://example.com/d.zip"})
    old_id = old.json()["id"]
    lifecycle = t.services.lifecycle
    lifecycle.start(old_id, "w3", lease_s=60, max_attempts=3)
    record_steps(t.services.db, old_id, list(range(1, 101)), t.services.settings.price_per_step)
    with t.services.db.session() as session:  # the parent's stored reference (the rendered one has a url)
        from ltx2trainer.jobs.models import JobRow

        stored = session.get(JobRow, t.job_id).output
    lifecycle.succeed(old_id, {"lora_file": stored["lora_file"], "config_file": stored["config_file"],
                               "metrics": {"steps": 100, "final_loss": 0.1, "training_seconds": 1, "samples": 2}})
    child = t.client.post("/v1/trainings", headers=t.alice, json={
        "resume_from": {"training_id": old_id, "step": 100}, "number_of_steps": 100})
    assert child.status_code == 201, child.text
    assert execute_job(child.json()["id"], t.services.settings, worker_id="w1", services=t.services) == "failed"
    failed = _get(t, f"/v1/trainings/{child.json()['id']}")
    assert "prepared data is not stored" in failed["error"]["message"]
    assert failed["usage"]["steps_completed"] == 0



@pytest.mark.parametrize("name", ["../outside.txt", "other/file.txt", "train/checkpoints/step_000050/x", "/abs.txt"])
def test_unpacking_prepared_data_refuses_anything_outside_its_two_folders(tmp_path, name):
    from ltx2trainer.errors import UserInputError
    from ltx2trainer.pipeline.continuation import unpack_prepared

    archive = tmp_path / "prepared.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dataset/manifest.jsonl", "{}\n")
        zf.writestr(name, "x")
    with pytest.raises(UserInputError, match="unexpected entry"):
        unpack_prepared(archive, tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "outside.txt").exists()
