"""Inline training data (a data: URL) is stored once as a file; what is shown is a short reference, and URLs
with credentials or signatures are redacted wherever a job's input is shown."""

from __future__ import annotations

import base64
import json

import pytest

from ltx2trainer.storage import owner_prefix
from ltx2trainer.uploads import displayed_input, parse_reference, redact_url, storage_key


def data_url(payload: bytes) -> str:
    return "data:application/zip;base64," + base64.b64encode(payload).decode()


def test_a_data_url_is_stored_once_and_every_view_shows_a_short_reference(api):
    payload = b"PK\x05\x06" + bytes(18) + bytes(2_000_000)  # an empty zip padded to 2 MB
    first = api.submit(training_data_url=data_url(payload))
    second = api.submit(training_data_url=data_url(payload))
    reference = first["input"]["training_data_url"]
    sha256, size = parse_reference(reference)
    assert size == len(payload) and len(reference) < 120
    assert second["input"]["training_data_url"] == reference  # the same content, stored once
    key = storage_key(owner_prefix("alice"), sha256)
    with api.services.storage.open(key) as stored:
        assert stored.read() == payload
    assert len(api.client.get(f"/v1/trainings/{first['id']}", headers=api.alice).content) < 20_000
    listing = api.client.get("/v1/trainings", headers=api.alice)
    assert len(listing.content) < 40_000 and "base64" not in listing.text
    with api.services.db.engine.connect() as connection:  # the job row holds the reference, not the data
        stored_input = connection.exec_driver_sql("SELECT input FROM jobs WHERE id = ?" if
                                                  api.services.db.is_sqlite else
                                                  "SELECT input FROM jobs WHERE id = %s", (first["id"],)).scalar()
    text = stored_input if isinstance(stored_input, str) else json.dumps(stored_input)
    assert "base64" not in text and reference in text


def test_a_user_cannot_submit_an_upload_reference_of_their_own(api):
    reference = "upload:sha256=" + "0" * 64 + ";size=10"
    answer = api.client.post("/v1/trainings", json={"training_data_url": reference}, headers=api.alice)
    assert answer.status_code == 422 and "training_data_url" in answer.text


def test_a_malformed_data_url_is_refused_at_submit(api):
    answer = api.client.post("/v1/trainings", json={"training_data_url": "data:application/zip;base64,@@@"},
                             headers=api.alice)
    assert answer.status_code == 422 and "malformed data: URL" in answer.text


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:secret@example.com/a.zip", "https://REDACTED@example.com/a.zip"),
    ("https://b.s3.amazonaws.com/a.zip?X-Amz-Credential=AKIA&X-Amz-Signature=f00d&X-Amz-Expires=60",
     "https://b.s3.amazonaws.com/a.zip?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60"),
    ("https://acct.blob.core.windows.net/c/a.zip?sv=2024&sig=abc", "https://acct.blob.core.windows.net/c/a.zip?sv=REDACTED&sig=REDACTED"),
    ("https://example.com/a.zip?version=2", "https://example.com/a.zip?version=2"),
])
def test_credentials_and_signatures_in_urls_are_redacted_where_shown(api, url, shown):
    assert redact_url(url) == shown
    job = api.submit(training_data_url=url, webhook_url="https://hooks.example.com/x?token=t0k")
    assert job["input"]["training_data_url"] == shown
    assert job["input"]["webhook_url"] == "https://hooks.example.com/x?token=REDACTED"
    with api.services.db.session() as session:  # the worker still gets the real URL
        from ltx2trainer.jobs.models import JobRow

        assert session.get(JobRow, job["id"]).input["training_data_url"] == url
    assert displayed_input({"validation": [{"prompt": "p", "image_url": url}]})["validation"][0]["image_url"] == shown
