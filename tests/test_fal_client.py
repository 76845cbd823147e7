"""Acceptance: the real `fal-client` package (PyPI, unmodified) against a live service on loopback.

The client is configured the way a user would configure it: `FAL_QUEUE_RUN_HOST` and `FAL_KEY` in the
environment before `import fal_client` (it reads them at import time), plus the documented switch for plain
HTTP in tests, `fal_client.client.QUEUE_URL_FORMAT = "http://host:port/"`. So every fal-client part runs in
a subprocess with that environment; the script prints one JSON object for the test to assert on.

One live service (gateway + a real Celery worker) serves the whole module; jobs run one after another.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.live_service import FAST_JOB, LiveService, live_service, tiny_dataset_url

pytestmark = pytest.mark.slow

APP = "fal-ai/ltx2-video-trainer"
SCRIPT_TIMEOUT_S = 120
WEBHOOK_WAIT_S = 20
RETRIED_BY_CLIENT = {408, 409, 429}  # fal-client retries these: a permanent answer must never be one of them

# What every script starts with: configuration as a user does it, then helpers to report what happened.
PRELUDE = '''
import json, os, sys, time
assert "fal_client" not in sys.modules
import fal_client                      # reads FAL_QUEUE_RUN_HOST and FAL_KEY now
import fal_client.client
from fal_client import Completed, FalClientHTTPError, InProgress, Queued

# The documented switch for plain HTTP in tests (the URL format is https-only otherwise).
fal_client.client.QUEUE_URL_FORMAT = f"http://{os.environ['FAL_QUEUE_RUN_HOST']}/"
assert fal_client.client.QUEUE_URL_FORMAT != "https://queue.fal.run/"

ARGS = json.loads(open(os.environ["FAL_TEST_ARGS"]).read())
APP = ARGS["app"]
OUT = {}
RESPONSES = []  # (method, path, status, has x-fal-request-id) of every HTTP answer, retries included


def _observe(response):  # an httpx event hook: it only looks
    RESPONSES.append([response.request.method, response.request.url.path, response.status_code,
                      "x-fal-request-id" in response.headers])


fal_client.sync_client._client.event_hooks["response"].append(_observe)


def describe(status):
    """A Status object as JSON."""
    if isinstance(status, Queued):
        return {"type": "Queued", "position": status.position}
    if isinstance(status, InProgress):
        return {"type": "InProgress", "logs": status.logs}
    if isinstance(status, Completed):
        return {"type": "Completed", "logs": status.logs, "metrics": status.metrics, "error": status.error,
                "error_type": status.error_type}
    return {"type": type(status).__name__}


def http_error(exc):
    return {"class": type(exc).__name__, "message": exc.message, "status_code": exc.status_code,
            "error_type": exc.error_type, "body": exc.response.text,
            "x-fal-request-id": exc.response_headers.get("x-fal-request-id")}


def wait_for(handle, predicate, timeout=60):
    """Poll handle.status(with_logs=True) until predicate(status) holds; returns that status."""
    deadline = time.monotonic() + timeout
    while True:
        status = handle.status(with_logs=True)
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


try:
'''

EPILOGUE = '''
finally:
    OUT["responses"] = RESPONSES
    print("\\nRESULT " + json.dumps(OUT, default=str))
'''


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback that records every POST."""

    url: str
    received: list[Hook] = field(default_factory=list)

    def wait(self, path: str, timeout: float = WEBHOOK_WAIT_S) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hooks = [hook for hook in self.received if hook.path == path]
            if hooks:
                time.sleep(0.5)  # a duplicate would show up now
                return [hook for hook in self.received if hook.path == path]
            time.sleep(0.1)
        raise AssertionError(f"no webhook on {path} within {timeout} s; got {[h.path for h in self.received]}")


@dataclass
class Env:
    service: LiveService
    dataset_url: str
    receiver: Receiver
    work: Path

    def fal(self, body: str, *, timeout: float = SCRIPT_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        """Run `body` (indented into the prelude's try block) with fal-client in a subprocess; its OUT dict."""
        args = {"app": APP, "dataset_url": self.dataset_url, "job": FAST_JOB, **args}
        stamp = time.monotonic_ns()
        args_file = self.work / f"args-{stamp}.json"
        args_file.write_text(json.dumps(args))
        script = self.work / f"script-{stamp}.py"
        script.write_text(PRELUDE + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    ") + EPILOGUE)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("FAL_", "LTX2T_")) and key.lower() not in ("http_proxy", "https_proxy",
                                                                                  "all_proxy")}
        host = self.service.url.removeprefix("http://")
        env.update(FAL_QUEUE_RUN_HOST=host, FAL_KEY=self.service.key, FAL_TEST_ARGS=str(args_file),
                   NO_PROXY="127.0.0.1,localhost")
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.work)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, (
            f"fal-client script failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            f"\nworker log:\n{self.worker_log()}")
        out = json.loads(lines[-1].removeprefix("RESULT "))
        bad = [r for r in out["responses"] if r[2] in RETRIED_BY_CLIENT]
        assert not bad, f"answers the client would retry: {bad}"
        # Every answer about a request names it (a rejected submit has no request to name).
        missing = [r for r in out["responses"] if not r[3] and not (r[0] == "POST" and r[2] >= 400)]
        assert not missing, f"answers without x-fal-request-id: {missing}"
        return out

    def worker_log(self) -> str:
        log = self.service.worker_log
        return log.read_text(errors="replace")[-3000:] if log and log.exists() else "(no worker log)"

    def verify(self, hook: Hook) -> dict[str, Any]:
        """The webhook's payload, after checking its Standard Webhooks signature with our secret."""
        return Webhook(self.service.settings.secret("webhook_secret")).verify(hook.body, hook.headers)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received: list[Hook] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(Hook(self.path, dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{server.server_address[1]}", received=received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("fal_client")
    dataset_url = tiny_dataset_url(root / "dataset")
    work = root / "scripts"
    work.mkdir()
    with live_service(root / "data") as service:
        yield Env(service=service, dataset_url=dataset_url, receiver=receiver, work=work)


def _output_ok(output: dict[str, Any], env: Env) -> None:
    """The hosted trainer's output: File objects with URLs that download from our gateway."""
    assert {"lora_file", "config_file", "video"} <= output.keys(), output
    for key in ("lora_file", "config_file"):
        file = output[key]
        assert file["url"].startswith(env.service.url + "/"), file
        assert file["file_name"] and file["content_type"] and file["file_size"] > 0, file
    assert output["video"] is None or output["video"]["url"]
    response = httpx.get(output["lora_file"]["url"], timeout=30)  # a signed URL: no key needed
    assert response.status_code == 200
    assert len(response.content) == output["lora_file"]["file_size"]


# --- submit → status → result ------------------------------------------------------------------------------


def test_submit_status_result_by_handle_and_by_id(env: Env) -> None:
    out = env.fal('''
        handle = fal_client.submit(APP, arguments={"training_data_url": ARGS["dataset_url"], **ARGS["job"]})
        OUT["request_id"] = handle.request_id
        OUT["urls"] = [handle.status_url, handle.response_url, handle.cancel_url]
        OUT["first"] = describe(handle.status(with_logs=True))
        running = wait_for(handle, lambda s: isinstance(s, InProgress) and s.logs or isinstance(s, Completed))
        OUT["running"] = describe(running)
        OUT["running_no_logs"] = describe(handle.status(with_logs=False))
        OUT["output"] = handle.get()
        OUT["by_id_status"] = describe(fal_client.status(APP, handle.request_id, with_logs=True))
        OUT["by_id_result"] = fal_client.result(APP, handle.request_id)
        try:
            handle.cancel()  # a completed request
            OUT["cancel_completed"] = "no error"
        except FalClientHTTPError as exc:
            OUT["cancel_completed"] = http_error(exc)
    ''')
    request_id = out["request_id"]
    base = f"{env.service.url}/{APP}/requests/{request_id}"
    assert out["urls"] == [f"{base}/status", base, f"{base}/cancel"]  # absolute URLs, handed to the client

    assert out["first"]["type"] in ("Queued", "InProgress")
    if out["first"]["type"] == "Queued":
        assert isinstance(out["first"]["position"], int) and out["first"]["position"] >= 0
    running = out["running"]
    assert running["type"] == "InProgress", running  # a 100-step job is seen running
    assert running["logs"], running
    assert all({"message", "level", "source", "timestamp"} <= line.keys() for line in running["logs"])
    assert {line["level"] for line in running["logs"]} <= {"STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"}
    assert out["running_no_logs"]["type"] in ("InProgress", "Completed")
    if out["running_no_logs"]["type"] == "InProgress":
        assert out["running_no_logs"]["logs"] is None

    _output_ok(out["output"], env)
    completed = out["by_id_status"]
    assert completed["type"] == "Completed" and completed["error"] is None and completed["error_type"] is None
    assert completed["logs"] and completed["metrics"]["inference_time"] > 0
    assert out["by_id_result"].keys() == out["output"].keys()
    assert out["by_id_result"]["lora_file"]["file_name"] == out["output"]["lora_file"]["file_name"]

    # Cancelling a completed request: 400 {"status": "ALREADY_COMPLETED"}, which the client raises.
    cancel = out["cancel_completed"]
    assert cancel["class"] == "FalClientHTTPError" and cancel["status_code"] == 400, cancel
    assert json.loads(cancel["body"]) == {"status": "ALREADY_COMPLETED"}
    assert cancel["message"] == cancel["body"]  # no "detail" key: the client's message is the raw body

    # Status polls answered 202 while running, then 200; the request's own id in every answer's header.
    polls = [r for r in out["responses"] if r[0] == "GET" and r[1].endswith("/status")]
    assert {r[2] for r in polls} == {200, 202}, polls

    # The status answer itself, seen without the client: 200 once completed, and x-fal-request-id.
    with env.service.client() as client:
        response = client.get(f"/{APP}/requests/{request_id}/status", params={"logs": "1"})
        assert response.status_code == 200 and response.headers["x-fal-request-id"] == request_id
        assert response.json()["status"] == "COMPLETED"
        response = client.get(f"/{APP}/requests/{request_id}")
        assert response.status_code == 200 and response.headers["x-fal-request-id"] == request_id


def test_subscribe_with_logs_and_queue_updates(env: Env) -> None:
    out = env.fal('''
        updates, enqueued = [], []
        OUT["result"] = fal_client.subscribe(
            APP, arguments={"training_data_url": ARGS["dataset_url"], **ARGS["job"]}, with_logs=True,
            on_enqueue=enqueued.append, on_queue_update=lambda status: updates.append(describe(status)))
        OUT["enqueued"] = enqueued
        OUT["updates"] = updates
    ''')
    _output_ok(out["result"], env)
    assert len(out["enqueued"]) == 1 and out["enqueued"][0]
    updates = out["updates"]
    types = [update["type"] for update in updates]
    assert types[-1] == "Completed" and types.count("Completed") == 1, types
    assert "InProgress" in types, types
    # The order is queued → in progress → completed, never back.
    order = {"Queued": 0, "InProgress": 1, "Completed": 2}
    assert [order[t] for t in types] == sorted(order[t] for t in types), types
    with_logs = [u for u in updates if u["type"] == "InProgress" and u["logs"]]
    assert with_logs, "no InProgress update carried logs"
    assert updates[-1]["logs"] and updates[-1]["error"] is None


# --- cancel --------------------------------------------------------------------------------------------------


def test_cancel_queued_and_running_requests(env: Env) -> None:
    out = env.fal('''
        arguments = {"training_data_url": ARGS["dataset_url"], **ARGS["job"]}
        running = fal_client.submit(APP, arguments=arguments, webhook_url=ARGS["webhook_url"])
        OUT["running_id"] = running.request_id
        queued = fal_client.submit(APP, arguments=arguments)  # behind the first on the only worker
        OUT["queued_id"] = queued.request_id
        OUT["queued_status"] = describe(queued.status(with_logs=True))
        queued.cancel()
        try:
            OUT["queued_result"] = queued.get()
        except FalClientHTTPError as exc:
            OUT["queued_result"] = http_error(exc)
        OUT["queued_final"] = describe(queued.status(with_logs=True))

        # Wait until the first one trains (its samples are encoded; 100 steps follow), then cancel it.
        OUT["before_cancel"] = describe(wait_for(running, lambda s: isinstance(s, Completed) or (
            isinstance(s, InProgress) and any(line["message"].startswith("encoded ") for line in s.logs or []))))
        cancelled_at = time.monotonic()
        running.cancel()
        try:
            running.cancel()  # again, while it is stopping: idempotent
            OUT["second_cancel"] = "no error"
        except FalClientHTTPError as exc:
            OUT["second_cancel"] = http_error(exc)
        try:
            OUT["running_result"] = running.get()
        except FalClientHTTPError as exc:
            OUT["running_result"] = http_error(exc)
        OUT["stop_s"] = time.monotonic() - cancelled_at
        OUT["running_final"] = describe(running.status(with_logs=True))
        try:
            fal_client.cancel(APP, running.request_id)  # by id, once it has ended
            OUT["late_cancel"] = "no error"
        except FalClientHTTPError as exc:
            OUT["late_cancel"] = http_error(exc)
    ''', webhook_url=env.receiver.url + "/hooks/cancelled")
    # A queued request: cancelled at once; result() raises the cancellation.
    assert out["queued_status"]["type"] in ("Queued", "InProgress"), out["queued_status"]
    queued = out["queued_result"]
    assert queued["class"] == "FalClientHTTPError", queued
    assert queued["status_code"] == 400 and queued["error_type"] == "client_cancelled", queued
    assert queued["x-fal-request-id"] == out["queued_id"]
    assert out["queued_final"]["type"] == "Completed" and out["queued_final"]["error_type"] == "client_cancelled"

    # A running request: it stops at its next step check, within seconds.
    assert out["before_cancel"]["type"] == "InProgress", out["before_cancel"]
    assert out["second_cancel"] == "no error", out["second_cancel"]  # 202 CANCELLATION_REQUESTED again
    result = out["running_result"]
    assert result["class"] == "FalClientHTTPError", result
    assert result["status_code"] == 400 and result["error_type"] == "client_cancelled", result
    assert result["message"], result
    assert out["stop_s"] < 10, out["stop_s"]
    final = out["running_final"]
    assert final["type"] == "Completed" and final["error_type"] == "client_cancelled" and final["error"], final

    # Cancelling a cancelled request: 400 ALREADY_COMPLETED, raised by the client.
    late = out["late_cancel"]
    assert late["class"] == "FalClientHTTPError" and late["status_code"] == 400, late
    assert json.loads(late["body"]) == {"status": "ALREADY_COMPLETED"}

    with env.service.client() as client:
        jobs = {job_id: client.get(f"/v1/trainings/{job_id}").json() for job_id in (out["running_id"], out["queued_id"])}
    assert [job["status"] for job in jobs.values()] == ["cancelled", "cancelled"], jobs
    progress = jobs[out["running_id"]]["progress"]
    assert progress["step"] < progress["total_steps"] == FAST_JOB["number_of_steps"], progress  # stopped early

    # Its webhook: signed, status ERROR, and the error the status and the result named (fal_protocol.py).
    hooks = env.receiver.wait("/hooks/cancelled")
    assert len(hooks) == 1, hooks
    payload = env.verify(hooks[0])
    assert payload["request_id"] == out["running_id"] and payload["status"] == "ERROR", payload
    assert (payload["error_type"], payload["error"]) == ("client_cancelled", final["error"]), payload


def test_unknown_request_id_is_404(env: Env) -> None:
    out = env.fal('''
        for name, call in [("status", lambda: fal_client.status(APP, "req_does_not_exist", with_logs=True)),
                           ("result", lambda: fal_client.result(APP, "req_does_not_exist")),
                           ("cancel", lambda: fal_client.cancel(APP, "req_does_not_exist")),
                           ("submit_unknown_app", lambda: fal_client.submit("fal-ai/flux-lora-trainer", {}))]:
            try:
                call()
                OUT[name] = "no error"
            except FalClientHTTPError as exc:
                OUT[name] = http_error(exc)
    ''')
    for name in ("status", "result", "cancel", "submit_unknown_app"):
        assert out[name] != "no error", name
        assert out[name]["status_code"] == 404, (name, out[name])
    assert json.loads(out["cancel"]["body"]) == {"status": "NOT_FOUND"}
    assert "req_does_not_exist" in out["status"]["message"]
    assert len(out["responses"]) == 4  # one answer each: a 404 is not retried


# --- webhooks ------------------------------------------------------------------------------------------------


def test_webhook_on_success_is_signed_and_carries_the_output(env: Env) -> None:
    path = "/hooks/success"
    out = env.fal('''
        handle = fal_client.submit(APP, arguments={"training_data_url": ARGS["dataset_url"], **ARGS["job"]},
                                   webhook_url=ARGS["webhook_url"])
        OUT["request_id"] = handle.request_id
        OUT["output"] = handle.get()
    ''', webhook_url=env.receiver.url + path)
    hooks = env.receiver.wait(path)
    assert len(hooks) == 1, hooks
    payload = env.verify(hooks[0])  # raises if the signature does not match our secret
    request_id = out["request_id"]
    assert payload["request_id"] == request_id and payload["status"] == "OK", payload
    assert payload.get("error") is None
    output = payload["payload"]
    assert {"lora_file", "config_file"} <= output.keys(), output
    for key in ("lora_file", "config_file"):
        assert output[key]["file_name"] == out["output"][key]["file_name"]
        assert output[key]["file_size"] == out["output"][key]["file_size"]
    assert "key" not in output["lora_file"]  # storage internals never leave the service
    for key in ("lora_file", "config_file"):
        assert output[key]["url"].startswith(("http://", "https://")), output[key]
    assert httpx.get(output["lora_file"]["url"], timeout=30).status_code == 200


def test_failed_job_webhook_and_result_error(env: Env) -> None:
    path = "/hooks/failure"
    not_a_zip = "data:application/zip;base64," + base64.b64encode(b"this is not a zip archive").decode()
    out = env.fal('''
        handle = fal_client.submit(APP, arguments={"training_data_url": ARGS["bad_url"], **ARGS["job"]},
                                   webhook_url=ARGS["webhook_url"])
        OUT["request_id"] = handle.request_id
        try:
            OUT["result"] = handle.get()
        except FalClientHTTPError as exc:
            OUT["result"] = http_error(exc)
        OUT["status"] = describe(handle.status(with_logs=True))
    ''', webhook_url=env.receiver.url + path, bad_url=not_a_zip)
    status = out["status"]
    assert status["type"] == "Completed" and status["error"] and status["error_type"], status
    assert status["error_type"] not in ("internal_error", "client_cancelled"), status  # the user's input failed

    result = out["result"]
    assert result["class"] == "FalClientHTTPError", result
    assert result["status_code"] == 422, result  # the user's error: not retried, not a 5xx
    assert result["message"] == status["error"] and result["error_type"] == status["error_type"], result
    assert result["x-fal-request-id"] == out["request_id"]

    hooks = env.receiver.wait(path)
    assert len(hooks) == 1, hooks
    payload = env.verify(hooks[0])
    assert payload["request_id"] == out["request_id"] and payload["status"] == "ERROR", payload
    assert payload["error"] == status["error"] and payload["error_type"] == status["error_type"], payload
    assert payload["payload"] is None
