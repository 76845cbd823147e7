"""The README's main command, as a program: the whole service on one machine, driven over HTTP.

Everything lives under OUT/service (SQLite database, filesystem broker, local object storage); the model is
the tiny preset. Nothing needs installing beyond the package and ffmpeg.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ltx2trainer.cli_common import console

STARTUP_TIMEOUT_S = 60.0


def run_service_demo(archive: Path, out: Path, training_fields: dict[str, Any]) -> None:
    from ltx2trainer.cli_service import follow_and_download
    from ltx2trainer.client import TrainerClient, training_data_url
    from ltx2trainer.jobs.keys import create_key
    from ltx2trainer.settings import Settings
    from ltx2trainer.wiring import Services

    data_dir = (out / "service").resolve()
    env = {**os.environ, "LTX2T_DATA_DIR": str(data_dir), "LTX2T_MODEL": "tiny", "LTX2T_STORAGE_URL": "",
           "LTX2T_DATABASE_URL": "", "LTX2T_BROKER_URL": ""}
    port = _free_port()
    server_url = f"http://127.0.0.1:{port}"
    console.print(f"[bold]2/3[/] starting the gateway and a worker on {server_url} (state in {data_dir})…")
    key = create_key(Services(Settings(data_dir=data_dir)).db, "demo", name="demo").token
    logs = (out / "service.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "ltx2trainer.cli", "serve", "--port", str(port),
                               "--with-worker"], env=env, stdout=logs, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(server_url, server)
        console.print("[bold]3/3[/] submitting the sample dataset over HTTP and following the job…")
        client = TrainerClient(server_url, key)
        try:
            job = follow_and_download(client, {**training_fields, "training_data_url": training_data_url(str(archive))},
                                      download=out / "outputs")
        finally:
            client.close()
        console.print(f"outputs in {out / 'outputs'}; server and worker logs in {out / 'service.log'}")
        console.print(f"to try the API yourself: ltx2trainer serve --with-worker with LTX2T_DATA_DIR={data_dir}, "
                      f"and the key {key}")
        return job
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        logs.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}; see the service log")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server did not become healthy within {STARTUP_TIMEOUT_S:.0f} s")
