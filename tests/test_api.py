"""The gateway's native REST API, in process: FastAPI's TestClient against `create_app(settings)`.

There is no worker here. Submitted jobs stay queued (the queue is the real embedded filesystem broker, so
`enqueue` only writes a message file); tests that need a job to run drive `services.lifecycle` directly,
exactly as a worker would (the lifecycle is the worker's only way to change a job). Tests that touch the job
store run twice, on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key, revoke_key
from ltx2trainer.jobs.models import ApiKeyRow
from ltx2trainer.settings import Settings
from ltx2trainer.storage import job_prefix, sign_path
from ltx2trainer.wiring import Services

DATA_URL = "https://example.com/clips.zip"
WORKER = "test-worker"


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    services: Services
    settings: Settings
    alice: dict[str, str]  # Authorization headers of two owners
    bob: dict[str, str]
    alice_token: str

    def submit(self, headers: dict[str, str] | None = None, **fields) -> dict:
        response = self.client.post("/v1/trainings", json={"training_data_url": DATA_URL, **fields},
                                    headers=headers or self.alice)
        assert response.status_code == 201, response.text
        return response.json()

    def start(self, job_id: str) -> None:
        """What a worker does when it picks the job up."""
        assert self.services.lifecycle.start(job_id, WORKER, lease_s=60, max_attempts=3) is not None

    def queued_messages(self) -> list[str]:
        """The job ids of the messages waiting in the embedded broker."""
        folder = self.settings.data_dir / "broker" / "queue"
        return [msg["headers"]["argsrepr"].strip("[]'") for msg in
                (json.loads(path.read_text()) for path in sorted(folder.glob("*.msg")))]


def auth(token: str, scheme: str = "Key") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, allow_private_urls=True)
    services = Services(settings)
    app = create_app(settings, services=services)
    # These tests change jobs behind the gateway's back (as a worker would) and read them at once: no status
    # cache here (its 0.2 s of staleness is tested on its own below).
    app.state.poll_cache.ttl_s = 0
    alice = create_key(services.db, "alice").token
    bob = create_key(services.db, "bob").token
    with TestClient(app) as client:
        yield Api(client, app, services, settings, auth(alice), auth(bob), alice)
    services.db.engine.dispose()


def store_output(api: Api, job_id: str, data: bytes = b"LoRA weights \x00\x01") -> dict:
    """Put a LoRA and a config into the local storage and finish the (running) job with them as its output."""
    prefix = job_prefix("alice", job_id)
    storage = api.services.storage
    storage.put_bytes(prefix + "lora.safetensors", data, "application/octet-stream")
    storage.put_bytes(prefix + "config.yaml", b"rank: 32\n", "application/x-yaml")
    output = {
        "lora_file": {"key": prefix + "lora.safetensors", "content_type": "application/octet-stream",
                      "file_name": "lora.safetensors", "file_size": len(data)},
        "config_file": {"key": prefix + "config.yaml", "content_type": "application/x-yaml",
                        "file_name": "config.yaml", "file_size": 9},
        "video": None,
        "debug_dataset": None,
    }
    api.services.lifecycle.succeed(job_id, output)
    return output


def read_sse(client: TestClient, url: str, headers: dict[str, str]) -> list[dict]:
    """All events of a stream until the server ends it: [{"id": int | None, "event": str, "data": …}]."""
    events, current = [], {}
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
                current.setdefault("id", None)
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    if current:
        events.append(current)
    return events


# --- authentication ---------------------------------------------------------------------------------------


def test_requests_without_a_key_are_refused_with_401(api: Api):
    for method, path in [("GET", "/v1/trainings"), ("POST", "/v1/trainings"), ("GET", "/v1/trainings/x"),
                         ("POST", "/v1/trainings/x/cancel"), ("GET", "/v1/trainings/x/logs"),
                         ("GET", "/v1/trainings/x/events"), ("POST", "/v1/estimates")]:
        response = api.client.request(method, path, json={"training_data_url": DATA_URL})
        assert response.status_code == 401, (method, path, response.text)
        assert "API key" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Key")


def test_a_wrong_or_malformed_key_is_refused_with_401(api: Api):
    key_id, secret = api.alice_token.split(":", 1)
    for header in [f"Key {key_id}:{secret}x", f"Key key_0000000000000000:{secret}", f"Key {key_id}",
                   f"Basic {api.alice_token}", "Key ", api.alice_token]:
        response = api.client.get("/v1/trainings", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_key_and_bearer_schemes_both_work(api: Api):
    for scheme in ("Key", "Bearer", "key", "bearer"):
        response = api.client.get("/v1/trainings", headers=auth(api.alice_token, scheme))
        assert response.status_code == 200, scheme


def test_a_revoked_key_is_refused_once_the_auth_cache_forgets_it(api: Api):
    """Key checks are cached for AUTH_CACHE_TTL_S (10 s), so a revocation takes effect within that time. Here
    the cache's TTL is shortened to show it; clearing `app.state.auth_cache` makes it immediate."""
    api.app.state.auth_cache.ttl_s = 0.3
    token = create_key(api.services.db, "carol").token
    assert api.client.get("/v1/trainings", headers=auth(token)).status_code == 200
    assert revoke_key(api.services.db, token.split(":")[0])
    time.sleep(0.4)
    assert api.client.get("/v1/trainings", headers=auth(token)).status_code == 401
    assert api.client.get("/v1/trainings", headers=auth(token, "Bearer")).status_code == 401


def test_a_revoked_key_is_refused_at_once_after_clearing_the_auth_cache(api: Api):
    token = create_key(api.services.db, "carol").token
    assert api.client.get("/v1/trainings", headers=auth(token)).status_code == 200
    revoke_key(api.services.db, token.split(":")[0])
    api.app.state.auth_cache.clear()
    assert api.client.get("/v1/trainings", headers=auth(token)).status_code == 401
    assert api.client.get("/v1/trainings", headers=api.alice).status_code == 200  # other keys unaffected


def test_key_secrets_are_stored_only_as_hashes(api: Api):
    key_id, secret = api.alice_token.split(":", 1)
    with api.services.db.session() as session:
        rows = list(session.scalars(select(ApiKeyRow)))
        row = session.get(ApiKeyRow, key_id)
    for stored in rows:
        values = [str(getattr(stored, column.key)) for column in ApiKeyRow.__table__.columns]
        assert not any(secret in value for value in values)
    assert row.owner == "alice"
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()


# --- validation --------------------------------------------------------------------------------------------


def test_every_schema_violation_gets_a_field_level_422_entry(api: Api):
    response = api.client.post("/v1/trainings", headers=api.alice,
                               json={"training_data_url": DATA_URL, "rank": 7, "frame_rate": 100})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert sorted(entry["loc"][-1] for entry in detail) == ["frame_rate", "rank"]
    for entry in detail:
        assert entry["loc"][0] == "body" and entry["msg"] and entry["type"]
    assert "8, 16, 32, 64 or 128" in next(e for e in detail if e["loc"][-1] == "rank")["msg"]
    assert api.queued_messages() == []  # nothing was queued


def test_an_unknown_field_is_refused_with_422(api: Api):
    response = api.client.post("/v1/trainings", headers=api.alice,
                               json={"training_data_url": DATA_URL, "number_of_stepz": 500})
    assert response.status_code == 422
    [entry] = response.json()["detail"]
    assert entry["loc"] == ["body", "number_of_stepz"]
    assert entry["type"] == "extra_forbidden"


def test_a_missing_training_data_url_or_a_non_object_body_is_refused_with_422(api: Api):
    response = api.client.post("/v1/trainings", headers=api.alice, json={"rank": 8})
    assert response.status_code == 422
    assert [entry["loc"] for entry in response.json()["detail"]] == [["body", "training_data_url"]]
    response = api.client.post("/v1/trainings", headers=api.alice, json=["not", "an", "object"])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    response = api.client.post("/v1/trainings", content=b"{not json",
                               headers={**api.alice, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_a_frame_count_that_is_not_8n_plus_1_is_adjusted_and_the_response_says_so(api: Api):
    job = api.submit(number_of_frames=90)
    assert job["input"]["number_of_frames"] == 89
    [adjustment] = job["adjustments"]
    assert adjustment["field"] == "number_of_frames"
    assert (adjustment["requested"], adjustment["used"]) == (90, 89)
    assert "8n+1" in adjustment["reason"]
    # ...and it is remembered with the job
    again = api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice).json()
    assert again["adjustments"] == job["adjustments"]
    assert again["input"]["number_of_frames"] == 89


# --- submitting ---------------------------------------------------------------------------------------------


def test_submitting_a_training_returns_201_with_the_queued_job(api: Api):
    response = api.client.post("/v1/trainings", headers=api.alice,
                               json={"training_data_url": DATA_URL, "number_of_steps": 500,
                                     "metadata": {"project": "cats"}})
    assert response.status_code == 201
    job = response.json()
    assert job["object"] == "training"
    assert job["status"] == "queued" and job["phase"] is None
    assert job["queue_position"] == 0
    assert job["progress"] == {"step": 0, "total_steps": 500, "loss": None, "eta_s": None, "fraction": 0.0}
    assert job["estimated_cost_usd"] == "2.4000"  # 500 steps x 0.0048
    assert job["metadata"] == {"project": "cats"}
    assert job["input"]["training_data_url"] == DATA_URL and job["input"]["rank"] == 32  # defaults filled in
    assert job["adjustments"] == [] and job["output"] is None and job["error"] is None
    assert job["created_at"] and job["started_at"] is None and job["finished_at"] is None
    base = f"http://testserver/v1/trainings/{job['id']}"
    assert job["urls"] == {"get": base, "cancel": f"{base}/cancel", "events": f"{base}/events",
                           "logs": f"{base}/logs"}
    assert api.queued_messages() == [job["id"]]  # handed to the queue, once


def test_a_second_submission_waits_behind_the_first(api: Api):
    first = api.submit()
    second = api.submit(headers=api.bob)  # the queue is shared by everyone
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    assert api.client.get(f"/v1/trainings/{second['id']}", headers=api.bob).json()["queue_position"] == 1
    api.start(first["id"])
    assert api.client.get(f"/v1/trainings/{second['id']}", headers=api.bob).json()["queue_position"] == 0
    running = api.client.get(f"/v1/trainings/{first['id']}", headers=api.alice).json()
    assert running["status"] == "running" and running["queue_position"] is None


def test_an_idempotency_key_replay_returns_the_original_job_without_queueing_it_again(api: Api):
    body = {"training_data_url": DATA_URL, "number_of_steps": 300}
    headers = {**api.alice, "Idempotency-Key": "order-17"}
    first = api.client.post("/v1/trainings", json=body, headers=headers)
    replay = api.client.post("/v1/trainings", json=body, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["input"] == first.json()["input"]
    assert api.queued_messages() == [first.json()["id"]]
    listed = api.client.get("/v1/trainings", headers=api.alice).json()["data"]
    assert [job["id"] for job in listed] == [first.json()["id"]]


def test_reusing_an_idempotency_key_with_a_different_body_is_refused_with_422(api: Api):
    headers = {**api.alice, "Idempotency-Key": "order-18"}
    first = api.client.post("/v1/trainings", json={"training_data_url": DATA_URL}, headers=headers)
    conflict = api.client.post("/v1/trainings", json={"training_data_url": DATA_URL, "rank": 8}, headers=headers)
    assert conflict.status_code == 422  # not 409: queue clients retry 409s
    detail = conflict.json()["detail"]
    assert "Idempotency-Key" in detail and first.json()["id"] in detail
    assert api.queued_messages() == [first.json()["id"]]


def test_the_same_idempotency_key_of_another_owner_is_independent(api: Api):
    body = {"training_data_url": DATA_URL}
    mine = api.client.post("/v1/trainings", json=body, headers={**api.alice, "Idempotency-Key": "k1"})
    theirs = api.client.post("/v1/trainings", json={**body, "rank": 8}, headers={**api.bob, "Idempotency-Key": "k1"})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    assert api.client.get(f"/v1/trainings/{theirs.json()['id']}", headers=api.alice).status_code == 404


def test_an_overlong_idempotency_key_is_refused_with_422(api: Api):
    response = api.client.post("/v1/trainings", json={"training_data_url": DATA_URL},
                               headers={**api.alice, "Idempotency-Key": "k" * 257})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


# --- reading jobs -------------------------------------------------------------------------------------------


def test_an_owner_can_read_their_training(api: Api):
    job = api.submit()
    response = api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice)
    assert response.status_code == 200
    assert response.json()["id"] == job["id"] and response.json()["status"] == "queued"


def test_another_owners_training_is_a_404_like_a_missing_one(api: Api):
    job = api.submit()
    theirs = api.client.get(f"/v1/trainings/{job['id']}", headers=api.bob)
    missing = api.client.get("/v1/trainings/00000000-0000-0000-0000-000000000000", headers=api.bob)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"detail": f"no training {job['id']}"}
    assert missing.json() == {"detail": "no training 00000000-0000-0000-0000-000000000000"}
    for path in ("logs", "events", "files/lora_file"):
        assert api.client.get(f"/v1/trainings/{job['id']}/{path}", headers=api.bob).status_code == 404, path


def test_history_lists_only_the_callers_trainings_newest_first(api: Api):
    ids = [api.submit()["id"] for _ in range(3)]
    api.submit(headers=api.bob)
    page = api.client.get("/v1/trainings", headers=api.alice).json()
    assert page["object"] == "list"
    assert [job["id"] for job in page["data"]] == ids[::-1]
    assert page["has_more"] is False and page["next_cursor"] is None
    assert len(api.client.get("/v1/trainings", headers=api.bob).json()["data"]) == 1


def test_history_filters_by_status(api: Api):
    ids = [api.submit()["id"] for _ in range(3)]
    api.client.post(f"/v1/trainings/{ids[1]}/cancel", headers=api.alice)
    api.start(ids[2])

    def listed(status: str) -> list[str]:
        response = api.client.get("/v1/trainings", params={"status": status}, headers=api.alice)
        assert response.status_code == 200
        assert all(job["status"] == status for job in response.json()["data"])
        return [job["id"] for job in response.json()["data"]]

    assert listed("queued") == [ids[0]]
    assert listed("cancelled") == [ids[1]]
    assert listed("running") == [ids[2]]
    assert listed("succeeded") == []


def test_history_pages_through_every_training_exactly_once(api: Api):
    ids = [api.submit()["id"] for _ in range(5)]
    seen, pages, cursor = [], [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/trainings", params=params, headers=api.alice).json()
        pages.append(len(page["data"]))
        seen += [job["id"] for job in page["data"]]
        assert page["has_more"] is (page["next_cursor"] is not None)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [2, 2, 1]
    assert seen == ids[::-1]


def test_history_refuses_a_bad_cursor_an_unknown_status_or_a_bad_limit_with_422(api: Api):
    api.submit()
    for params in ({"cursor": "not-a-cursor"}, {"cursor": "bm9wZQ"}, {"status": "done"}, {"limit": 0},
                   {"limit": 101}):
        response = api.client.get("/v1/trainings", params=params, headers=api.alice)
        assert response.status_code == 422, params
    assert "done" in api.client.get("/v1/trainings", params={"status": "done"}, headers=api.alice).json()["detail"]


# --- cancelling ---------------------------------------------------------------------------------------------


def test_cancelling_a_queued_training_cancels_it_at_once_and_it_never_starts(api: Api):
    job = api.submit()
    response = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"]
    assert body["error"]["type"] == "cancelled"
    # the worker that later receives the queued message does not run it
    assert api.services.lifecycle.start(job["id"], WORKER, lease_s=60, max_attempts=3) is None
    assert api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice).json()["status"] == "cancelled"


def test_cancelling_twice_is_harmless(api: Api):
    job = api.submit()
    first = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    second = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    assert first.status_code == second.status_code == 200
    assert second.json()["status"] == "cancelled"
    assert second.json()["finished_at"] == first.json()["finished_at"]


def test_cancelling_a_running_training_asks_its_worker_to_stop(api: Api):
    job = api.submit()
    api.start(job["id"])
    assert not api.services.lifecycle.is_cancel_requested(job["id"])
    response = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    assert response.status_code == 202
    assert response.json()["status"] == "running"  # it stops at its next check
    assert response.json()["cancel_requested"] is True
    assert api.services.lifecycle.is_cancel_requested(job["id"])
    logs = api.client.get(f"/v1/trainings/{job['id']}/logs", headers=api.alice).json()["data"]
    assert any("cancellation requested" in line["message"] for line in logs)
    again = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    assert again.status_code == 202 and again.json()["status"] == "running"


def test_cancelling_a_finished_training_is_a_409(api: Api):
    job = api.submit()
    api.start(job["id"])
    store_output(api, job["id"])
    response = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]
    failed = api.submit()
    api.start(failed["id"])
    api.services.lifecycle.fail(failed["id"], "training_error", "loss became NaN")
    assert api.client.post(f"/v1/trainings/{failed['id']}/cancel", headers=api.alice).status_code == 409


def test_cancelling_another_owners_training_is_a_404_and_leaves_it_alone(api: Api):
    job = api.submit()
    response = api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.bob)
    assert response.status_code == 404
    assert api.client.post("/v1/trainings/nope/cancel", headers=api.bob).status_code == 404
    assert api.client.get(f"/v1/trainings/{job['id']}", headers=api.alice).json()["status"] == "queued"


# --- logs and events ----------------------------------------------------------------------------------------


def test_logs_come_back_in_order_with_ids_and_paginate_with_after(api: Api):
    job = api.submit()
    api.start(job["id"])
    for i in range(5):
        api.services.lifecycle.log(job["id"], f"line {i}", "WARN" if i == 3 else "INFO")
    response = api.client.get(f"/v1/trainings/{job['id']}/logs", headers=api.alice)
    assert response.status_code == 200
    lines = response.json()["data"]
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(5)]
    assert [line["level"] for line in lines] == ["INFO", "INFO", "INFO", "WARN", "INFO"]
    assert all(line["timestamp"] for line in lines)
    ids = [line["id"] for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == 5

    first = api.client.get(f"/v1/trainings/{job['id']}/logs", params={"limit": 2}, headers=api.alice).json()
    assert [line["message"] for line in first["data"]] == ["line 0", "line 1"]
    assert first["next_after"] == ids[1]
    rest = api.client.get(f"/v1/trainings/{job['id']}/logs", params={"after": first["next_after"]},
                          headers=api.alice).json()
    assert [line["message"] for line in rest["data"]] == ["line 2", "line 3", "line 4"]
    done = api.client.get(f"/v1/trainings/{job['id']}/logs", params={"after": rest["next_after"]},
                          headers=api.alice).json()
    assert done["data"] == [] and done["next_after"] == rest["next_after"]


def drive_to_success(api: Api, job_id: str) -> None:
    """What a worker does: start, phases, progress, a log line, a validation video, the final output."""
    lifecycle = api.services.lifecycle
    api.start(job_id)
    lifecycle.set_phase(job_id, "training")
    lifecycle.report_progress(job_id, {"step": 50, "total_steps": 100, "loss": 0.25, "steps_per_s": 2.0})
    lifecycle.log(job_id, "step 50/100 loss 0.25")
    key = job_prefix("alice", job_id) + "validation_0.mp4"
    api.services.storage.put_bytes(key, b"fake mp4", "video/mp4")
    lifecycle.publish(job_id, "validation_0", {"key": key, "content_type": "video/mp4",
                                               "file_name": "validation_0.mp4", "file_size": 8})
    store_output(api, job_id)


@pytest.mark.timeout(60)
def test_events_stream_status_phase_progress_logs_and_outputs_and_end_with_the_result(api: Api):
    job = api.submit()
    drive_to_success(api, job["id"])
    events = read_sse(api.client, f"/v1/trainings/{job['id']}/events", api.alice)
    kinds = [event["event"] for event in events]
    assert kinds == ["status", "status", "phase", "progress", "log", "output", "status", "result"]
    assert [e["data"]["status"] for e in events if e["event"] == "status"] == ["queued", "running", "succeeded"]
    ids = [event["id"] for event in events[:-1]]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == len(ids)
    by_kind = {event["event"]: event["data"] for event in events}
    assert by_kind["phase"] == {"phase": "training"}
    assert by_kind["progress"]["step"] == 50 and by_kind["progress"]["loss"] == 0.25
    assert by_kind["log"]["message"] == "step 50/100 loss 0.25"
    assert by_kind["output"]["name"] == "validation_0"
    video = by_kind["output"]["file"]
    assert "key" not in video and video["file_name"] == "validation_0.mp4"
    assert api.client.get(video["url"]).content == b"fake mp4"
    assert events[-1]["id"] is None  # the result is not a resumable event
    assert by_kind["result"]["output"]["lora_file"]["file_name"] == "lora.safetensors"
    assert by_kind["result"]["output"]["lora_file"]["url"].startswith("http://testserver/v1/files/")


@pytest.mark.timeout(60)
def test_reconnecting_with_last_event_id_resumes_after_that_event(api: Api):
    job = api.submit()
    drive_to_success(api, job["id"])
    url = f"/v1/trainings/{job['id']}/events"
    everything = read_sse(api.client, url, api.alice)
    phase = next(event for event in everything if event["event"] == "phase")
    resumed = read_sse(api.client, url, {**api.alice, "Last-Event-ID": str(phase["id"])})
    assert [event["event"] for event in resumed] == ["progress", "log", "output", "status", "result"]
    assert [event["id"] for event in resumed[:-1]] == [event["id"] for event in everything[3:-1]]
    # a client that saw the terminal status and reconnects is told the result and let go (no hanging stream)
    terminal = everything[-2]
    after_end = read_sse(api.client, url, {**api.alice, "Last-Event-ID": str(terminal["id"])})
    assert [event["event"] for event in after_end] == ["result"]


@pytest.mark.timeout(60)
def test_an_open_event_stream_follows_a_training_live_until_it_ends(api: Api):
    job = api.submit()
    worker = threading.Timer(1.0, drive_to_success, args=(api, job["id"]))  # after the stream has gone idle
    worker.start()
    try:
        events = read_sse(api.client, f"/v1/trainings/{job['id']}/events", api.alice)
    finally:
        worker.join()
    assert [event["event"] for event in events] == \
        ["status", "status", "phase", "progress", "log", "output", "status", "result"]
    assert events[-2]["data"]["status"] == "succeeded"


@pytest.mark.timeout(60)
def test_the_events_of_a_cancelled_queued_training_end_with_its_status(api: Api):
    job = api.submit()
    api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
    events = read_sse(api.client, f"/v1/trainings/{job['id']}/events", api.alice)
    assert [event["event"] for event in events] == ["status", "log", "status"]  # no output: no result event
    assert events[-1]["data"]["status"] == "cancelled"
    assert events[-1]["data"]["error"]["type"] == "cancelled"


# --- estimates ----------------------------------------------------------------------------------------------


def test_an_estimate_prices_the_steps_before_submitting(api: Api):
    response = api.client.post("/v1/estimates", json={"training_data_url": DATA_URL, "number_of_steps": 2000},
                               headers=api.alice)
    assert response.status_code == 200
    estimate = response.json()
    assert estimate["steps"] == 2000
    assert estimate["unit_price"] == "0.0048"
    assert estimate["estimated_cost_usd"] == "9.6000"
    assert estimate["currency"] == "USD"
    assert estimate["estimated_duration_s"] is None  # no finished job to learn the speed from yet
    assert estimate["adjustments"] == []
    assert api.queued_messages() == []  # nothing was submitted
    assert api.client.get("/v1/trainings", headers=api.alice).json()["data"] == []


def test_an_estimate_learns_the_duration_from_finished_trainings(api: Api):
    job = api.submit()
    drive_to_success(api, job["id"])  # 2 steps per second
    estimate = api.client.post("/v1/estimates", json={"training_data_url": DATA_URL, "number_of_steps": 500,
                                                      "number_of_frames": 90}, headers=api.alice).json()
    assert estimate["estimated_cost_usd"] == "2.4000"
    assert estimate["estimated_duration_s"] == 250.0
    assert [a["field"] for a in estimate["adjustments"]] == ["number_of_frames"]


def test_an_invalid_estimate_request_is_refused_with_422(api: Api):
    response = api.client.post("/v1/estimates", json={"training_data_url": DATA_URL, "number_of_steps": 50,
                                                      "rank": 7}, headers=api.alice)
    assert response.status_code == 422
    assert sorted(entry["loc"][-1] for entry in response.json()["detail"]) == ["number_of_steps", "rank"]


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


def test_health_is_ok(api: Api):
    response = api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


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
        heavy = sorted(name for name in sys.modules
                       if name.split(".")[0] in ("torch", "diffusers", "transformers", "torchvision")
                       or name.startswith(("ltx2trainer.pipeline", "ltx2trainer.model", "ltx2trainer.training")))
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
