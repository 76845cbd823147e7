"""The gateway in process for the API tests: FastAPI's TestClient against `create_app(settings)`.

There is no worker here. Submitted jobs stay queued (the queue is the real embedded filesystem broker, so
`enqueue` only writes a message file); tests that need a job to run drive `services.lifecycle` directly,
exactly as a worker would (the lifecycle is the worker's only way to change a job). Tests that use the `api`
fixture run twice, on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.storage import job_prefix
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


@contextlib.contextmanager
def open_api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    """The gateway in process on `database_url`, with two owners' keys (the `api` fixture of conftest.py)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, allow_private_urls=True)
    services = Services(settings)
    app = create_app(settings, services=services)
    # These tests change jobs behind the gateway's back (as a worker would) and read them at once: no status
    # cache here (its 0.2 s of staleness is tested on its own in test_api_files_and_ops.py).
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
