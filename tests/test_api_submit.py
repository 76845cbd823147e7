"""The native REST API: authentication, validation of the input, submitting (idempotency), estimates."""

from __future__ import annotations

import hashlib
import time

from sqlalchemy import select

from ltx2trainer.jobs.keys import create_key, revoke_key
from ltx2trainer.jobs.models import ApiKeyRow
from tests.api_harness import DATA_URL, Api, auth, drive_to_success

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


def test_openapi_publishes_the_training_input_as_the_submit_body(api: Api):
    document = api.client.get("/openapi.json").json()
    components = document["components"]["schemas"]

    def body_schema(path: str) -> dict:
        request_body = document["paths"][path]["post"]["requestBody"]
        assert request_body["required"] is True, path
        schema = request_body["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/TrainingInput"}, (path, schema)
        return components[schema["$ref"].rsplit("/", 1)[1]]

    training_input = body_schema("/v1/trainings")
    assert "training_data_url" in training_input["required"]
    assert training_input["properties"]["number_of_frames"]["default"] == 89
    assert training_input["properties"]["rank"]["enum"] == [8, 16, 32, 64, 128]
    # nested models resolve within the document
    prompt_ref = training_input["properties"]["validation"]["items"]["$ref"]
    assert prompt_ref.rsplit("/", 1)[1] in components
    assert body_schema("/v1/estimates") is not None
    assert body_schema("/{path}") is not None  # the queue protocol's submit


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


def test_an_estimate_includes_the_gpu_memory_plan(api: Api):
    body = {"training_data_url": DATA_URL, "validation": [{"prompt": "a clip"}]}
    unknown = api.client.post("/v1/estimates", json=body, headers=api.alice).json()["memory"]
    assert unknown["fits"] is None and unknown["model"] == "tiny"  # the workers' GPU is not configured here
    assert set(unknown["phases"]) == {"encode", "train", "validate"}
    api.settings.gpu_memory_gb, api.settings.plan_model = 48, "ltx-2-19b"
    memory = api.client.post("/v1/estimates", json=body, headers=api.alice).json()["memory"]
    assert (memory["fits"], memory["base_precision"], memory["optimizer"]) == (True, "int8", "adamw")
    assert memory["phases"]["train"]["peak_gb"] < 48 and memory["headroom_gb"] > 0
    api.settings.plan_model = "/nowhere/ltx-2.safetensors"  # a gateway without the weights: no plan, no refusal
    answer = api.client.post("/v1/estimates", json=body, headers=api.alice).json()
    assert answer["memory"] is None and "not found" in answer["memory_error"]
    assert api.client.post("/v1/trainings", json=body, headers=api.alice).status_code == 201


def test_a_training_that_fits_no_worker_gpu_is_refused_with_422_before_it_is_queued(api: Api):
    api.settings.gpu_memory_gb, api.settings.plan_model = 32, "ltx-2.3"
    response = api.client.post("/v1/trainings", json={"training_data_url": DATA_URL, "rank": 128},
                               headers=api.alice)
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["body"] and entry["type"] == "insufficient_gpu_memory"
    assert entry["msg"].startswith("this training needs ") and "int8 base, adamw8bit" in entry["msg"]
    assert "the workers' GPUs have 32 GB" in entry["msg"]
    assert api.queued_messages() == [] and api.client.get("/v1/trainings", headers=api.alice).json()["data"] == []
    api.settings.gpu_memory_gb = 80
    assert api.client.post("/v1/trainings", json={"training_data_url": DATA_URL, "rank": 128},
                           headers=api.alice).status_code == 201


def test_an_invalid_estimate_request_is_refused_with_422(api: Api):
    response = api.client.post("/v1/estimates", json={"training_data_url": DATA_URL, "number_of_steps": 50,
                                                      "rank": 7}, headers=api.alice)
    assert response.status_code == 422
    assert sorted(entry["loc"][-1] for entry in response.json()["detail"]) == ["number_of_steps", "rank"]
