"""Property: whatever a client puts in the query string, the headers or the path, the gateway answers without a
5xx (Hypothesis over every route's parameters, on SQLite and on PostgreSQL)."""

from __future__ import annotations

import urllib.parse

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Values that broke parsers before: edge dates, offsets, huge and negative integers, unicode digits, NULs,
# percent-escapes, and anything else Hypothesis comes up with.
EDGES = ["0001-01-01", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+14:00", "2026-13-01", "1970-01-01",
         str(2**63), str(2**70), "-1", "²", "٣", "\x00", "%00", "", " ", "NaN", "inf", "1e309", "null",
         "eyJjIjogIjIwMjYtMDEtMDFUMDA6MDA6MDAiLCAiaWQiOiAieCJ9", "../../etc/passwd"]
values = st.one_of(st.sampled_from(EDGES), st.text(max_size=40), st.integers(-2**80, 2**80).map(str),
                   st.datetimes().map(lambda moment: moment.isoformat()))
ROUTES = [  # (method, path template, query parameters it reads)
    ("GET", "/v1/usage", ["start", "end", "group_by", "format", "owner", "api_key_id"]),
    ("GET", "/v1/dashboard", ["start", "end", "owner"]),
    ("GET", "/v1/trainings", ["status", "limit", "cursor"]),
    ("GET", "/v1/trainings/{id}", []),
    ("GET", "/v1/trainings/{id}/logs", ["after", "limit"]),
    ("GET", "/v1/trainings/{id}/files/{value}", []),
    ("POST", "/v1/trainings/{id}/cancel", []),
    ("GET", "/v1/trainings/{id}/events", []),
    ("GET", "/fal-ai/ltx2-video-trainer/requests/{id}/status", ["logs"]),
    ("GET", "/fal-ai/ltx2-video-trainer/requests/{id}", []),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), params=st.lists(values, min_size=6, max_size=6), use_own_job=st.booleans(),
       last_event_id=st.one_of(st.none(), values))
def test_no_parameter_value_makes_a_route_fail_with_a_server_error(api, route, params, use_own_job, last_event_id):
    if not hasattr(api, "finished_job"):  # one cancelled job (its event stream ends), made once per database
        job = api.submit()
        api.client.post(f"/v1/trainings/{job['id']}/cancel", headers=api.alice)
        api.finished_job = job["id"]
    method, template, names = route
    job_id = api.finished_job if use_own_job else params[0]
    path = template.format(id=urllib.parse.quote(job_id, safe=""), value=urllib.parse.quote(params[1], safe=""))
    query = urllib.parse.urlencode(dict(zip(names, params, strict=False)))
    headers = dict(api.alice)
    if last_event_id is not None and template.endswith("events"):
        headers["Last-Event-ID"] = last_event_id.encode("utf-8")  # any bytes a client could send
    client = TestClient(api.app, raise_server_exceptions=False)
    response = client.request(method, f"{path}?{query}" if query else path, headers=headers)
    assert response.status_code < 500, (method, path, query, last_event_id, response.status_code, response.text[:300])
