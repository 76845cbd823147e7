"""The native REST API: reading jobs and the history, cancelling, logs and server-sent events."""

from __future__ import annotations

import threading

import pytest

from tests.api_harness import WORKER, Api, drive_to_success, read_sse, store_output

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
