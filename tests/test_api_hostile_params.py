"""Query parameters, headers and path values chosen to break the gateway get a clear 4xx, never a 500, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

NUL = "\x00"


def no_server_error(api, method: str, url: str, **kwargs) -> int:
    client = TestClient(api.app, raise_server_exceptions=False)
    response = client.request(method, url, headers={**api.alice, **kwargs.pop("headers", {})}, **kwargs)
    assert response.status_code < 500, (url, response.status_code, response.text[:300])
    return response.status_code


@pytest.mark.parametrize("query", [
    "end=0001-01-01", "start=0001-01-01", "end=9999-12-31T23:59:59-14:00", "start=9999-12-31T23:59:59%2B14:00",
    "start=2026-01-01T00:00:00&end=2026-02-01", "group_by=day%00", "api_key_id=%00",
])
def test_usage_parameters_at_the_edges_of_time_are_a_client_error_or_an_answer(api, query):
    code = no_server_error(api, "GET", f"/v1/usage?{query}")
    assert code in (200, 400, 422)


def test_log_and_event_cursors_out_of_range_are_client_errors(api):
    job = api.submit()
    assert no_server_error(api, "GET", f"/v1/trainings/{job['id']}/logs?after=9223372036854775808") == 422
    assert no_server_error(api, "GET", f"/v1/trainings/{job['id']}/logs?after=-1") in (200, 422)
    for last_event_id in ("²".encode(), str(2**70), "-5", "abc"):
        code = no_server_error(api, "GET", f"/v1/trainings/{job['id']}/events?stream=false",
                               headers={"Last-Event-ID": last_event_id})
        assert code in (200, 400, 422), last_event_id


@pytest.mark.parametrize("cursor", ["%00", "eyJjIjogIjIwMjYtMDEtMDFUMDA6MDA6MDAiLCAiaWQiOiAieCJ9", "not-base64!"])
def test_history_cursors_that_are_not_ours_are_client_errors(api, cursor):
    api.submit()
    assert no_server_error(api, "GET", f"/v1/trainings?cursor={cursor}") in (400, 422)


@pytest.mark.parametrize("path", ["/v1/trainings/a%00b", "/v1/trainings/a%00b/logs", "/v1/trainings/a%00b/cancel"])
def test_a_nul_byte_in_a_job_id_is_a_bad_request(api, path):
    method = "POST" if path.endswith("cancel") else "GET"
    assert no_server_error(api, method, path) == 400


@pytest.mark.parametrize("field", ["webhook_url", "trigger_phrase"])
def test_a_nul_byte_in_a_submitted_string_is_refused(api, field):
    body = {"training_data_url": "https://example.com/a.zip", field: f"https://example.com/{NUL}hook"}
    assert no_server_error(api, "POST", "/v1/trainings", json=body) == 422


@pytest.mark.parametrize("hook", ["http://10.0.0.5/hook", "http://127.0.0.1:9000/hook", "http://[::1]/hook",
                                  "http://169.254.169.254/latest", "http://localhost/hook"])
def test_a_private_webhook_url_is_refused_at_submit_not_failed_later(api, hook):
    api.services.settings.allow_private_urls = False
    answer = api.client.post("/v1/trainings", json={"training_data_url": "https://example.com/a.zip",
                                                    "webhook_url": hook}, headers=api.alice)
    assert answer.status_code == 422
    error = answer.json()["detail"][0]
    assert error["loc"] == ["body", "webhook_url"] and error["type"] == "blocked_url"
    fal = api.client.post(f"/fal-ai/ltx2-video-trainer?fal_webhook={hook}",
                          json={"training_data_url": "https://example.com/a.zip"}, headers=api.alice)
    assert fal.status_code == 422 and "fal_webhook" in fal.text
    assert api.client.get("/v1/trainings", headers=api.alice).json()["data"] == []  # nothing was queued
