"""A worker process killed mid-training: the job resumes from its last checkpoint and every step is billed
exactly once, although the steps after that checkpoint are trained (and reported) twice.

A real Celery worker in a subprocess; the process running the task is SIGKILLed, as the kernel's OOM killer
or a lost spot instance would. Celery redelivers the task (late ack, reject on worker lost) to a fresh child on
the same node, which takes the job over and resumes it.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import psutil
import pytest
from sqlalchemy import select

from ltx2trainer.billing.models import UsageRecordRow
from tests.live_service import FAST_JOB, live_service, tiny_dataset_url

pytestmark = pytest.mark.slow

STEPS = 400
CHECKPOINT_EVERY = 50
KILL_AFTER_STEP = 130  # past two checkpoints, so the resume redoes some steps


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def task_process(worker: psutil.Process) -> psutil.Process:
    """The pool child running the job (concurrency 1: the worker's only child)."""
    children = worker.children()
    assert len(children) == 1, children
    return children[0]


def test_a_job_resumed_after_a_worker_crash_bills_each_step_once(tmp_path):
    dataset_url = tiny_dataset_url(tmp_path / "media")
    with live_service(tmp_path / "data", LTX2T_CHECKPOINT_EVERY_STEPS=str(CHECKPOINT_EVERY)) as service, \
            service.client() as client:
        job_id = client.post("/v1/trainings", json={**FAST_JOB, "number_of_steps": STEPS,
                                                     "training_data_url": dataset_url}).json()["id"]

        def step_reached():
            job = client.get(f"/v1/trainings/{job_id}").json()
            assert job["status"] in ("queued", "running"), job
            step = (job.get("progress") or {}).get("step") or 0
            return job if step >= KILL_AFTER_STEP else None

        killed_at = wait_for(step_reached, 240, f"step {KILL_AFTER_STEP}")["progress"]["step"]
        victim = task_process(psutil.Process(service.worker.pid))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        def finished():
            job = client.get(f"/v1/trainings/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 300, "the resumed job to finish")
        assert job["status"] == "succeeded", job

        logs = "\n".join(line["message"] for line in client.get(f"/v1/trainings/{job_id}/logs").json()["data"])
        assert "(attempt 2)" in logs
        resumed = [line for line in logs.splitlines() if "resuming from step" in line]
        assert resumed, logs[-3000:]
        resumed_step = int(resumed[-1].split("resuming from step")[1].split()[0])
        assert CHECKPOINT_EVERY <= resumed_step < KILL_AFTER_STEP + CHECKPOINT_EVERY
        assert resumed_step % CHECKPOINT_EVERY == 0
        print(f"killed at step ~{killed_at}, resumed from the step-{resumed_step} checkpoint")

        price = Decimal(str(service.settings.price_per_step))
        assert job["usage"]["steps_completed"] == STEPS
        assert job["usage"]["steps_billed"] == STEPS
        assert Decimal(job["usage"]["amount_usd"]) == STEPS * price == Decimal("1.92")

        usage = client.get("/v1/usage", params={"group_by": "job"}).json()
        (row,) = [row for row in usage["data"] if row["job_id"] == job_id]
        assert row["steps_billed"] == STEPS and Decimal(row["amount_usd"]) == Decimal("1.92")
        assert Decimal(usage["total"]["amount_usd"]) == Decimal("1.92")

        with service.services.db.session() as session:  # the ledger itself: steps 1…STEPS, once each
            steps = session.scalars(select(UsageRecordRow.step).where(UsageRecordRow.job_id == job_id)).all()
        assert sorted(steps) == list(range(1, STEPS + 1))
