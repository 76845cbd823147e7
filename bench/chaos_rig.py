"""The rig `bench/chaos.py` faults: a private Redis it can kill, `ltx2trainer serve --with-worker` as a real
subprocess, a webhook receiver that verifies every delivery with `standardwebhooks` and can be down, and HTTP
clients that record every answer's latency and every 5xx.

Everything runs on loopback under one output folder. Nothing here knows about a scenario.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import standardwebhooks
from sqlalchemy import create_engine, text

from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll `predicate` until it returns something truthy; raise naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --- Redis -----------------------------------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of our own on a free port, without persistence: a restart loses everything it held."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is needed (apt-get install -y redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 20, "redis-server to answer", 0.05)

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


# --- the database ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def fresh_database(folder: Path, url: str | None):
    """`url` if given; else a new PostgreSQL database on the local server (dropped afterwards) when one answers,
    else SQLite in `folder`. Yields the URL."""
    if url:
        yield url
        return
    name = f"ltx2t_chaos_{os.getpid()}_{int(time.time())}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:  # noqa: BLE001 - no local PostgreSQL: the embedded default
        yield f"sqlite:///{folder / 'chaos.db'}"
        return
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- the service -----------------------------------------------------------------------------------------

@dataclass
class Service:
    """`ltx2trainer serve --with-worker` in a subprocess (the gateway, its supervisor and its worker)."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        overrides = {key[len("LTX2T_"):].lower(): value for key, value in self.env.items()
                     if key.startswith("LTX2T_")}
        return Settings(**overrides)

    def start(self) -> None:
        log = (self.folder / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ltx2trainer.cli", "serve", "--port", str(self.port), "--with-worker"],
            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._healthy() and self.worker_main(), READY_TIMEOUT_S, "the gateway and its worker")

    def _healthy(self) -> bool:
        try:
            return bool(httpx.get(f"{self.url}/health", timeout=5).json().get("workers"))
        except (httpx.HTTPError, ValueError):
            return False

    def worker_main(self) -> psutil.Process | None:
        """The supervised worker's main process (a child of `serve`)."""
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                    return child
        return None

    def task_process(self) -> psutil.Process | None:
        """The worker's pool child (it runs one job at a time, in a fresh process each)."""
        main = self.worker_main()
        if main is None:
            return None
        with contextlib.suppress(psutil.Error):
            children = [c for c in main.children() if c.status() != psutil.STATUS_ZOMBIE]
            return children[0] if children else None
        return None

    def new_key(self, owner: str) -> str:
        services = Services(self.settings)
        try:
            return create_key(services.db, owner).token
        finally:
            services.db.engine.dispose()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


# --- webhooks --------------------------------------------------------------------------------------------

@dataclass
class Delivery:
    message_id: str
    event_type: str
    job_id: str
    verified: bool
    received_at: float


class WebhookReceiver:
    """Standard Webhooks receiver on a fixed port that can be down (nothing listens) and brought back."""

    def __init__(self, secret: str) -> None:
        self.port = free_port()
        self.verifier = standardwebhooks.Webhook(secret)
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.came_up_at: float | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    payload = receiver.verifier.verify(body, headers)
                    verified = True
                except standardwebhooks.WebhookVerificationError:
                    payload, verified = json.loads(body or b"{}"), False
                data = payload.get("data") or {}
                with receiver.lock:
                    receiver.deliveries.append(Delivery(
                        headers.get("webhook-id", ""), payload.get("type") or f"fal.{payload.get('status')}",
                        data.get("id") or payload.get("request_id") or "", verified, time.monotonic()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.came_up_at = time.monotonic()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self) -> dict[str, Delivery]:
        """The verified deliveries by message id (a message delivered twice counts once: at-least-once)."""
        with self.lock:
            return {d.message_id: d for d in self.deliveries if d.verified}


# --- clients that keep score -----------------------------------------------------------------------------

class Recorder:
    """Latency per kind of request, and every 5xx (or transport error) the gateway gave, for the whole run."""

    def __init__(self) -> None:
        self.latencies_ms: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def request(self, client: httpx.Client, kind: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            with self.lock:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.latencies_ms[kind].append(elapsed)
            if response.status_code >= 500:
                self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        return response

    def count_5xx(self) -> int:
        with self.lock:
            return len(self.errors)

    def p99_ms(self, kind: str) -> float | None:
        with self.lock:
            values = sorted(self.latencies_ms.get(kind, []))
        if not values:
            return None
        return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
