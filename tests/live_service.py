"""A live service for end-to-end tests: the real gateway on a loopback port (uvicorn in a thread) and,
when asked, a real Celery worker in a subprocess, sharing a database, broker and storage under tmp_path.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from tests.mediagen import make_video, make_zip

WORKER_READY_TIMEOUT_S = 90


@dataclass
class LiveService:
    url: str
    settings: Settings
    services: Services
    key: str  # "key_…:secret" of owner "alice"
    env: dict[str, str]
    worker: subprocess.Popen | None = None
    worker_log: Path | None = None
    other_keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Key {key or self.key}"}, timeout=30)

    def new_key(self, owner: str, *, admin: bool = False) -> str:
        return create_key(self.services.db, owner, is_admin=admin).token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for processes of one test service (everything under data_dir, loopback URLs allowed)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LTX2T_")}
    env.update({"LTX2T_DATA_DIR": str(data_dir), "LTX2T_MODEL": "tiny", "LTX2T_ALLOW_PRIVATE_URLS": "true",
                "LTX2T_PREPARE_WORKERS": "1", "OMP_NUM_THREADS": "1"})
    env.update(overrides)
    return env


@contextlib.contextmanager
def live_service(data_dir: Path, *, with_worker: bool = True, **env_overrides: str) -> Iterator[LiveService]:
    env = service_env(data_dir, **env_overrides)
    saved = {key: os.environ.get(key) for key in env if key.startswith("LTX2T_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("LTX2T_")})
    try:
        settings = Settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    services = Services(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services=services), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    service = LiveService(url=f"http://127.0.0.1:{port}", settings=settings, services=services,
                          key=create_key(services.db, "alice").token, env=env)
    try:
        if with_worker:
            start_worker(service)
        yield service
    finally:
        stop_worker(service)
        server.should_exit = True
        thread.join(timeout=10)


def start_worker(service: LiveService) -> None:
    service.settings.data_dir.mkdir(parents=True, exist_ok=True)
    service.worker_log = service.settings.data_dir / f"worker-{time.monotonic_ns()}.log"
    log = service.worker_log.open("w")
    service.worker = subprocess.Popen([sys.executable, "-m", "ltx2trainer.cli", "worker"], env=service.env,
                                      stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if "ready." in service.worker_log.read_text(errors="replace"):
            return
        if service.worker.poll() is not None:
            raise RuntimeError(f"worker exited:\n{service.worker_log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready:\n{service.worker_log.read_text()[-3000:]}")


def stop_worker(service: LiveService) -> None:
    if service.worker is not None and service.worker.poll() is None:
        service.worker.terminate()
        try:
            service.worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.worker.kill()
            service.worker.wait()
    service.worker = None


def tiny_dataset_url(folder: Path, *, clips: int = 2, seconds: float = 0.6) -> str:
    """A small captioned zip as a data: URL (fast to prepare and encode)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | str] = {}
    for i, source in zip(range(clips), ("smptebars", "testsrc2", "rgbtestsrc"), strict=False):
        files[f"clip{i}.mp4"] = make_video(folder / f"clip{i}.mp4", seconds=seconds, size=(160, 120),
                                           source=source, tone_hz=440 + 110 * i)
        files[f"clip{i}.txt"] = f"test clip number {i}"
    archive = make_zip(folder / "data.zip", files)
    return "data:application/zip;base64," + base64.b64encode(archive.read_bytes()).decode()


FAST_JOB = {
    # the smallest valid request: 9 frames of 512x288, 100 steps, no validation videos
    "number_of_steps": 100, "number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9", "rank": 8,
    "learning_rate": 0.001,
}
