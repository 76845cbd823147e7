"""Webhook delivery under slow, dead and recovering receivers: per-attempt time limits, tenants kept apart,
and event order after an outage. Fixtures and helpers are test_webhooks.py's."""

# ruff: noqa: F811 - the tests take test_webhooks.py's fixtures, imported here by name, as parameters
from __future__ import annotations

import time

from ltx2trainer.notify.webhooks import WebhookStatus
from tests.test_webhooks import (  # noqa: F401 - pytest finds the fixtures by name in this module
    LORA_OUTPUT,
    TIMEOUT_S,
    TRAINING_INPUT,
    attempts,
    clock,
    db,
    deliverer,
    lifecycle,
    message,
    only_message,
    receiver,
    run_job,
    settings,
)


def test_events_delivered_out_of_order_after_an_outage_carry_their_order(lifecycle, db, deliverer, receiver, clock):
    """The receiver is down when the job starts; by the time it is back the job has finished: the finish arrives
    before the start (retries are independent), and `sequence` says which came first."""
    receiver.script["/hook"] = [503]
    job, _ = lifecycle.submit("owner-1", TRAINING_INPUT, webhook_url=receiver.url("/hook"))
    lifecycle.start(job.id, "worker-1", lease_s=60, max_attempts=3)
    assert deliverer.deliver_due() == 1  # training.started: 503, retried in 5 s
    lifecycle.succeed(job.id, LORA_OUTPUT)
    assert deliverer.deliver_due() == 1  # training.succeeded: delivered
    clock.advance(6)
    assert deliverer.deliver_due() == 1  # training.started, at last
    arrived = [(r.payload["type"], r.payload["sequence"]) for r in receiver.on("/hook") if r.payload["type"]
               and isinstance(r.payload, dict)]
    assert arrived == [("training.started", 1), ("training.succeeded", 2), ("training.started", 1)]
    assert [t for t, _ in sorted(arrived[1:], key=lambda item: item[1])] == ["training.started", "training.succeeded"]


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_attempts_time_limit(lifecycle, db, deliverer, receiver):
    """Each byte comes within the read timeout, the whole answer would take ~4 s: the attempt ends at
    webhook_timeout_s all the same (one slow receiver must not hold the deliverer)."""
    receiver.script["/hook"] = ["trickle"]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    began = time.monotonic()
    assert deliverer.deliver_due() == 1
    assert time.monotonic() - began < TIMEOUT_S * 3
    [first] = attempts(db, msg_id)
    assert first.status_code is None and "timed out" in first.error


def test_a_slow_receiver_does_not_delay_another_tenants_webhooks(lifecycle, db, deliverer, receiver):
    """Four events to a receiver that hangs past the timeout, one to another host: the other one is delivered
    at once, while the slow host's messages wait on their own (at most two) delivery threads."""
    receiver.script["/slow"] = ["hang"] * 4
    for _ in range(2):  # started + succeeded each
        run_job(lifecycle, webhook_url=receiver.url("/slow"))
    fast_url = receiver.url("/fast").replace("127.0.0.1", "localhost")  # another host name, same server
    run_job(lifecycle, "failed", webhook_url=fast_url)
    began = time.monotonic()
    assert deliverer.deliver_due(wait=False) == 6  # handed to the delivery threads, nothing awaited
    assert time.monotonic() - began < TIMEOUT_S
    while not receiver.on("/fast") or len(receiver.on("/fast")) < 2:
        assert time.monotonic() - began < TIMEOUT_S * 2, "the fast receiver waited behind the slow one"
        time.sleep(0.01)
    deliverer.close()  # waits for the slow attempts (each cut off at the timeout)
    assert len(receiver.on("/slow")) == 4


def test_timeout_is_a_failed_attempt_that_is_retried(lifecycle, db, deliverer, receiver, clock):
    receiver.script["/hook"] = ["hang"]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    began = time.monotonic()
    assert deliverer.deliver_due() == 1
    assert time.monotonic() - began < TIMEOUT_S * 2.5  # gave up before the receiver answered
    [first] = attempts(db, msg_id)
    assert first.status_code is None and "timed out" in first.error
    clock.advance(6)
    assert deliverer.deliver_due() == 1
    assert message(db, msg_id).status == WebhookStatus.DELIVERED
