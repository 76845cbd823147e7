"""Webhooks: the outbox written with each status change, signed delivery to a real loopback receiver, retries
on the Standard Webhooks schedule (driven by a fake clock, no sleeping), the SSRF guard, and concurrency."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.lifecycle import Lifecycle
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.notify.models import WebhookAttemptRow, WebhookMessageRow, WebhookStatus
from ltx2trainer.notify.webhooks import (
    USER_AGENT,
    WebhookDeliverer,
    outbox_listener,
)
from ltx2trainer.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TRAINING_INPUT = {"training_data_url": "https://example.com/data.zip", "number_of_steps": 100}
LORA_OUTPUT = {"lora_file": {"url": "https://files.example.com/lora.safetensors", "file_name": "lora.safetensors"}}
EVENT_ORDER = ["training.started", "training.succeeded", "training.failed", "training.cancelled"]
TIMEOUT_S = 0.4  # webhook_timeout_s of these tests; the receiver's "hang" sleeps longer


# --- a fake clock and a real receiver -----------------------------------------------------------------


class FakeClock:
    """A mutable "now". It starts 4 minutes in the past so that the attempts of a test (the third one comes
    5 s + 5 min after the first) carry `webhook-timestamp`s within the ±5 min that `Webhook.verify` accepts."""

    def __init__(self) -> None:
        self.now = utcnow() - dt.timedelta(minutes=4)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any  # what Webhook(SECRET).verify returned, or the exception it raised


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that verifies every signature and answers from a per-path script.

    `script[path]` is a list of answers used one per request, then 200: an int status, a (status, headers)
    pair, or "hang" (sleep longer than the deliverer's timeout)."""

    script: dict[str, list[Any]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def answer(self, path: str) -> Any:
        with self.lock:
            steps = self.script.get(path)
            return steps.pop(0) if steps else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = dict(self.headers.items())
            try:
                payload = Webhook(SECRET).verify(body, headers)
            except Exception as exc:  # noqa: BLE001 - recorded; the test asserts on it
                payload = exc
            with state.lock:
                state.received.append(Received(self.path, headers, body, payload))
            answer = state.answer(self.path)
            if answer == "hang":
                time.sleep(TIMEOUT_S * 2.5)
                answer = 200
            if answer == "trickle":  # a status line one byte at a time, each well within the read timeout
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(TIMEOUT_S / 4)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True
                return
            status, extra = answer if isinstance(answer, tuple) else (answer, {})
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values = {"data_dir": tmp_path / "data", "allow_private_urls": True, "webhook_secret": SECRET,
              "webhook_timeout_s": TIMEOUT_S, "webhook_max_attempts": 10, **overrides}
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.create_schema()
    return database


@pytest.fixture
def lifecycle(db: Database, settings: Settings, clock: FakeClock) -> Lifecycle:
    return Lifecycle(db, listeners=[outbox_listener(settings, clock=clock)])


@pytest.fixture
def deliverer(db: Database, settings: Settings, clock: FakeClock) -> Iterator[WebhookDeliverer]:
    with WebhookDeliverer(db, settings, clock=clock) as instance:
        yield instance


def run_job(lifecycle: Lifecycle, outcome: str = "succeeded", **urls: str | None) -> str:
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, metadata={"project": "café"}, **urls)
    assert lifecycle.start(job.id, "worker-1", lease_s=60, max_attempts=3) is not None
    if outcome == "succeeded":
        lifecycle.succeed(job.id, LORA_OUTPUT)
    elif outcome == "failed":
        lifecycle.fail(job.id, "invalid_dataset", "the zip holds no videos")
    elif outcome == "cancelled":
        lifecycle.request_cancel(job.id)
        lifecycle.cancel(job.id, output=LORA_OUTPUT)  # the worker stops and keeps its last checkpoint
    return job.id


def messages(db: Database, job_id: str | None = None) -> list[WebhookMessageRow]:
    with db.session() as session:
        query = select(WebhookMessageRow)
        if job_id is not None:
            query = query.where(WebhookMessageRow.job_id == job_id)
        # The fake clock stands still within a test: order a job's events by their place in its life.
        return sorted(session.scalars(query), key=lambda m: (m.created_at, EVENT_ORDER.index(m.event_type), m.flavor))


def message(db: Database, message_id: str) -> WebhookMessageRow:
    with db.session() as session:
        return session.get(WebhookMessageRow, message_id)


def attempts(db: Database, message_id: str) -> list[WebhookAttemptRow]:
    with db.session() as session:
        return list(session.scalars(select(WebhookAttemptRow).where(WebhookAttemptRow.message_id == message_id)
                                    .order_by(WebhookAttemptRow.attempt)))


def only_message(db: Database) -> WebhookMessageRow:
    rows = messages(db)
    assert len(rows) == 1, [(m.flavor, m.event_type) for m in rows]
    return rows[0]


# --- payloads and the outbox --------------------------------------------------------------------------


def test_succeeded_job_with_fal_webhook_sends_one_signed_ok_message(lifecycle, db, deliverer, receiver):
    job_id = run_job(lifecycle, fal_webhook=receiver.url("/fal"))
    row = only_message(db)
    assert (row.flavor, row.event_type, row.status) == ("fal", "training.succeeded", WebhookStatus.PENDING)
    assert row.id.startswith("msg_")

    assert deliverer.deliver_due() == 1
    [request] = receiver.on("/fal")
    assert request.payload == {"request_id": job_id, "gateway_request_id": job_id, "status": "OK",
                               "payload": LORA_OUTPUT}
    assert request.headers["webhook-id"] == row.id
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT
    assert message(db, row.id).status == WebhookStatus.DELIVERED
    assert deliverer.deliver_due() == 0  # nothing left
    assert len(receiver.received) == 1


def test_failed_job_fal_webhook_reports_error_and_error_type(lifecycle, db, deliverer, receiver):
    job_id = run_job(lifecycle, "failed", fal_webhook=receiver.url("/fal"))
    deliverer.deliver_due()
    [request] = receiver.on("/fal")
    assert request.payload == {"request_id": job_id, "gateway_request_id": job_id, "status": "ERROR",
                               "payload": None, "error": "the zip holds no videos", "error_type": "invalid_dataset"}


def test_cancelled_running_job_fal_webhook_is_error_with_last_checkpoint_payload(lifecycle, deliverer, receiver):
    job_id = run_job(lifecycle, "cancelled", fal_webhook=receiver.url("/fal"))
    deliverer.deliver_due()
    [request] = receiver.on("/fal")
    assert request.payload == {"request_id": job_id, "gateway_request_id": job_id, "status": "ERROR",
                               "payload": LORA_OUTPUT, "error": "cancelled by the user", "error_type": "client_cancelled"}


def test_cancelled_queued_job_sends_error_without_payload(lifecycle, db, deliverer, receiver):
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, fal_webhook=receiver.url("/fal"),
                              webhook_url=receiver.url("/native"))
    lifecycle.request_cancel(job.id)
    assert deliverer.deliver_due() == 2
    [fal] = receiver.on("/fal")
    assert fal.payload["status"] == "ERROR" and fal.payload["payload"] is None
    assert fal.payload["error_type"] == "client_cancelled"
    [native] = receiver.on("/native")
    assert native.payload["type"] == "training.cancelled"  # never started: no training.started


def test_queue_status_result_and_webhook_name_a_failure_and_a_cancel_alike(api):
    """One error mapping (ltx2trainer/fal_protocol.py) for the three places the queue protocol shows an error,
    fallbacks included: a failure that names no cause, a cancel while queued and one while running."""
    from tests.api_harness import DATA_URL

    app, lifecycle = "fal-ai/ltx2-video-trainer", api.services.lifecycle

    def submit() -> str:
        answer = api.client.post(f"/{app}", params={"fal_webhook": "http://127.0.0.1:9/fal"},
                                 json={"training_data_url": DATA_URL}, headers=api.alice)
        assert answer.status_code == 200, answer.text
        return answer.json()["request_id"]

    untyped, queued, running = submit(), submit(), submit()
    api.start(untyped)
    lifecycle.fail(untyped, "", "")  # no type, no message: the fallbacks
    assert api.client.put(f"/{app}/requests/{queued}/cancel", headers=api.alice).status_code == 202
    api.start(running)
    lifecycle.request_cancel(running)
    lifecycle.cancel(running)  # the worker stops
    expected = {untyped: ("internal_error", "the job failed"),
                queued: ("client_cancelled", "cancelled before it started"),
                running: ("client_cancelled", "cancelled by the user")}
    for job_id, (error_type, error) in expected.items():
        status = api.client.get(f"/{app}/requests/{job_id}/status", headers=api.alice).json()
        result = api.client.get(f"/{app}/requests/{job_id}", headers=api.alice)
        with api.services.db.session() as session:
            [stored] = session.scalars(select(WebhookMessageRow.payload).where(
                WebhookMessageRow.job_id == job_id, WebhookMessageRow.flavor == "fal"))
        webhook = json.loads(stored)
        assert (status["status"], webhook["status"]) == ("COMPLETED", "ERROR"), (status, webhook)
        assert (status["error_type"], status["error"]) == (error_type, error), status
        assert (result.json()["error_type"], result.json()["detail"]) == (error_type, error), result.json()
        assert result.headers["X-Fal-Error-Type"] == error_type
        assert (webhook["error_type"], webhook["error"]) == (error_type, error), webhook
    assert api.client.get(f"/{app}/requests/{untyped}", headers=api.alice).status_code == 500  # the platform's
    assert api.client.get(f"/{app}/requests/{queued}", headers=api.alice).status_code == 400


def test_native_webhook_gets_started_and_succeeded_events(lifecycle, db, deliverer, receiver, clock):
    job_id = run_job(lifecycle, webhook_url=receiver.url("/hook"))
    rows = messages(db, job_id)
    assert [(m.flavor, m.event_type) for m in rows] == [("native", "training.started"),
                                                        ("native", "training.succeeded")]
    assert len({m.id for m in rows}) == 2

    assert deliverer.deliver_due() == 2
    events = {r.payload["type"]: r for r in receiver.on("/hook")}
    assert set(events) == {"training.started", "training.succeeded"}
    done = events["training.succeeded"].payload
    assert set(done) == {"type", "timestamp", "sequence", "data"}
    assert (events["training.started"].payload["sequence"], done["sequence"]) == (1, 2)
    assert dt.datetime.fromisoformat(done["timestamp"]) == clock.now
    assert done["data"] == {"id": job_id, "status": "succeeded", "output": LORA_OUTPUT, "error": None,
                            "usage": None, "metadata": {"project": "café"}}
    assert events["training.started"].payload["data"]["status"] == "running"
    assert len(events["training.succeeded"].body) < 20_000


def test_native_webhook_failed_and_cancelled_events(lifecycle, db, receiver):
    failed = run_job(lifecycle, "failed", webhook_url=receiver.url("/hook"))
    cancelled = run_job(lifecycle, "cancelled", webhook_url=receiver.url("/hook"))
    assert [m.event_type for m in messages(db, failed)] == ["training.started", "training.failed"]
    assert [m.event_type for m in messages(db, cancelled)] == ["training.started", "training.cancelled"]
    data = json.loads(messages(db, failed)[-1].payload)["data"]
    assert data["error"] == {"type": "invalid_dataset", "message": "the zip holds no videos"}


def test_both_urls_get_their_own_messages(lifecycle, db, receiver):
    job_id = run_job(lifecycle, webhook_url=receiver.url("/hook"), fal_webhook=receiver.url("/fal"))
    assert sorted((m.flavor, m.event_type) for m in messages(db, job_id)) == [
        ("fal", "training.succeeded"), ("native", "training.started"), ("native", "training.succeeded")]


def test_job_without_webhook_urls_writes_no_messages(lifecycle, db, deliverer):
    run_job(lifecycle)
    run_job(lifecycle, "failed")
    assert messages(db) == []
    assert deliverer.deliver_due() == 0


def test_resumed_job_sends_training_started_once(lifecycle, db, receiver):
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, webhook_url=receiver.url("/hook"))
    lifecycle.start(job.id, "worker-1", lease_s=60, max_attempts=3)
    assert lifecycle.requeue(job.id, "worker lost")  # running → queued → running again
    lifecycle.start(job.id, "worker-2", lease_s=60, max_attempts=3)
    lifecycle.succeed(job.id, LORA_OUTPUT)
    assert [m.event_type for m in messages(db, job.id)] == ["training.started", "training.succeeded"]


def test_payload_is_compact_utf8_and_the_signed_bytes_are_the_bytes_sent(lifecycle, db, deliverer, receiver):
    run_job(lifecycle, webhook_url=receiver.url("/hook"))
    assert deliverer.deliver_due() == 2
    stored = {m.id: m.payload for m in messages(db)}
    received = receiver.on("/hook")
    # every stored message arrived (the checks below must not pass on nothing delivered)
    assert sorted(request.headers["webhook-id"] for request in received) == sorted(stored) and len(stored) == 2
    for request in received:
        assert not isinstance(request.payload, Exception), request.payload
        assert request.body == stored[request.headers["webhook-id"]].encode("utf-8")
        assert b'": ' not in request.body and b", " not in request.body
        assert "café".encode() in request.body  # UTF-8, not \u escapes
        assert request.headers["webhook-signature"].startswith("v1,")


def test_outbox_row_is_written_in_the_same_transaction_as_the_status_change(lifecycle, db, settings, receiver):
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, webhook_url=receiver.url("/hook"))

    def boom(session, job, old, new):
        if new == JobStatus.RUNNING:
            raise RuntimeError("a later listener fails")

    failing = Lifecycle(db, listeners=[outbox_listener(settings), boom])
    with pytest.raises(RuntimeError):
        failing.start(job.id, "worker-1", lease_s=60, max_attempts=3)
    assert messages(db) == []
    with db.session() as session:
        assert session.get(JobRow, job.id).status == JobStatus.QUEUED

    # The listener called directly inside a transaction that is rolled back leaves nothing either.
    listener = outbox_listener(settings)
    with pytest.raises(RuntimeError), db.session() as session:
        row = session.get(JobRow, job.id)
        row.status = JobStatus.SUCCEEDED
        listener(session, row, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        session.flush()
        assert len(session.scalars(select(WebhookMessageRow)).all()) == 1  # visible inside the transaction
        raise RuntimeError("roll back")
    assert messages(db) == []


# --- the SSRF guard -------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolve_addresses", [True, False])
def test_loopback_url_is_refused_when_private_urls_are_not_allowed(tmp_path, lifecycle, db, receiver, clock,
                                                                  resolve_addresses):
    strict = make_settings(tmp_path, allow_private_urls=False)
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    with WebhookDeliverer(db, strict, clock=clock, resolve_addresses=resolve_addresses) as deliverer:
        assert deliverer.deliver_due() == 1
        clock.advance(3600)
        assert deliverer.deliver_due() == 0  # failed for good, not retried
    assert receiver.received == []
    row = message(db, msg_id)
    assert row.status == WebhookStatus.FAILED
    assert "blocked" in row.last_error and "127.0.0.1" in row.last_error
    [attempt] = attempts(db, msg_id)
    assert attempt.status_code is None and "blocked" in attempt.error


def test_non_http_url_fails_permanently(lifecycle, db, deliverer):
    run_job(lifecycle, fal_webhook="file:///etc/passwd")
    msg_id = only_message(db).id
    deliverer.deliver_due()
    row = message(db, msg_id)
    assert row.status == WebhookStatus.FAILED and "unusable URL" in row.last_error


# --- concurrency and the background loop ----------------------------------------------------------------


def test_two_deliverers_running_concurrently_deliver_each_message_exactly_once(lifecycle, db, settings, receiver,
                                                                               clock):
    for _ in range(12):
        run_job(lifecycle, webhook_url=receiver.url("/hook"))
    expected = {m.id for m in messages(db)}
    assert len(expected) == 24
    start = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            with WebhookDeliverer(db, settings, clock=clock) as deliverer:
                start.wait()
                counts.append(deliverer.deliver_due(limit=100))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sum(counts) == 24
    ids = [r.headers["webhook-id"] for r in receiver.on("/hook")]
    assert sorted(ids) == sorted(expected)  # each exactly once
    assert {m.status for m in messages(db)} == {WebhookStatus.DELIVERED}
    with db.session() as session:
        assert len(session.scalars(select(WebhookAttemptRow)).all()) == 24


def test_run_forever_delivers_in_the_background_until_stopped(lifecycle, db, deliverer, receiver):
    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run_forever, args=(stop,), kwargs={"interval_s": 0.02})
    thread.start()
    try:
        run_job(lifecycle, fal_webhook=receiver.url("/fal"))
        deadline = time.monotonic() + 5
        while not receiver.on("/fal") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert len(receiver.on("/fal")) == 1



def test_output_files_in_webhooks_are_links_signed_at_send_time(lifecycle, deliverer, receiver):
    # The outbox keeps storage references; what the receiver gets are File objects with working URLs,
    # pointing at the gateway the job was submitted to.
    ref = {"key": "jobs/owner/job-1/lora.safetensors", "file_name": "lora.safetensors",
           "content_type": "application/octet-stream", "file_size": 3}
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, fal_webhook=receiver.url("/linked"),
                              public_base_url="http://gateway.example:8000")
    assert lifecycle.start(job.id, "worker-1", lease_s=60, max_attempts=3) is not None
    lifecycle.succeed(job.id, {"lora_file": ref})
    deliverer.deliver_due()
    [received] = receiver.on("/linked")
    assert not isinstance(received.payload, Exception)  # the signature covers the linked body
    lora = received.payload["payload"]["lora_file"]
    assert "key" not in lora and lora["file_size"] == 3 and lora["file_name"] == "lora.safetensors"
    assert lora["url"].startswith("http://gateway.example:8000/v1/files/jobs/owner/job-1/lora.safetensors?")
