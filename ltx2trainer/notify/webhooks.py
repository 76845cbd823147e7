"""Signed webhooks: an outbox written with each status change, and a deliverer that sends it with retries.

Two flavors of message, both signed with the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, secret `whsec_…`):

- `fal` (the job's `fal_webhook`, the hosted queue protocol): once, when the job ends —
  `{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error", "error_type"}`, with the
  error mapping of the queue's status and result (`fal_protocol.completion_payload`);
- `native` (the job's `webhook_url`): `training.started` when it first runs, `training.checkpoint` for each
  checkpoint it publishes, and `training.succeeded` / `training.failed` / `training.cancelled` when it ends —
  `{"type", "timestamp", "data": {id, status, output, error, usage, metadata}}`, the thin shape Standard
  Webhooks recommends (a checkpoint's also has `data.checkpoint`). The input's `webhook_events` (a list of
  these types; none: all) picks which are sent.

`outbox_listener` writes a `WebhookMessageRow` inside the transaction of the status change, and
`checkpoint_listener` inside the one that records a checkpoint event (so a message is
never lost and never sent for a change that was rolled back); its id is the `webhook-id`, the same on every
attempt. `WebhookDeliverer.deliver_due` sends what is due. Each attempt passes the SSRF guard, is one POST
that does not follow redirects, and is logged as a `WebhookAttemptRow`. 2xx delivers; 410 Gone, a blocked or
unusable URL, or the last allowed attempt fail the message; anything else is retried on the Standard Webhooks
schedule with ±10 % jitter, or later if a 429/502/503/504 answer's `Retry-After` asks for it. Deliverers
claim a message with a conditional UPDATE before sending, so any number of them (threads, processes, hosts;
SQLite or PostgreSQL) send each attempt once. Delivery is at least once: a deliverer that dies between the
POST and recording it leaves the message to be sent again after its lease; receivers dedupe on `webhook-id`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from ltx2trainer import netguard
from ltx2trainer.errors import UserInputError
from ltx2trainer.fal_protocol import completion_payload
from ltx2trainer.guarded_http import Deadline, guarded_client
from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.lifecycle import CHECKPOINT_EVENT, EventListener, TransitionListener
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.notify.models import WebhookAttemptRow, WebhookMessageRow, WebhookStatus
from ltx2trainer.settings import Settings
from ltx2trainer.storage import get_storage, render_refs

log = logging.getLogger(__name__)

USER_AGENT = "ltx2trainer-webhooks/0.1"
FLAVOR_NATIVE = "native"
FLAVOR_FAL = "fal"

EVENT_TYPES = {
    JobStatus.RUNNING: "training.started",
    JobStatus.SUCCEEDED: "training.succeeded",
    JobStatus.FAILED: "training.failed",
    JobStatus.CANCELLED: "training.cancelled",
}
CHECKPOINT_EVENT_TYPE = "training.checkpoint"

# Standard Webhooks' recommended schedule: the wait after the 1st, 2nd, … failed attempt (later ones reuse the
# last entry). With ±10 % jitter so that receivers that failed together are not retried together.
RETRY_SCHEDULE_S = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
RETRY_JITTER = 0.1
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})  # answers whose Retry-After is honoured
MAX_RETRY_AFTER_S = 24 * 3600  # a receiver cannot park a message longer than the schedule's longest wait
CLAIM_LEASE_MARGIN_S = 5.0  # a claim outlives the attempt's timeout by this much
DELIVERY_THREADS = 8  # attempts at once, per deliverer
DELIVERIES_PER_HOST = 2  # of which at most this many to one receiver host


# --- payloads -----------------------------------------------------------------------------------------


def encode_payload(body: dict[str, Any]) -> str:
    """Compact JSON; its UTF-8 bytes are exactly what is signed and sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def native_payload(job: JobRow, event_type: str, at: dt.datetime, sequence: int = 1,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The native event: Standard Webhooks' recommended `{type, timestamp, data}`, thin (no input, no logs).

    `sequence` numbers one job's events from 1 in the order they happened: deliveries are retried
    independently, so after a receiver's outage a later event can arrive first; receivers order by it."""
    return {
        "type": event_type,
        "timestamp": _iso(at),
        "sequence": sequence,
        "data": {
            "id": job.id,
            "status": job.status,
            "output": job.output,
            "error": job.error,
            "usage": job.usage,
            "metadata": job.metadata_,
            **(extra or {}),
        },
    }


def wants_event(job: JobRow, event_type: str) -> bool:
    """Whether the job's native webhook takes `event_type` (its input's `webhook_events`; none given: all)."""
    wanted = (job.input or {}).get("webhook_events")
    return wanted is None or event_type in wanted


def _next_sequence(session: Session, job: JobRow) -> int:
    return 1 + (session.scalar(select(func.count()).where(
        WebhookMessageRow.job_id == job.id, WebhookMessageRow.flavor == FLAVOR_NATIVE)) or 0)


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


# --- the outbox ---------------------------------------------------------------------------------------


def outbox_listener(settings: Settings, *, clock: Callable[[], dt.datetime] = utcnow) -> TransitionListener:
    """A `Lifecycle` listener that adds the webhook messages of a status change to the same transaction.

    `settings` is taken for symmetry with the deliverer (nothing in it changes what is written today);
    `clock` stamps the messages (they are due at once) and the native events' `timestamp`.
    """
    del settings

    def listener(session: Session, job: JobRow, old_status: str | None, new_status: str) -> None:
        event_type = EVENT_TYPES.get(new_status)
        if event_type is None or not (job.webhook_url or job.fal_webhook):
            return
        now = clock()
        messages: list[tuple[str, str, dict[str, Any]]] = []
        if job.webhook_url and wants_event(job, event_type) \
                and not (new_status == JobStatus.RUNNING and _started_already_sent(session, job)):
            messages.append((FLAVOR_NATIVE, job.webhook_url,
                             native_payload(job, event_type, now, _next_sequence(session, job))))
        if job.fal_webhook and new_status in JobStatus.TERMINAL:
            messages.append((FLAVOR_FAL, job.fal_webhook, completion_payload(job)))
        for flavor, url, body in messages:
            session.add(WebhookMessageRow(
                id=new_message_id(), job_id=job.id, owner=job.owner, url=url, flavor=flavor,
                event_type=event_type, payload=encode_payload(body), status=WebhookStatus.PENDING, attempts=0,
                next_attempt_at=now, created_at=now,
            ))

    return listener


def checkpoint_listener(settings: Settings, *, clock: Callable[[], dt.datetime] = utcnow) -> EventListener:
    """A `Lifecycle` event listener: a `training.checkpoint` native message for each checkpoint event, in the
    transaction that records it; `data.checkpoint` is the event's `{step, created_at, train_loss, files,
    final}` (files signed when sent). The fal webhook has no such event."""
    del settings

    def listener(session: Session, job: JobRow, kind: str, data: dict[str, Any]) -> None:
        if kind != CHECKPOINT_EVENT or not job.webhook_url or not wants_event(job, CHECKPOINT_EVENT_TYPE):
            return
        now = clock()
        body = native_payload(job, CHECKPOINT_EVENT_TYPE, now, _next_sequence(session, job), {"checkpoint": data})
        session.add(WebhookMessageRow(
            id=new_message_id(), job_id=job.id, owner=job.owner, url=job.webhook_url, flavor=FLAVOR_NATIVE,
            event_type=CHECKPOINT_EVENT_TYPE, payload=encode_payload(body), status=WebhookStatus.PENDING,
            attempts=0, next_attempt_at=now, created_at=now,
        ))

    return listener


def _started_already_sent(session: Session, job: JobRow) -> bool:
    """A job that resumes after its worker was lost runs again (queued → running): one `training.started`."""
    return bool(session.scalar(select(exists().where(
        WebhookMessageRow.job_id == job.id,
        WebhookMessageRow.flavor == FLAVOR_NATIVE,
        WebhookMessageRow.event_type == EVENT_TYPES[JobStatus.RUNNING],
    ))))


# --- retry policy -------------------------------------------------------------------------------------


def retry_delay_s(failed_attempts: int, *, jitter: float = RETRY_JITTER, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failed_attempts`-th failed attempt (1-based), jittered by ±`jitter`."""
    base = RETRY_SCHEDULE_S[min(max(failed_attempts, 1), len(RETRY_SCHEDULE_S)) - 1]
    return base * (rng or random).uniform(1 - jitter, 1 + jitter)


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """A `Retry-After` header (delta-seconds or an HTTP date) as seconds from `now`; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


# --- delivery -----------------------------------------------------------------------------------------


@dataclass
class _Claimed:
    id: str
    job_id: str
    url: str
    payload: str
    attempt: int  # 1-based number of this attempt


@dataclass
class _Outcome:
    status_code: int | None = None
    error: str | None = None
    delivered: bool = False
    permanent: bool = False  # do not retry (410 Gone, blocked or unusable URL)
    retry_after_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class _PermanentFailure(Exception):
    pass


class WebhookDeliverer:
    """Sends due outbox messages. Thread-safe to run several at once, in one process or many.

    `clock` decides what is due and stamps attempts and signatures (tests pass a fake one). With
    `resolve_addresses=False` the SSRF check does not ask DNS: literal IP addresses and `localhost` are still
    judged, host names pass (for an egress proxy that does its own checks).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        resolve_addresses: bool = True,
        jitter: float = RETRY_JITTER,
        storage=None,
        concurrency: int = DELIVERY_THREADS,
        per_host: int = DELIVERIES_PER_HOST,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.resolve_addresses = resolve_addresses
        self.jitter = jitter
        self.timeout_s = settings.webhook_timeout_s
        self.max_attempts = settings.webhook_max_attempts
        self.lease = dt.timedelta(seconds=self.timeout_s + CLAIM_LEASE_MARGIN_S)
        self._webhook = Webhook(settings.secret("webhook_secret"))  # fails fast on a missing or bad secret
        self._owns_client = client is None
        if client is None and resolve_addresses:  # resolve once, connect to the checked address (rebinding)
            client = guarded_client(allow_private=settings.allow_private_urls, what="the webhook URL",
                                    timeout=self.timeout_s, headers={"User-Agent": USER_AGENT})
        self._client = client or httpx.Client(
            follow_redirects=False, timeout=self.timeout_s, headers={"User-Agent": USER_AGENT}
        )
        self._rng = random.Random()
        self._storage = storage
        # Attempts run on a pool, at most `per_host` at once to one receiver: one slow tenant's receiver holds
        # a few threads for its timeout, never everyone's deliveries.
        self.concurrency = max(1, concurrency)
        self.per_host = max(1, per_host)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook") \
            if self.concurrency > 1 else None
        self._busy: dict[str, int] = {}  # receiver host -> delivery threads working on it now
        self._slots_lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> WebhookDeliverer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the loop ---

    def run_forever(self, stop: threading.Event, interval_s: float = 1.0, limit: int = 50) -> None:
        """Deliver until `stop` is set: at once again while there is a backlog, else every `interval_s`."""
        while not stop.is_set():
            try:
                attempted = self.deliver_due(limit=limit, wait=False)  # a slow receiver holds its own threads
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the background thread
                log.exception("webhook delivery sweep failed")
                attempted = 0
            if attempted < limit:
                stop.wait(interval_s)

    def deliver_due(self, limit: int = 50, *, wait: bool = True) -> int:
        """Send every due pending message once (up to `limit`); returns how many were attempted (`wait`) or
        handed to the delivery threads (not `wait`: the maintenance loop, which must not wait on a slow
        receiver). Each receiver host gets at most `per_host` threads, each working through its share of that
        host's messages in order; a host whose threads are all busy gets no new ones until one finishes."""
        now = self.clock()
        with self.db.session() as session:
            due = session.execute(
                select(WebhookMessageRow.id, WebhookMessageRow.attempts, WebhookMessageRow.url)
                .where(WebhookMessageRow.status == WebhookStatus.PENDING, WebhookMessageRow.next_attempt_at <= now)
                .order_by(WebhookMessageRow.next_attempt_at, WebhookMessageRow.created_at)
                .limit(limit)
            ).all()
        if self._pool is None:
            return sum(self._claim_and_attempt(message_id, attempts) for message_id, attempts, _url in due)
        by_host: dict[str, list[tuple[str, int]]] = {}
        for message_id, attempts, url in due:
            by_host.setdefault(_host_of(url), []).append((message_id, attempts))
        futures, handed = [], 0
        with self._slots_lock:
            for host, rows in by_host.items():
                free = self.per_host - self._busy.get(host, 0)
                for share in (rows[i::free] for i in range(min(free, len(rows)))):
                    self._busy[host] = self._busy.get(host, 0) + 1
                    futures.append(self._pool.submit(self._deliver_share, host, share))
                    handed += len(share)
        return sum(future.result() for future in futures) if wait else handed

    def _deliver_share(self, host: str, rows: list[tuple[str, int]]) -> int:
        try:
            return sum(self._claim_and_attempt(message_id, attempts) for message_id, attempts in rows)
        finally:
            with self._slots_lock:
                self._busy[host] -= 1

    def _claim_and_attempt(self, message_id: str, attempts: int) -> int:
        """1 if this deliverer made an attempt, 0 if another one had claimed the message."""
        claimed = self._claim(message_id, attempts)  # a claim's lease covers one attempt
        if claimed is None:
            return 0
        self._attempt(claimed)
        return 1

    def _claim(self, message_id: str, attempts_read: int) -> _Claimed | None:
        """Take the message for one attempt: an atomic conditional UPDATE that only one deliverer can win."""
        now = self.clock()
        with self.db.session() as session:
            # The UPDATE comes first in its transaction, so SQLite takes the write lock at once (no read→write
            # upgrade to deadlock on); PostgreSQL re-checks the WHERE after waiting on a concurrent claimer.
            result = session.execute(
                update(WebhookMessageRow)
                .where(
                    WebhookMessageRow.id == message_id,
                    WebhookMessageRow.status == WebhookStatus.PENDING,
                    WebhookMessageRow.attempts == attempts_read,
                    WebhookMessageRow.next_attempt_at <= now,
                )
                .values(attempts=attempts_read + 1, next_attempt_at=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                return None
            job_id, url, payload = session.execute(
                select(WebhookMessageRow.job_id, WebhookMessageRow.url, WebhookMessageRow.payload)
                .where(WebhookMessageRow.id == message_id)
            ).one()
        return _Claimed(id=message_id, job_id=job_id, url=url, payload=payload, attempt=attempts_read + 1)

    def _attempt(self, message: _Claimed) -> None:
        started_at = self.clock()
        began = time.monotonic()
        try:
            outcome = self._send(message, started_at)
        except Exception as exc:  # noqa: BLE001 - record anything unexpected as a failed attempt and retry
            log.exception("webhook %s: unexpected error while sending", message.id)
            outcome = _Outcome(error=f"{type(exc).__name__}: {exc}")
        duration_ms = int((time.monotonic() - began) * 1000)
        self._record(message, outcome, started_at, duration_ms)

    def _send(self, message: _Claimed, started_at: dt.datetime) -> _Outcome:
        try:
            host = self._check_url(message.url)
        except _PermanentFailure as exc:
            return _Outcome(error=str(exc), permanent=True)
        except UserInputError as exc:  # the host does not resolve (now): a retry may succeed
            return _Outcome(error=exc.message)

        body = self._with_links(message)
        seconds = int(started_at.timestamp())
        signed_at = dt.datetime.fromtimestamp(seconds, dt.UTC)
        headers = {
            "webhook-id": message.id,
            "webhook-timestamp": str(seconds),
            "webhook-signature": self._webhook.sign(message.id, signed_at, body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        details: dict[str, Any] = {"webhook_timestamp": seconds}
        # webhook_timeout_s bounds the whole attempt, not each read: a receiver answering one byte at a time
        # would otherwise hold the deliverer (and every tenant's webhooks behind it) as long as it likes.
        deadline = Deadline(self.timeout_s)
        try:
            with deadline, self._client.stream(
                "POST", message.url, content=body.encode("utf-8"), headers=headers,
                follow_redirects=False, timeout=self.timeout_s,
            ) as response:
                stream = response.extensions.get("network_stream")
                peer = stream.get_extra_info("server_addr") if stream is not None else None
                try:
                    netguard.check_peer(host, peer[0] if peer else None,
                                        allow_private=self.settings.allow_private_urls, what="the webhook URL")
                except netguard.BlockedAddressError as exc:  # DNS changed between the check and the connect
                    return _Outcome(error=f"blocked: {exc.message}", permanent=True, details=details)
                code = response.status_code
                reason = f"HTTP {code} {response.reason_phrase}".rstrip()
                if 200 <= code < 300:
                    return _Outcome(status_code=code, delivered=True, details=details)
                if code == 410:
                    return _Outcome(status_code=code, error=f"{reason}: the receiver does not want this webhook",
                                    permanent=True, details=details)
                if response.is_redirect:
                    details["location"] = response.headers.get("location", "")[:500]
                    return _Outcome(status_code=code, error=f"{reason}: redirects are not followed", details=details)
                retry_after = None
                if code in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after(response.headers.get("retry-after"), started_at)
                    if retry_after is not None:
                        details["retry_after_s"] = retry_after
                return _Outcome(status_code=code, error=reason, retry_after_s=retry_after, details=details)
        except netguard.BlockedAddressError as exc:  # refused when connecting (guarded_http)
            return _Outcome(error=f"blocked: {exc.message}", permanent=True, details=details)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if deadline.expired or isinstance(exc, httpx.TimeoutException):
                return _Outcome(error=f"timed out: no complete answer within {self.timeout_s:g} s "
                                      f"({type(exc).__name__})", details=details)
            return _Outcome(error=f"{type(exc).__name__}: {exc}", details=details)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _Outcome(error=f"unusable URL: {exc}", permanent=True, details=details)
        except httpx.HTTPError as exc:
            return _Outcome(error=f"{type(exc).__name__}: {exc}", details=details)

    def _with_links(self, message: _Claimed) -> str:
        """The body to send: stored file references made into File objects with freshly signed URLs.

        Signed now rather than when the job ended, because a retry may come hours later. Local storage's
        links point at the gateway the job was submitted to (or `LTX2T_PUBLIC_BASE_URL`).
        """
        if '"file_size"' not in message.payload:
            return message.payload  # nothing to link (quick check; refs always carry a size)
        payload = json.loads(message.payload)
        base_url = self.settings.public_base_url or self._job_base_url(message.job_id) or ""
        try:
            rendered = render_refs(self._output_storage(), payload, expires_s=self.settings.file_url_ttl_s,
                                   base_url=base_url)
        except ValueError as exc:  # local storage and no known gateway URL: send the names without links
            log.warning("webhook %s: cannot link outputs: %s", message.id, exc)
            return message.payload
        return encode_payload(rendered)

    def _job_base_url(self, job_id: str) -> str | None:
        with self.db.session() as session:
            return session.scalar(select(JobRow.public_base_url).where(JobRow.id == job_id))

    def _output_storage(self):
        if self._storage is None:
            self._storage = get_storage(self.settings)
        return self._storage

    def _check_url(self, url: str) -> str:
        """The URL's host, after the SSRF guard; `_PermanentFailure` if it must never be sent to."""
        try:
            host, port = netguard.http_target(url)
        except netguard.InvalidURL as exc:
            raise _PermanentFailure(f"unusable URL: {exc}") from exc
        except netguard.NotHttpURL as exc:
            raise _PermanentFailure(f"unusable URL: {exc} ({url[:200]})") from exc
        if self.settings.allow_private_urls:
            return host
        try:
            if self.resolve_addresses:
                netguard.check_host(host, port, allow_private=False, what="the webhook URL")
            else:
                netguard.check_literal_host(host, what="the webhook URL")
        except netguard.BlockedAddressError as exc:
            raise _PermanentFailure(f"blocked: {exc.message}") from exc
        return host

    def _record(self, message: _Claimed, outcome: _Outcome, started_at: dt.datetime, duration_ms: int) -> None:
        now = self.clock()
        values: dict[str, Any] = {"last_status_code": outcome.status_code, "last_error": outcome.error}
        if outcome.delivered:
            values.update(status=WebhookStatus.DELIVERED, delivered_at=now, last_error=None)
            result = "delivered"
        elif outcome.permanent or message.attempt >= self.max_attempts:
            values.update(status=WebhookStatus.FAILED)
            if not outcome.permanent:
                values["last_error"] = f"gave up after {message.attempt} attempts; last: {outcome.error}"
            result = "failed"
        else:
            delay = retry_delay_s(message.attempt, jitter=self.jitter, rng=self._rng)
            if outcome.retry_after_s is not None:
                delay = max(delay, min(outcome.retry_after_s, MAX_RETRY_AFTER_S))
            values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
            outcome.details["next_attempt_at"] = _iso(values["next_attempt_at"])
            result = "retry"
        outcome.details["result"] = result
        with self.db.session() as session:
            session.add(WebhookAttemptRow(
                message_id=message.id, attempt=message.attempt, started_at=started_at, duration_ms=duration_ms,
                status_code=outcome.status_code, error=outcome.error, details=outcome.details,
            ))
            # Only if the claim still holds: past its lease another deliverer may have taken the message.
            session.execute(
                update(WebhookMessageRow)
                .where(WebhookMessageRow.id == message.id, WebhookMessageRow.status == WebhookStatus.PENDING,
                       WebhookMessageRow.attempts == message.attempt)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if result == "delivered":
            log.info("webhook %s delivered on attempt %d", message.id, message.attempt)
        else:
            log.warning("webhook %s attempt %d failed (%s): %s", message.id, message.attempt, result, outcome.error)


def _host_of(url: str) -> str:
    try:
        return (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
