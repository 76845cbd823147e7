"""Request bodies are bounded, and a large one is read only for a valid API key."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

MIB = 2**20


def test_a_body_over_the_limit_is_refused_before_it_is_read_saying_to_upload_by_url(api):
    api.services.settings.max_request_bytes = 2 * MIB  # (the default is 64 MiB); read when the app is built
    from ltx2trainer.api import create_app

    app = create_app(api.settings, services=api.services)
    client = TestClient(app)
    payload = base64.b64encode(b"\x00" * (3 * MIB)).decode()
    body = {"training_data_url": f"data:application/zip;base64,{payload}"}
    answer = client.post("/v1/trainings", json=body, headers=api.alice)
    assert answer.status_code == 413
    assert "limit is 2.0 MiB" in answer.json()["detail"] and "URL" in answer.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"training_data_url": "data:application/zip;base64,'
        for _ in range(4):
            yield b"A" * MIB
        yield b'"}'

    answer = client.post("/v1/trainings", content=chunks(), headers={**api.alice, "Content-Type": "application/json"})
    assert answer.status_code == 413 and "is more than" in answer.json()["detail"]
    assert client.get("/v1/trainings", headers=api.alice).json()["data"] == []
    small = client.post("/v1/trainings", json={"training_data_url": "https://example.com/a.zip"}, headers=api.alice)
    assert small.status_code == 201


def test_a_large_body_without_a_valid_key_gets_a_401_unread(api):
    payload = "A" * (8 * MIB)
    for headers in ({}, {"Authorization": "Key nope:nope"}):
        answer = api.client.post("/v1/trainings", content=f'{{"training_data_url": "data:a/b;base64,{payload}"}}',
                                 headers={**headers, "Content-Type": "application/json"})
        assert answer.status_code == 401 and "large bodies are read only for a valid key" in answer.text
    small = api.client.post("/v1/trainings", json={"training_data_url": "https://example.com/a.zip"})
    assert small.status_code == 401  # the usual answer for small bodies
