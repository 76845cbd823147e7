"""The service's command line: keys, and the demo that runs the whole product (the README's main command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ltx2trainer.jobs.keys import authenticate
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from tests.mediagen import video_facts

CLI = [sys.executable, "-m", "ltx2trainer.cli"]


def run_cli(*args: str, data_dir) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LTX2T_DATA_DIR": str(data_dir), "HOME": str(data_dir)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, check=False)


def test_keys_can_be_created_listed_and_revoked(tmp_path):
    created = run_cli("keys", "create", "--owner", "studio-a", "--name", "laptop", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split(":")[0]
    db = Services(Settings(data_dir=tmp_path)).db
    assert authenticate(db, f"Key {token}").owner == "studio-a"
    assert authenticate(db, f"Bearer {token}").key_id == key_id

    listed = run_cli("keys", "list", data_dir=tmp_path)
    [row] = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    assert row[:4] == [key_id, "studio-a", "laptop", "no"] and row[5] == "-" and row[6] == "-"
    assert token.split(":")[1] not in listed.stdout + listed.stderr  # the secret is never shown again

    assert run_cli("keys", "revoke", key_id, data_dir=tmp_path).returncode == 0
    assert authenticate(db, f"Key {token}") is None
    missing = run_cli("keys", "revoke", "key_nope", data_dir=tmp_path)
    assert missing.returncode == 1 and "no key key_nope" in missing.stderr


def test_submit_without_a_key_says_how_to_get_one(tmp_path):
    run = run_cli("submit", "https://example.com/data.zip", data_dir=tmp_path)
    assert run.returncode == 2 and "keys create" in run.stderr


def test_a_worker_for_an_unknown_queue_is_refused_naming_the_queues(tmp_path):
    run = run_cli("worker", "--queues", "prepare,gpu", data_dir=tmp_path)
    assert run.returncode == 2 and "unknown queue(s) gpu" in run.stderr and "trainings" in run.stderr


@pytest.mark.slow
def test_the_demo_runs_the_whole_service_and_downloads_the_outputs(tmp_path):
    run = subprocess.run([*CLI, "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True,
                         check=False, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "succeeded" in run.stderr
    outputs = tmp_path / "demo" / "outputs"
    config = json.loads((outputs / "config.json").read_text())
    assert config["training"]["steps"] == 100 and config["trigger_phrase"] == "DEMO"
    assert (outputs / "lora.safetensors").stat().st_size > 0
    assert video_facts(outputs / "validation.mp4")["frames"] == 17 * 4
    log = (tmp_path / "demo" / "service.log").read_text()
    assert '"logger": "ltx2trainer.worker.runner"' in log  # structured JSON logs from the worker
