"""`serve --with-worker` keeps its worker alive: a killed worker is started again (with back-off)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psutil

from ltx2trainer import supervise
from ltx2trainer.supervise import Supervisor
from tests.live_service import free_port, service_env


def test_a_dead_child_is_started_again_with_growing_waits(monkeypatch):
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.2)
    started: list[float] = []

    def start() -> subprocess.Popen:
        started.append(time.monotonic())
        # dies at once, every time; not a Python child, whose start-up on a loaded machine (a second or more)
        # would swamp the 0.2/0.4/0.8 s waits being measured
        return subprocess.Popen(["false"])

    supervisor = Supervisor(start, name="crashing")
    supervisor.start()
    try:
        deadline = time.monotonic() + 10
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        supervisor.stop()
    assert len(started) >= 4 and supervisor.restarts >= 3
    waits = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert waits[1] > 1.6 * waits[0] and waits[2] > 1.6 * waits[1]  # 0.2, 0.4, 0.8 s: backing off


def test_serve_with_worker_restarts_a_killed_worker(tmp_path):
    port = free_port()
    env = service_env(tmp_path / "data")
    serve = subprocess.Popen([sys.executable, "-m", "ltx2trainer.cli", "serve", "--port", str(port), "--with-worker"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def workers() -> list[psutil.Process]:
            found = []
            for child in psutil.Process(serve.pid).children():
                try:
                    if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                        found.append(child)
                except psutil.Error:  # gone (or a zombie) between listing and asking
                    continue
            return found

        def wait_for(condition, seconds: float):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if (value := condition()):
                    return value
                time.sleep(0.2)
            raise AssertionError(f"not within {seconds} s")

        def health_workers() -> list:
            try:  # the gateway may not listen yet: the worker can start first
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["workers"]
            except httpx.TransportError:
                return []

        first = wait_for(workers, 60)[0]
        wait_for(health_workers, 90)
        first.send_signal(signal.SIGKILL)  # the worker's main process, as the OOM killer would
        second = wait_for(lambda: [w for w in workers() if w.pid != first.pid], 15)[0]
        assert second.is_running()
    finally:
        serve.terminate()
        serve.wait(timeout=30)
