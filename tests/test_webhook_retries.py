"""Webhook retries: the Standard Webhooks schedule with jitter, Retry-After honoured (never shortening the
schedule), 410 Gone and redirects as final answers, and giving up after the last attempt. Fixtures and
helpers are test_webhooks.py's."""

# ruff: noqa: F811 - the tests take test_webhooks.py's fixtures, imported here by name, as parameters
from __future__ import annotations

import datetime as dt
import email.utils

from ltx2trainer.notify.webhooks import (
    RETRY_SCHEDULE_S,
    WebhookDeliverer,
    WebhookStatus,
    parse_retry_after,
    retry_delay_s,
)
from tests.test_webhooks import (  # noqa: F401 - pytest finds the fixtures by name in this module
    attempts,
    clock,
    db,
    deliverer,
    lifecycle,
    make_settings,
    message,
    only_message,
    receiver,
    run_job,
    settings,
)


def test_failed_attempts_are_retried_on_the_schedule_and_delivered_on_the_third(lifecycle, db, deliverer,
                                                                               receiver, clock):
    receiver.script["/hook"] = [500, 500]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id

    assert deliverer.deliver_due() == 1  # attempt 1: 500
    row = message(db, msg_id)
    assert (row.status, row.attempts, row.last_status_code) == (WebhookStatus.PENDING, 1, 500)
    wait = (row.next_attempt_at - clock.now).total_seconds()
    assert 5 * 0.9 <= wait <= 5 * 1.1
    clock.advance(4.4)
    assert deliverer.deliver_due() == 0  # not due before the 5 s (−10 %) wait
    clock.advance(1.2)
    assert deliverer.deliver_due() == 1  # attempt 2: 500

    row = message(db, msg_id)
    wait = (row.next_attempt_at - clock.now).total_seconds()
    assert 300 * 0.9 <= wait <= 300 * 1.1
    clock.advance(269)
    assert deliverer.deliver_due() == 0
    clock.advance(62)
    assert deliverer.deliver_due() == 1  # attempt 3: 200

    row = message(db, msg_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == (WebhookStatus.DELIVERED, 3, 200,
                                                                                None)
    assert row.delivered_at == clock.now
    log = attempts(db, msg_id)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 500), (3, 200)]
    assert [a.details["result"] for a in log] == ["retry", "retry", "delivered"]
    assert log[0].error == "HTTP 500 Internal Server Error"
    assert all(a.duration_ms >= 0 for a in log)

    requests = receiver.on("/hook")
    assert len(requests) == 3
    assert all(not isinstance(r.payload, Exception) for r in requests), [r.payload for r in requests]
    assert {r.headers["webhook-id"] for r in requests} == {msg_id}
    assert len({r.headers["webhook-timestamp"] for r in requests}) == 3
    assert len({r.headers["webhook-signature"] for r in requests}) == 3
    assert [int(r.headers["webhook-timestamp"]) for r in requests] == [
        int(a.started_at.timestamp()) for a in log]


def test_retry_after_seconds_larger_than_the_schedule_is_honoured(lifecycle, db, deliverer, receiver, clock):
    receiver.script["/hook"] = [(503, {"Retry-After": "120"})]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    deliverer.deliver_due()
    clock.advance(60)
    assert deliverer.deliver_due() == 0  # the schedule alone would have retried after 5 s
    clock.advance(60)
    assert deliverer.deliver_due() == 1
    assert message(db, msg_id).status == WebhookStatus.DELIVERED
    assert attempts(db, msg_id)[0].details["retry_after_s"] == 120


def test_retry_after_http_date_on_429_is_honoured(lifecycle, db, deliverer, receiver, clock):
    later = email.utils.format_datetime(clock.now + dt.timedelta(seconds=200), usegmt=True)
    receiver.script["/hook"] = [(429, {"Retry-After": later})]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    deliverer.deliver_due()
    clock.advance(199)
    assert deliverer.deliver_due() == 0
    clock.advance(2)
    assert deliverer.deliver_due() == 1


def test_retry_after_smaller_than_the_schedule_does_not_shorten_it(lifecycle, db, deliverer, receiver, clock):
    receiver.script["/hook"] = [(503, {"Retry-After": "1"})]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    deliverer.deliver_due()
    clock.advance(2)
    assert deliverer.deliver_due() == 0
    clock.advance(4)
    assert deliverer.deliver_due() == 1


def test_410_gone_stops_retrying(lifecycle, db, deliverer, receiver, clock):
    receiver.script["/hook"] = [410]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    assert deliverer.deliver_due() == 1
    row = message(db, msg_id)
    assert (row.status, row.last_status_code) == (WebhookStatus.FAILED, 410)
    assert "410" in row.last_error
    clock.advance(48 * 3600)
    assert deliverer.deliver_due() == 0
    assert len(receiver.on("/hook")) == 1


def test_redirect_is_a_failure_and_is_not_followed(lifecycle, db, deliverer, receiver):
    receiver.script["/hook"] = [(302, {"Location": receiver.url("/elsewhere")})]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    deliverer.deliver_due()
    row = message(db, msg_id)
    assert (row.status, row.last_status_code) == (WebhookStatus.PENDING, 302)
    assert "redirects are not followed" in row.last_error
    assert receiver.on("/elsewhere") == []


def test_message_fails_after_max_attempts(tmp_path, lifecycle, db, receiver, clock):
    settings = make_settings(tmp_path, webhook_max_attempts=3)
    receiver.script["/hook"] = [500, 502, 500, 500]
    run_job(lifecycle, fal_webhook=receiver.url("/hook"))
    msg_id = only_message(db).id
    with WebhookDeliverer(db, settings, clock=clock) as deliverer:
        for _ in range(3):
            assert deliverer.deliver_due() == 1
            clock.advance(330)  # past the 5 s and 5 min (+10 %) waits
        assert deliverer.deliver_due() == 0
    row = message(db, msg_id)
    assert (row.status, row.attempts) == (WebhookStatus.FAILED, 3)
    assert row.last_error.startswith("gave up after 3 attempts")
    assert [a.status_code for a in attempts(db, msg_id)] == [500, 502, 500]
    assert len(receiver.on("/hook")) == 3


def test_retry_delays_follow_the_standard_webhooks_schedule_with_ten_percent_jitter():
    assert RETRY_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    for failed, base in [(1, 5), (2, 300), (3, 1800), (9, 86400), (15, 86400)]:
        delays = [retry_delay_s(failed) for _ in range(200)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert retry_delay_s(2, jitter=0) == 300


def test_parse_retry_after_accepts_seconds_and_http_dates():
    now = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after("Wed, 01 Jan 2025 12:01:00 GMT", now) == 60
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
