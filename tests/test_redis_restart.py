"""Redis restarted without persistence while jobs wait and one runs: every job still finishes, and each step is
billed once.

A private redis-server (no RDB, no AOF) is killed under a live gateway and a real worker: the queued jobs'
messages and the running job's unacknowledged one vanish. Depending on how long the outage lasts, the running
job's worker either keeps it running or, having lost its broker connection, stops it; then its lease runs out
and the reaper queues it again, to resume from its last checkpoint. Either way it finishes once. The workers'
sweeper publishes again the queued jobs the broker no longer holds. A job submitted while Redis is down is
accepted (it is safe in the database) and published by the sweeper once Redis answers.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from bench.chaos_rig import PrivateRedis
from ltx2trainer.billing.models import UsageRecordRow
from tests.live_service import FAST_JOB, live_service, tiny_dataset_url

pytestmark = pytest.mark.slow

STEPS = FAST_JOB["number_of_steps"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_job_finishes_and_bills_each_step_once_after_redis_restarts_empty(tmp_path):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    body = {**FAST_JOB, "training_data_url": tiny_dataset_url(tmp_path / "media")}
    try:
        with live_service(tmp_path / "data", LTX2T_BROKER_URL=redis.url, LTX2T_JOB_LEASE_S="15",
                          LTX2T_CHECKPOINT_EVERY_STEPS="25") as service, service.client() as client:
            jobs = [client.post("/v1/trainings", json=body).json()["id"] for _ in range(3)]

            def first_running_past_step_10():
                first = client.get(f"/v1/trainings/{jobs[0]}").json()
                return first["status"] == "running" and (first.get("progress") or {}).get("step", 0) >= 10

            wait_for(first_running_past_step_10, 240, "the first job to pass step 10")
            assert [client.get(f"/v1/trainings/{j}").json()["status"] for j in jobs[1:]] == ["queued", "queued"]

            redis.kill()  # everything Redis held is gone: two waiting messages and one unacknowledged
            during = client.post("/v1/trainings", json=body)
            assert during.status_code == 201, during.text  # accepted: the database holds it
            assert during.json()["status"] == "queued"
            jobs.append(during.json()["id"])
            time.sleep(2)
            redis.start()  # empty

            def all_finished():
                states = [client.get(f"/v1/trainings/{j}").json() for j in jobs]
                return states if all(s["status"] in ("succeeded", "failed", "cancelled") for s in states) else None

            for job in wait_for(all_finished, 480, "every job to finish"):
                assert job["status"] == "succeeded", job
                assert job["usage"]["steps_completed"] == job["usage"]["steps_billed"] == STEPS, job["usage"]

            with service.services.db.session() as session:  # the ledger: steps 1…STEPS, once each, per job
                for job_id in jobs:
                    steps = session.scalars(select(UsageRecordRow.step).where(UsageRecordRow.job_id == job_id))
                    assert sorted(steps) == list(range(1, STEPS + 1))

            def log_text(job_id: str) -> str:
                return "\n".join(line["message"] for line in
                                 client.get(f"/v1/trainings/{job_id}/logs").json()["data"])

            for job_id in jobs[1:]:  # the sweeper found each lost message
                assert "the queue lost this job's message; queued again" in log_text(job_id)
    finally:
        redis.kill()
