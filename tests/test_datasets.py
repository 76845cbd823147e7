"""Datasets as resources: created through the API, prepared once by a worker's `prepare` task, reviewed (report,
contact sheet, sample clips), trained on by several trainings that encode once, deleted when unused."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.storage import dataset_prefix
from ltx2trainer.wiring import Services
from ltx2trainer.worker.prepare_runner import execute_preparation
from ltx2trainer.worker.runner import execute_job
from tests.live_service import FAST_JOB, tiny_dataset_url

DATASET_FIELDS = {key: FAST_JOB[key] for key in ("number_of_frames", "resolution", "aspect_ratio")}
TRAINING = {key: FAST_JOB[key] for key in ("number_of_steps", "rank", "learning_rate")}


@dataclass
class Site:
    client: TestClient
    services: Services
    alice: dict[str, str]
    bob: dict[str, str]
    data_url: str


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("datasets")
    settings = Settings(data_dir=folder / "data", prepare_workers=1)
    services = Services(settings)
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0
    alice = {"Authorization": f"Key {create_key(services.db, 'alice').token}"}
    bob = {"Authorization": f"Key {create_key(services.db, 'bob').token}"}
    with TestClient(app) as client:
        yield Site(client, services, alice, bob, tiny_dataset_url(folder / "media"))
    services.db.engine.dispose()


def _create(site: Site, **fields) -> dict:
    response = site.client.post("/v1/datasets", headers=site.alice,
                                json={"training_data_url": site.data_url, **DATASET_FIELDS, **fields})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def ready(site: Site) -> dict:
    created = _create(site, trigger_phrase="zq style")
    assert created["status"] == "queued"
    assert execute_preparation(created["id"], site.services.settings, services=site.services) == "ready"
    return site.client.get(f"/v1/datasets/{created['id']}", headers=site.alice).json()


def test_a_dataset_is_validated_like_a_training_and_takes_only_dataset_fields(site: Site):
    response = site.client.post("/v1/datasets", headers=site.alice,
                                json={"training_data_url": site.data_url, "learning_rate": 0.1})
    assert response.status_code == 422 and "learning_rate is not a dataset field" in response.text
    adjusted = _create(site, number_of_frames=10)
    assert adjusted["fields"]["number_of_frames"] == 9
    assert adjusted["adjustments"][0]["field"] == "number_of_frames"
    missing = site.client.post("/v1/datasets", headers=site.alice, json={"resolution": "low"})
    assert missing.status_code == 422 and "training_data_url" in missing.text


@pytest.mark.slow
def test_a_prepared_dataset_shows_its_report_contact_sheet_and_clips(site: Site, ready: dict):
    assert ready["status"] == "ready" and ready["samples"] == 2
    assert ready["report"]["counts"]["samples_out"] == 2 and ready["fields"]["trigger_phrase"] == "zq style"
    sheet = Image.open(io.BytesIO(site.client.get(ready["contact_sheet"]["url"]).content))
    assert sheet.format == "PNG" and sheet.width >= 2 * 100
    assert len(ready["sample_files"]) == 2
    for file in ready["sample_files"].values():
        clip = site.client.get(file["url"])
        assert clip.status_code == 200 and clip.content[4:8] == b"ftyp" and file["content_type"] == "video/mp4"
    assert site.client.get(f"/v1/datasets/{ready['id']}", headers=site.bob).status_code == 404
    listed = site.client.get("/v1/datasets", headers=site.alice).json()["data"]
    assert ready["id"] in {d["id"] for d in listed}
    assert site.client.get("/v1/datasets", headers=site.bob).json()["data"] == []


@pytest.mark.slow
def test_two_trainings_on_a_dataset_encode_once(site: Site, ready: dict):
    outputs = []
    for learning_rate in (0.001, 0.002):
        response = site.client.post("/v1/trainings", headers=site.alice, json={
            **TRAINING, "learning_rate": learning_rate, "dataset_id": ready["id"]})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["input"]["training_data_url"] == ready["fields"]["training_data_url"]
        assert job["input"]["trigger_phrase"] == "zq style"
        assert execute_job(job["id"], site.services.settings, worker_id="w1", services=site.services) == "succeeded"
        done = site.client.get(f"/v1/trainings/{job['id']}", headers=site.alice).json()
        logs = [line["message"] for line in site.client.get(f"/v1/trainings/{job['id']}/logs?limit=1000",
                                                            headers=site.alice).json()["data"]]
        assert any(f"training on dataset {ready['id']}" in line for line in logs)
        assert not any("fetching the training data" in line for line in logs)
        outputs.append(done["output"]["metrics"])
    assert (outputs[0]["samples_encoded"], outputs[0]["samples_reused"]) == (2, 0)
    assert (outputs[1]["samples_encoded"], outputs[1]["samples_reused"]) == (0, 2)  # the first one's latents
    again = site.client.get(f"/v1/datasets/{ready['id']}", headers=site.alice).json()
    assert len(again["encoded_for"]) == 1 and len(again["trainings"]) == 2 and again["last_used_at"]


@pytest.mark.slow
@pytest.mark.parametrize(("fields", "message"), [
    ({"resolution": "high"}, "resolution: a training on dataset"),
    ({"training_data_url": "https://example.com/other.zip"}, "uses its training data"),
    ({"dataset_id": "nope"}, "no dataset nope"),
    ({"resume_from": {"training_id": "x", "step": 1}}, "give dataset_id or resume_from, not both"),
])
def test_a_training_on_a_dataset_cannot_change_its_data(site: Site, ready: dict, fields, message):
    response = site.client.post("/v1/trainings", headers=site.alice,
                                json={**TRAINING, "dataset_id": ready["id"], **fields})
    assert response.status_code == 422, response.text
    assert message in response.text


@pytest.mark.slow
def test_another_owners_or_an_unready_dataset_cannot_be_trained_on(site: Site, ready: dict):
    stolen = site.client.post("/v1/trainings", headers=site.bob, json={**TRAINING, "dataset_id": ready["id"]})
    assert stolen.status_code == 422 and f"no dataset {ready['id']}" in stolen.text
    waiting = _create(site)
    early = site.client.post("/v1/trainings", headers=site.alice, json={**TRAINING, "dataset_id": waiting["id"]})
    assert early.status_code == 422 and "is queued; submit once it is ready" in early.text


def test_a_dataset_of_no_media_fails_with_the_reason(site: Site):
    not_a_zip = "data:application/zip;base64," + base64.b64encode(b"hello, not a zip").decode()
    created = _create(site, training_data_url=not_a_zip)
    assert execute_preparation(created["id"], site.services.settings, services=site.services) == "failed"
    failed = site.client.get(f"/v1/datasets/{created['id']}", headers=site.alice).json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "invalid_archive"
    assert "zip" in failed["error"]["message"]
    refused = site.client.post("/v1/trainings", headers=site.alice, json={**TRAINING, "dataset_id": created["id"]})
    assert refused.status_code == 422 and "failed to prepare" in refused.text
    assert execute_preparation(created["id"], site.services.settings, services=site.services) == "skipped"


@pytest.mark.slow
def test_a_dataset_in_use_is_not_deleted_and_an_unused_one_is_with_its_files(site: Site):
    created = _create(site)
    execute_preparation(created["id"], site.services.settings, services=site.services)
    queued = site.client.post("/v1/trainings", headers=site.alice, json={**TRAINING, "dataset_id": created["id"]})
    refused = site.client.delete(f"/v1/datasets/{created['id']}", headers=site.alice)
    assert refused.status_code == 409 and queued.json()["id"] in refused.json()["detail"]
    site.services.lifecycle.request_cancel(queued.json()["id"])
    assert site.client.delete(f"/v1/datasets/{created['id']}", headers=site.bob).status_code == 404
    assert site.client.delete(f"/v1/datasets/{created['id']}", headers=site.alice).status_code == 204
    assert site.client.get(f"/v1/datasets/{created['id']}", headers=site.alice).status_code == 404
    storage_root = site.services.settings.data_dir / "storage"
    assert not (storage_root / dataset_prefix("alice", created["id"])).exists()


# --- sweeps --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_of_four_runs_on_the_dataset_and_compares_them(site: Site, ready: dict):
    price = site.services.settings.price_per_step
    response = site.client.post("/v1/sweeps", headers=site.alice, json={
        "dataset_id": ready["id"], "grid": {"learning_rate": [0.001, 0.003], "rank": [8, 16]},
        "base": {"number_of_steps": 100, "seed": 3}})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert Decimal(sweep["estimated_cost_usd"]) == 400 * price
    assert [t["values"] for t in sweep["trainings"]] == [
        {"learning_rate": 0.001, "rank": 8}, {"learning_rate": 0.001, "rank": 16},
        {"learning_rate": 0.003, "rank": 8}, {"learning_rate": 0.003, "rank": 16}]
    for point in sweep["trainings"]:
        job = site.client.get(f"/v1/trainings/{point['training_id']}", headers=site.alice).json()
        assert job["input"]["dataset_id"] == ready["id"] and job["metadata"]["sweep_id"] == sweep["id"]
        assert (job["input"]["learning_rate"], job["input"]["rank"]) == (point["values"]["learning_rate"],
                                                                         point["values"]["rank"])
        assert execute_job(point["training_id"], site.services.settings, worker_id="w1",
                           services=site.services) == "succeeded"
    compared = site.client.get(f"/v1/sweeps/{sweep['id']}", headers=site.alice).json()
    assert compared["finished"] == 4 and Decimal(compared["cost_usd"]) == 400 * price
    rows = compared["trainings"]
    assert all(row["status"] == "succeeded" and row["final_loss"] is not None for row in rows)
    best = min(rows, key=lambda row: row["final_loss"])
    assert compared["best"] == {"training_id": best["training_id"], "values": best["values"], "by": "final_loss",
                                "loss": best["final_loss"]}
    assert site.client.get(f"/v1/sweeps/{sweep['id']}", headers=site.bob).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "message"), [
    ({"grid": {"learning_rate": [0.001, 0.002, 0.003, 0.004, 0.005], "rank": [8, 16, 32, 64]}}, 422,
     "the grid has 20 points; a sweep runs at most 16"),
    ({"grid": {"resolution": ["low", "high"]}}, 422, "resolution cannot be swept"),
    ({"grid": {"rank": [8, 8]}}, 422, "distinct values"),
    ({"grid": {"rank": [8, 7]}}, 422, "grid point 1 {'rank': 7}"),
    ({"grid": {"rank": [8]}, "base": {"resolution": "high"}}, 422, "base.resolution is not allowed"),
    ({"grid": {"rank": [8, 16]}, "base": {"number_of_steps": 100}, "max_cost_usd": 0.5}, 402,
     "the sweep of 2 trainings would cost $0.9600"),
])
def test_a_sweep_that_cannot_run_creates_nothing(site: Site, ready: dict, body, status, message):
    before = len(site.client.get("/v1/trainings?limit=100", headers=site.alice).json()["data"])
    response = site.client.post("/v1/sweeps", headers=site.alice, json={"dataset_id": ready["id"], **body})
    assert response.status_code == status, response.text
    assert message in response.text
    assert len(site.client.get("/v1/trainings?limit=100", headers=site.alice).json()["data"]) == before


def _sweep_rows(site: Site) -> int:
    from sqlalchemy import func, select

    from ltx2trainer.jobs.sweeps import SweepRow

    with site.services.db.session() as session:
        return session.scalar(select(func.count()).select_from(SweepRow))


def _active_jobs_of_key(site: Site, key_id: str) -> list:
    from sqlalchemy import select

    from ltx2trainer.jobs.models import JobRow, JobStatus

    with site.services.db.session() as session:
        return list(session.scalars(select(JobRow).where(
            JobRow.api_key_id == key_id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))))


@pytest.mark.slow
def test_a_training_submitted_while_a_sweep_is_created_cannot_overspend_the_keys_limit(site: Site, ready: dict):
    """A key whose limit has room for a sweep of 2 trainings or for one more training, not for both. Another
    `POST /v1/trainings` with the key is sent the moment the sweep is about to insert its first training (after
    the sweep's budget check) and is waited for, 3 s at most: with the check and the inserts in one transaction
    it waits for the sweep's lock, then sees the sweep's reservations and is refused (with the check committed
    before the inserts, it was accepted and the key overspent). A sweep refused for the budget leaves no training
    and no sweep."""
    import threading

    from sqlalchemy import event

    from ltx2trainer.billing.ledger import set_spend_limit
    from ltx2trainer.jobs.models import JobRow

    price = site.services.settings.price_per_step
    token = create_key(site.services.db, "alice").token
    key_id, headers = token.split(":")[0], {"Authorization": f"Key {token}"}
    limit = 250 * price  # a sweep of 2 × 100 steps (200) or one training of 100 more, not all 300 steps
    set_spend_limit(site.services.db, key_id, limit)
    competing: dict[str, int] = {}

    def compete() -> None:
        competing["status"] = site.client.post("/v1/trainings", headers=headers, json={
            **TRAINING, "number_of_steps": 100, "dataset_id": ready["id"]}).status_code

    competitor = threading.Thread(target=compete)

    def before_insert(_mapper, _connection, job: JobRow) -> None:  # in the sweep's request, after its check
        if job.api_key_id == key_id and "sweep_id" in (job.metadata_ or {}) and competitor.ident is None:
            competitor.start()
            competitor.join(timeout=3)  # done by now unless it waits for the sweep's lock (well below its
            # SQLite busy timeout of 10 s)

    event.listen(JobRow, "before_insert", before_insert)
    try:
        sweep = site.client.post("/v1/sweeps", headers=headers, json={
            "dataset_id": ready["id"], "grid": {"rank": [8, 16]}, "base": {"number_of_steps": 100}})
    finally:
        event.remove(JobRow, "before_insert", before_insert)
    competitor.join(timeout=60)
    assert competitor.ident is not None and not competitor.is_alive()
    assert sweep.status_code == 201, sweep.text
    assert competing["status"] == 402  # checked after the sweep's trainings, as a submit that came after them
    active = _active_jobs_of_key(site, key_id)
    reserved = sum(job.input["number_of_steps"] for job in active) * price
    assert reserved <= limit, f"{len(active)} trainings reserve ${reserved}, over the key's limit of ${limit}"
    assert sorted(job.id for job in active) == sorted(t["training_id"] for t in sweep.json()["trainings"])

    sweeps_before = _sweep_rows(site)  # 50 steps are left: a sweep of 2 × 100 is refused and creates nothing
    refused = site.client.post("/v1/sweeps", headers=headers, json={
        "dataset_id": ready["id"], "grid": {"rank": [8, 16]}, "base": {"number_of_steps": 100}})
    assert refused.status_code == 402, refused.text
    assert "the sweep of 2 trainings would cost $0.9600, which exceeds this API key's spending limit" in refused.text
    assert sorted(job.id for job in _active_jobs_of_key(site, key_id)) == sorted(job.id for job in active)
    assert _sweep_rows(site) == sweeps_before
    for job in active:
        site.services.lifecycle.request_cancel(job.id)


@pytest.mark.slow
def test_a_sweep_that_fails_while_creating_its_trainings_leaves_none_of_them(site: Site, ready: dict):
    """The database fails as the sweep's second training is inserted: the first one is not left queued on its
    own and there is no sweep."""

    def failing(_session, job, old: str | None, _new: str) -> None:
        if old is None and "sweep_id" in (job.metadata_ or {}):
            inserted.append(job.id)
            if len(inserted) == 2:
                raise RuntimeError("the database went away")

    inserted: list[str] = []
    before, sweeps_before = site.client.get("/v1/trainings?limit=100", headers=site.alice).json()["data"], \
        _sweep_rows(site)
    site.services.lifecycle.listeners.append(failing)
    try:
        with pytest.raises(RuntimeError, match="the database went away"):
            site.client.post("/v1/sweeps", headers=site.alice, json={
                "dataset_id": ready["id"], "grid": {"rank": [8, 16, 32]}, "base": {"number_of_steps": 100}})
    finally:
        site.services.lifecycle.listeners.remove(failing)
    assert len(inserted) == 2
    assert site.client.get("/v1/trainings?limit=100", headers=site.alice).json()["data"] == before
    assert _sweep_rows(site) == sweeps_before
    assert site.services.store.get(inserted[0], "alice") is None


# --- the implicit dataset of a data URL ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_same_data_submitted_again_with_the_same_fields_reuses_its_implicit_dataset(site: Site):
    def train(**fields) -> dict:
        response = site.client.post("/v1/trainings", headers=site.alice, json={
            **TRAINING, **DATASET_FIELDS, "training_data_url": site.data_url, "trigger_phrase": "implicit", **fields})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert execute_job(job_id, site.services.settings, worker_id="w1", services=site.services) == "succeeded"
        job = site.client.get(f"/v1/trainings/{job_id}", headers=site.alice).json()
        logs = [line["message"] for line in site.client.get(f"/v1/trainings/{job_id}/logs?limit=1000",
                                                            headers=site.alice).json()["data"]]
        return {**job["output"]["metrics"], "logs": logs}

    first = train()
    assert (first["samples_encoded"], first["samples_reused"]) == (2, 0) and first["dataset_id"]
    assert any(f"kept as dataset {first['dataset_id']}" in line for line in first["logs"])
    kept = site.client.get(f"/v1/datasets/{first['dataset_id']}", headers=site.alice).json()
    assert kept["status"] == "ready" and kept["samples"] == 2 and len(kept["encoded_for"]) == 1

    second = train(learning_rate=0.002)  # the same bytes and dataset fields: nothing prepared or encoded again
    assert second["dataset_id"] == first["dataset_id"]
    assert (second["samples_encoded"], second["samples_reused"]) == (0, 2)
    assert any("prepared before with the same fields" in line for line in second["logs"])
    assert not any(line.startswith("fetch_and_prepare") for line in second["logs"])

    other = train(trigger_phrase="other")  # other captions: another dataset
    assert other["dataset_id"] != first["dataset_id"] and other["samples_encoded"] == 2


# --- retention -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unused_dataset_expires_after_the_retention_and_says_so(site: Site):
    import datetime as dt

    from ltx2trainer.jobs.datasets import DatasetRow
    from ltx2trainer.worker.app import expire_unused_datasets

    old, in_use = _create(site), _create(site)
    for dataset in (old, in_use):
        assert execute_preparation(dataset["id"], site.services.settings, services=site.services) == "ready"
    queued = site.client.post("/v1/trainings", headers=site.alice, json={**TRAINING, "dataset_id": in_use["id"]})
    assert queued.status_code == 201, queued.text
    with site.services.db.session() as session:  # ten days pass (the database's clock, not the test's)
        for dataset_id in (old["id"], in_use["id"]):
            row = session.get(DatasetRow, dataset_id)
            row.created_at = row.finished_at = row.created_at - dt.timedelta(days=10)
            row.last_used_at = None
    keep_all = Services(site.services.settings.model_copy(update={"dataset_retention_days": 0}))
    assert expire_unused_datasets(keep_all) == []
    week = Services(site.services.settings.model_copy(update={"dataset_retention_days": 7}))
    expired = expire_unused_datasets(week)
    assert old["id"] in expired and in_use["id"] not in expired  # a queued training still needs it
    shown = site.client.get(f"/v1/datasets/{old['id']}", headers=site.alice).json()
    assert shown["status"] == "expired" and "after 7 days without a training" in shown["error"]["message"]
    assert shown["contact_sheet"] is None and shown["sample_files"] == {}
    assert not (site.services.settings.data_dir / "storage" / dataset_prefix("alice", old["id"])).exists()
    refused = site.client.post("/v1/trainings", headers=site.alice, json={**TRAINING, "dataset_id": old["id"]})
    assert refused.status_code == 422 and "expired" in refused.text
    site.services.lifecycle.request_cancel(queued.json()["id"])


def test_a_dataset_whose_preparing_worker_died_is_queued_again_and_prepared(site: Site):
    import datetime as dt

    from ltx2trainer.jobs.datasets import DatasetRow, claim_dataset
    from ltx2trainer.worker.app import sweep_stale_preparations

    created = _create(site)
    assert claim_dataset(site.services.db, created["id"], lease_s=60, max_attempts=3) is not None  # then it died
    assert sweep_stale_preparations(site.services) == []  # its lease still runs: left alone
    with site.services.db.session() as session:
        session.get(DatasetRow, created["id"]).lease_expires_at -= dt.timedelta(minutes=5)
    assert sweep_stale_preparations(site.services) == [created["id"]]
    assert site.client.get(f"/v1/datasets/{created['id']}", headers=site.alice).json()["status"] == "queued"
    assert execute_preparation(created["id"], site.services.settings, services=site.services) == "ready"
