"""Per-step billing: the ledger, settlement by outcome, exact money, estimates, budgets, the usage API."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import BigInteger, func, select

from ltx2trainer.api import create_app
from ltx2trainer.billing.ledger import record_steps, set_spend_limit, to_nano, usd
from ltx2trainer.billing.models import SettlementRow, UsageRecordRow
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services

PRICE = Decimal("0.0048")
DATA = "https://example.com/clips.zip"


@dataclass
class Billing:
    client: TestClient
    services: Services
    alice: dict[str, str]
    alice_key: str
    bob: dict[str, str]
    admin: dict[str, str]

    def submit(self, steps: int = 100, headers: dict | None = None, **fields) -> dict:
        response = self.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": steps,
                                                           **fields}, headers=headers or self.alice)
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, job_id: str, steps_done: int, outcome: str) -> None:
        """Play the worker: start, complete `steps_done` steps, end with `outcome`."""
        lifecycle = self.services.lifecycle
        lifecycle.start(job_id, "worker-1", lease_s=60, max_attempts=3)
        record_steps(self.services.db, job_id, list(range(1, steps_done + 1)), PRICE)
        if outcome == "succeeded":
            lifecycle.succeed(job_id, {"lora_file": None, "config_file": None, "video": None, "debug_dataset": None})
        elif outcome == "cancelled":
            lifecycle.request_cancel(job_id)
            lifecycle.cancel(job_id)
        elif outcome == "failed":
            lifecycle.fail(job_id, "internal_error", "the GPU fell off the bus")

    def job(self, job_id: str, headers: dict | None = None) -> dict:
        return self.client.get(f"/v1/trainings/{job_id}", headers=headers or self.alice).json()


@pytest.fixture
def billing(tmp_path: Path, database_url: str) -> Iterator[Billing]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    services = Services(settings)
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0  # jobs change behind the gateway's back: read them fresh
    alice = create_key(services.db, "alice").token
    headers = lambda token: {"Authorization": f"Key {token}"}  # noqa: E731
    with TestClient(app) as client:
        yield Billing(client, services, headers(alice), alice, headers(create_key(services.db, "bob").token),
                      headers(create_key(services.db, "ops", is_admin=True).token))
    services.db.engine.dispose()


def test_a_succeeded_training_costs_its_steps_times_the_price(billing: Billing):
    job = billing.submit(2000)
    assert job["estimated_cost_usd"] == "9.6000"
    assert job["usage"] == {"unit": "step", "steps_completed": 0, "steps_billed": 0, "unit_price": "0.0048",
                            "amount_usd": "0.0000", "currency": "USD"}
    billing.run(job["id"], 2000, "succeeded")
    usage = billing.job(job["id"])["usage"]
    assert (usage["steps_completed"], usage["steps_billed"], usage["amount_usd"]) == (2000, 2000, "9.6000")


def test_a_running_training_shows_what_it_has_cost_so_far(billing: Billing):
    job = billing.submit(500)
    billing.services.lifecycle.start(job["id"], "worker-1", lease_s=60, max_attempts=3)
    record_steps(billing.services.db, job["id"], list(range(1, 126)), PRICE)
    usage = billing.job(job["id"])["usage"]
    assert (usage["steps_completed"], usage["amount_usd"]) == (125, "0.6000")


def test_each_step_is_recorded_once_however_often_it_is_reported(billing: Billing):
    # a worker that crashed after step 80 resumes from its checkpoint at 50 and runs 51..100 again
    job = billing.submit(100)
    billing.services.lifecycle.start(job["id"], "worker-1", lease_s=60, max_attempts=3)
    record_steps(billing.services.db, job["id"], list(range(1, 81)), PRICE)
    record_steps(billing.services.db, job["id"], list(range(51, 101)), PRICE)
    billing.services.lifecycle.succeed(job["id"], {})
    with billing.services.db.session() as session:
        steps = list(session.scalars(select(UsageRecordRow.step).where(UsageRecordRow.job_id == job["id"])))
    assert sorted(steps) == list(range(1, 101))
    assert billing.job(job["id"])["usage"]["amount_usd"] == "0.4800"


def test_a_user_cancel_pays_for_the_steps_done(billing: Billing):
    job = billing.submit(500)
    billing.run(job["id"], 137, "cancelled")
    usage = billing.job(job["id"])["usage"]
    assert (usage["steps_completed"], usage["steps_billed"], usage["amount_usd"]) == (137, 137, "0.6576")


@pytest.mark.parametrize("steps_done", [0, 250])
def test_a_failed_training_costs_nothing(billing: Billing, steps_done: int):
    # before training, or a platform fault mid-training: never charged
    job = billing.submit(500)
    billing.run(job["id"], steps_done, "failed")
    usage = billing.job(job["id"])["usage"]
    assert (usage["steps_completed"], usage["steps_billed"], usage["amount_usd"]) == (steps_done, 0, "0.0000")


def test_a_training_cancelled_while_queued_costs_nothing(billing: Billing):
    job = billing.submit(500)
    billing.client.post(f"/v1/trainings/{job['id']}/cancel", headers=billing.alice)
    assert billing.job(job["id"])["usage"]["amount_usd"] == "0.0000"


def test_steps_are_not_billed_after_settlement(billing: Billing):
    job = billing.submit(100)
    billing.run(job["id"], 40, "cancelled")
    record_steps(billing.services.db, job["id"], list(range(41, 60)), PRICE)  # a late straggler
    assert billing.job(job["id"])["usage"]["steps_billed"] == 40


def test_money_is_exact_decimal_never_binary_float(billing: Billing, tmp_path: Path):
    # 3 steps at 0.1 + 0.2 style prices: floats would say 0.30000000000000004
    assert usd(to_nano("0.1") + to_nano("0.2")) == "0.3000"
    assert usd(to_nano("0.000000123") * 3) == "0.000000369"
    with pytest.raises(ValueError, match="nano-dollars"):
        to_nano("0.0000000001")
    for column in (UsageRecordRow.unit_price_nano_usd, SettlementRow.amount_nano_usd):
        assert isinstance(column.type, BigInteger)
    settings = Settings(data_dir=tmp_path / "odd", price_per_step=Decimal("0.000000123"))
    services = Services(settings)
    with TestClient(create_app(settings, services=services)) as client:
        key = {"Authorization": f"Key {create_key(services.db, 'carol').token}"}
        job = client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 300},
                          headers=key).json()
        services.lifecycle.start(job["id"], "w", lease_s=60, max_attempts=3)
        record_steps(services.db, job["id"], list(range(1, 301)), settings.price_per_step)
        services.lifecycle.succeed(job["id"], {})
        assert client.get(f"/v1/trainings/{job['id']}", headers=key).json()["usage"]["amount_usd"] == "0.0000369"


def test_the_price_is_fixed_when_the_job_is_submitted(billing: Billing):
    job = billing.submit(100)
    billing.services.settings.price_per_step = Decimal("0.01")  # a price change while it waits
    billing.run(job["id"], 100, "succeeded")
    assert billing.job(job["id"])["usage"]["amount_usd"] == "0.4800"


def test_a_jobs_estimate_stays_at_the_price_fixed_when_it_was_submitted(billing: Billing):
    job = billing.submit(2000)
    assert job["estimated_cost_usd"] == "9.6000"
    billing.services.settings.price_per_step = Decimal("0.01")  # a price change after the submit
    shown = billing.job(job["id"])
    assert shown["usage"]["unit_price"] == "0.0048"
    assert Decimal(shown["estimated_cost_usd"]) == 2000 * Decimal(shown["usage"]["unit_price"]) == Decimal("9.6")
    listed = billing.client.get("/v1/trainings", headers=billing.alice).json()["data"]
    assert [row["estimated_cost_usd"] for row in listed] == [shown["estimated_cost_usd"]]
    dashboard = billing.client.get("/v1/dashboard", headers=billing.alice).json()
    assert [row["estimated_cost_usd"] for row in dashboard["trainings"]] == ["9.6000"]
    # a spending limit reserves the queued job at its own price (9.60), not at today's (20.00)
    set_spend_limit(billing.services.db, billing.alice_key.split(":")[0], Decimal("20"))
    refused = billing.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 1100},
                                  headers=billing.alice)  # 11.00 at the new price: 20.60 > 20
    assert refused.status_code == 402 and "reserved by queued and running trainings $9.6000" in refused.json()["detail"]


def test_estimates_quote_steps_price_cost_and_duration(billing: Billing):
    answer = billing.client.post("/v1/estimates", json={"training_data_url": DATA, "number_of_steps": 2000},
                                 headers=billing.alice).json()
    assert (answer["steps"], answer["unit_price"], answer["estimated_cost_usd"]) == (2000, "0.0048", "9.6000")
    assert answer["estimated_duration_s"] is None  # no finished job to learn a speed from yet
    job = billing.submit(100)
    billing.services.lifecycle.start(job["id"], "worker-1", lease_s=60, max_attempts=3)
    billing.services.lifecycle.report_progress(job["id"], {"step": 100, "total_steps": 100, "steps_per_s": 4.0})
    billing.services.lifecycle.succeed(job["id"], {})
    answer = billing.client.post("/v1/estimates", json={"training_data_url": DATA, "number_of_steps": 2000},
                                 headers=billing.alice).json()
    assert answer["estimated_duration_s"] == 500.0


def test_max_cost_refuses_a_training_before_it_is_queued(billing: Billing):
    response = billing.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 2000,
                                                          "max_cost_usd": "5.00"}, headers=billing.alice)
    assert response.status_code == 402
    detail = response.json()["detail"]
    assert "$9.6000" in detail and "$4.6000 more than max_cost_usd $5.00" in detail
    assert billing.client.get("/v1/trainings", headers=billing.alice).json()["data"] == []  # nothing queued
    assert billing.submit(1000, max_cost_usd="5.00")["estimated_cost_usd"] == "4.8000"


def test_a_key_spending_limit_counts_spent_and_reserved_money(billing: Billing):
    key_id = billing.alice_key.split(":")[0]
    set_spend_limit(billing.services.db, key_id, Decimal("12"))
    first = billing.submit(2000)  # reserves 9.60
    refused = billing.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 1000},
                                  headers=billing.alice)
    assert refused.status_code == 402
    detail = refused.json()["detail"]
    assert "spending limit of $12.0000 by $2.4000" in detail and "reserved by queued and running trainings $9.6000" in detail
    billing.run(first["id"], 300, "cancelled")  # settles at 1.44: 10.56 left
    assert billing.submit(1000)["estimated_cost_usd"] == "4.8000"
    assert billing.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 2000},
                               headers=billing.alice).status_code == 402  # 1.44 + 4.80 + 9.60 > 12
    # other keys, even of the same owner, have their own limits
    other = create_key(billing.services.db, "alice").token
    assert billing.submit(2000, headers={"Authorization": f"Key {other}"})["status"] == "queued"


def test_concurrent_submits_never_reserve_more_than_the_spending_limit(billing: Billing):
    """A $1.00 limit has room for two $0.48 trainings: of 8 submits racing each other, exactly 2 are accepted,
    round after round (a fresh key each round), on SQLite and on PostgreSQL."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for _round in range(3):
        token = create_key(billing.services.db, "alice").token
        set_spend_limit(billing.services.db, token.split(":")[0], Decimal("1.00"))
        start = threading.Barrier(8)

        def submit(_: int, token: str = token, start: threading.Barrier = start) -> int:
            start.wait()
            return billing.client.post("/v1/trainings", json={"training_data_url": DATA, "number_of_steps": 100},
                                       headers={"Authorization": f"Key {token}"}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(submit, range(8)))
        assert codes == [201, 201] + [402] * 6, codes


def test_an_idempotent_replay_is_not_refused_by_the_budget(billing: Billing):
    set_spend_limit(billing.services.db, billing.alice_key.split(":")[0], Decimal("10"))
    headers = {**billing.alice, "Idempotency-Key": "run-1"}
    body = {"training_data_url": DATA, "number_of_steps": 2000}
    first = billing.client.post("/v1/trainings", json=body, headers=headers)
    again = billing.client.post("/v1/trainings", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]


def test_usage_by_day_and_by_job(billing: Billing):
    done = billing.submit(2000)
    billing.run(done["id"], 2000, "succeeded")
    cancelled = billing.submit(500)
    billing.run(cancelled["id"], 100, "cancelled")
    failed = billing.submit(300)
    billing.run(failed["id"], 10, "failed")
    billing.submit(100)  # still queued: not settled, not in usage
    by_day = billing.client.get("/v1/usage", headers=billing.alice).json()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert by_day["data"] == [{"date": today, "steps": 2100, "amount_usd": "10.0800", "jobs": 3}]
    assert by_day["total"] == {"steps": 2100, "amount_usd": "10.0800", "jobs": 3}
    assert by_day["unit_price"] == "0.0048"
    by_job = billing.client.get("/v1/usage", params={"group_by": "job"}, headers=billing.alice).json()["data"]
    assert {(row["job_id"], row["outcome"], row["steps_billed"], row["amount_usd"]) for row in by_job} == {
        (done["id"], "succeeded", 2000, "9.6000"), (cancelled["id"], "cancelled", 100, "0.4800"),
        (failed["id"], "failed", 0, "0.0000")}
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    empty = billing.client.get("/v1/usage", params={"start": "2020-01-01", "end": yesterday},
                               headers=billing.alice).json()
    assert empty["data"] == [] and empty["total"]["amount_usd"] == "0.0000"
    assert billing.client.get("/v1/usage", params={"start": "yesterday"}, headers=billing.alice).status_code == 422


def test_usage_exports_as_csv(billing: Billing):
    job = billing.submit(2000)
    billing.run(job["id"], 2000, "succeeded")
    response = billing.client.get("/v1/usage", params={"group_by": "job", "format": "csv"}, headers=billing.alice)
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    [row] = list(csv.DictReader(io.StringIO(response.text)))
    assert (row["job_id"], row["steps_billed"], row["amount_usd"]) == (job["id"], "2000", "9.6000")


def test_usage_is_per_owner_and_admins_see_everyone(billing: Billing):
    mine = billing.submit(1000)
    billing.run(mine["id"], 1000, "succeeded")
    theirs = billing.submit(500, headers=billing.bob)
    billing.run(theirs["id"], 500, "succeeded")
    assert billing.client.get("/v1/usage", headers=billing.alice).json()["total"]["amount_usd"] == "4.8000"
    assert billing.client.get("/v1/usage", headers=billing.bob).json()["total"]["amount_usd"] == "2.4000"
    assert billing.client.get("/v1/usage", params={"owner": "bob"}, headers=billing.alice).status_code == 403
    everyone = billing.client.get("/v1/usage", params={"group_by": "job"}, headers=billing.admin).json()
    assert {row["owner"] for row in everyone["data"]} == {"alice", "bob"}
    assert everyone["total"]["amount_usd"] == "7.2000"
    assert billing.client.get("/v1/usage", params={"owner": "bob"},
                              headers=billing.admin).json()["total"]["amount_usd"] == "2.4000"


def test_the_queue_facade_reports_usage_in_its_metrics(billing: Billing):
    job = billing.submit(200)
    billing.run(job["id"], 200, "succeeded")
    status = billing.client.get(f"/fal-ai/ltx2-video-trainer/requests/{job['id']}/status",
                                headers=billing.alice).json()
    assert status["status"] == "COMPLETED"
    assert status["metrics"]["usage"]["amount_usd"] == "0.9600"


def test_the_ledger_and_settlements_agree(billing: Billing):
    job = billing.submit(400)
    billing.run(job["id"], 123, "cancelled")
    with billing.services.db.session() as session:
        recorded = session.scalar(select(func.count()).select_from(UsageRecordRow)
                                  .where(UsageRecordRow.job_id == job["id"]))
        settlement = session.get(SettlementRow, job["id"])
    assert recorded == settlement.steps_billed == 123
    assert settlement.amount_nano_usd == 123 * to_nano(PRICE)
