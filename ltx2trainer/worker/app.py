"""The worker process: the Celery app with the `run_job` task, plus a maintenance thread that delivers
webhooks from the outbox, puts jobs of dead workers back in the queue, publishes again queued jobs the broker
lost, and keeps this worker's entry (and the
base model it serves) fresh in the workers table that `GET /health` reads.

    ltx2trainer worker        # one job at a time; run one per GPU
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable

from celery import Celery, signals
from celery.utils.nodenames import host_format

from ltx2trainer.jobs.celery_app import (
    PREPARE_DATASET_TASK,
    PREPARE_QUEUE,
    RUN_JOB_TASK,
    TRAINING_QUEUE,
    make_celery,
)
from ltx2trainer.jobs.db import utcnow
from ltx2trainer.jobs.workers import SEEN_EVERY_S, ServedModel, identify_model, record_worker, touch_worker
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services

log = logging.getLogger(__name__)

WEBHOOK_SWEEP_S = 1.0
REAP_EVERY_S = 5.0
EXPIRE_EVERY_REAPS = 60  # the retention sweep: every 5 minutes
LOST_AFTER_S = 30.0  # a queued job is looked for in the broker once it is this old (or this long republished)


def make_worker_app(settings: Settings) -> Celery:
    # Imported here, in the parent, so that each job's fresh child process inherits it (~0.3 s per job);
    # it does not import torch (that happens inside the job, where CUDA may be initialised safely).
    import ltx2trainer.pipeline.run  # noqa: F401

    Services(settings).db.engine.dispose()  # create the tables once, before any child needs them
    app = make_celery(settings)

    @app.task(name=RUN_JOB_TASK, bind=True)
    def run_job(task, job_id: str) -> str:
        from ltx2trainer.worker.runner import execute_job

        # The node name is stable across the fresh child process each job gets, so a redelivered job of
        # this very worker (its child was killed) is resumed at once instead of waiting for its lease.
        worker_id = task.request.hostname or socket.gethostname()
        return execute_job(job_id, settings, worker_id=worker_id)

    @app.task(name=PREPARE_DATASET_TASK)
    def prepare_dataset(dataset_id: str) -> str:
        from ltx2trainer.worker.prepare_runner import execute_preparation

        return execute_preparation(dataset_id, settings)

    return app


class Maintenance(threading.Thread):
    """Delivers due webhooks every second, requeues jobs whose worker stopped renewing its lease, and (given
    the worker's node name) records the model this worker serves and refreshes its last-seen time."""

    def __init__(self, settings: Settings, *, worker_name: str | None = None,
                 served: ServedModel | None = None) -> None:
        super().__init__(name="ltx2trainer-maintenance", daemon=True)
        self.settings = settings
        self.worker_name = worker_name
        self.served = served
        self.stop_event = threading.Event()

    def run(self) -> None:
        from ltx2trainer.notify.webhooks import WebhookDeliverer

        services = Services(self.settings)
        deliverer = WebhookDeliverer(services.db, self.settings)
        # Webhooks on their own thread (and its delivery pool): a slow receiver never delays the reaper.
        delivery = threading.Thread(target=deliverer.run_forever, args=(self.stop_event, WEBHOOK_SWEEP_S),
                                    name="ltx2trainer-webhooks", daemon=True)
        delivery.start()
        ticks_per_reap = max(1, round(REAP_EVERY_S / WEBHOOK_SWEEP_S))
        tick = 0
        last_seen = self._announce(services)
        while not self.stop_event.wait(WEBHOOK_SWEEP_S):
            try:
                tick += 1
                if tick % ticks_per_reap == 0:
                    reap_dead_workers(services)
                    sweep_lost_jobs(services)
                    sweep_stale_preparations(services)
                    sweep_lost_preparations(services)
                if tick % (ticks_per_reap * EXPIRE_EVERY_REAPS) == 0:
                    expire_unused_datasets(services)
            except Exception:  # noqa: BLE001 - keep the loop alive; the next tick retries
                log.exception("maintenance tick failed")
            if self.worker_name and time.monotonic() - last_seen >= SEEN_EVERY_S:
                try:
                    touch_worker(services.db, self.worker_name, self.served or ServedModel(None, "unknown"))
                    last_seen = time.monotonic()
                except Exception:  # noqa: BLE001 - retried on the next tick
                    log.exception("could not refresh this worker's entry in the workers table")
        delivery.join(timeout=30)
        deliverer.close()

    def _announce(self, services: Services) -> float:
        """Record this worker and its model at once (not after the first tick)."""
        if self.worker_name:
            try:
                record_worker(services.db, self.worker_name, self.served or ServedModel(None, "unknown"))
            except Exception:  # noqa: BLE001 - the refresh in the loop tries again
                log.exception("could not record this worker in the workers table")
                return 0.0
        return time.monotonic()


def reap_dead_workers(services: Services) -> list[str]:
    """Requeue running jobs whose lease expired (their worker is gone); they resume from checkpoints."""
    requeued = []
    for job_id in services.store.expired_leases():
        if services.lifecycle.requeue(job_id, "its worker stopped responding; resuming elsewhere"):
            services.queue.enqueue(job_id)
            requeued.append(job_id)
            log.warning("requeued job %s: its worker's lease expired", job_id)
    return requeued


def sweep_lost_jobs(services: Services, *, grace_s: float = LOST_AFTER_S) -> list[str]:
    """Publish again the queued jobs whose broker message is gone (a Redis restart without persistence, a
    message dropped when its claim failed). Idempotent: one sweeper wins each job (`Lifecycle.republish`), and a
    duplicate message is harmless, since a job is claimed under a lease and never runs twice at once."""
    return _republish_lost(
        "job", services.queue.pending_job_ids, services.store.queued_before, services.lifecycle.republish,
        services.queue.enqueue, grace_s)


def _republish_lost(what: str, pending_ids: Callable[[], set[str] | None],
                    queued_before: Callable[[dt.datetime], list[str]],
                    republish: Callable[[str, dt.datetime], bool], send: Callable[[str], None],
                    grace_s: float) -> list[str]:
    """Send again each queued `what` (job or dataset) older than `grace_s` whose message the broker does not
    hold, when `republish` lets this sweeper have it (exactly one sweeper wins each)."""
    try:
        pending = pending_ids()
    except Exception as exc:  # noqa: BLE001 - the broker is down: nothing to compare with until it answers
        log.warning("cannot read the %s queue to look for lost %ss (%s: %s); trying again on the next tick",
                    what, what, type(exc).__name__, exc)
        return []
    if pending is None:  # a broker that cannot be asked: nothing to compare with
        return []
    cutoff = utcnow() - dt.timedelta(seconds=grace_s)  # younger ones may still be on their way to the broker
    republished = []
    for item_id in queued_before(cutoff):
        if item_id in pending or not republish(item_id, cutoff):
            continue
        send(item_id)
        republished.append(item_id)
        log.warning("%s %s: its queue message was lost; published it again", what, item_id)
    return republished


def sweep_stale_preparations(services: Services) -> list[str]:
    """Queue again the datasets whose preparing worker stopped renewing its lease (claiming is idempotent, so a
    duplicate message does nothing)."""
    from ltx2trainer.jobs.datasets import requeue_stale_preparations

    stale = requeue_stale_preparations(services.db)
    for dataset_id in stale:
        try:
            services.queue.enqueue_preparation(dataset_id)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the next tick tries again
            log.warning("could not queue dataset %s again (%s)", dataset_id, exc)
            break
    return stale


def sweep_lost_preparations(services: Services, *, grace_s: float = LOST_AFTER_S) -> list[str]:
    """Put again on the prepare queue the queued datasets the broker does not hold (a lost message, or one never
    sent because the broker was down when the dataset was created). Once each, as `sweep_lost_jobs` does:
    `datasets.republish` lets one sweeper win a dataset, and claiming makes a duplicate message harmless."""
    from ltx2trainer.jobs.datasets import queued_before, republish

    return _republish_lost(
        "dataset", services.queue.pending_preparation_ids, lambda cutoff: queued_before(services.db, cutoff),
        lambda dataset_id, cutoff: republish(services.db, dataset_id, cutoff), services.queue.enqueue_preparation,
        grace_s)


def expire_unused_datasets(services: Services) -> list[str]:
    """With `dataset_retention_days` set, remove the stored files of datasets no training has used for that
    long; their entries stay as `expired` with the reason, so their owner sees what happened."""
    import datetime as dt

    from ltx2trainer.jobs.datasets import mark_expired, unused_datasets
    from ltx2trainer.storage import dataset_prefix

    days = services.settings.dataset_retention_days
    if not days:
        return []
    expired = []
    for row in unused_datasets(services.db, dt.timedelta(days=days)):
        services.storage.delete_prefix(dataset_prefix(row.owner, row.id))
        mark_expired(services.db, row.id, days)
        expired.append(row.id)
        log.info("dataset %s of %s expired: unused for %g days, its stored files are removed", row.id, row.owner, days)
    return expired


def announce_model(settings: Settings) -> ServedModel:
    """Identify the configured model and say so in the log (no torch, no weights read). A bad model is logged
    as an error, not raised: the worker keeps serving and its jobs fail with `model_error`."""
    served = identify_model(settings.model, settings.text_encoder or None)
    if served.info is not None:
        from ltx2trainer.model.identity import BaseModelInfo

        log.info("serving %s", BaseModelInfo(**served.info).label())
    else:
        log.error("the configured model cannot be used: %s (LTX2T_MODEL=%r); every job will fail with "
                  "model_error until it is fixed", served.detail or served.error, settings.model)
    return served


def run_worker(settings: Settings, *, loglevel: str = "INFO", name: str = "trainer@%h",
               queues: tuple[str, ...] = (TRAINING_QUEUE, PREPARE_QUEUE)) -> None:
    """Run a Celery worker for training jobs in this process (blocks).

    At start-up it says which model it serves (family, version, file), or logs why the configured model is
    unusable and keeps serving: its jobs then fail with `model_error` at once, costing nothing.
    """
    served = announce_model(settings)
    app = make_worker_app(settings)
    maintenance = Maintenance(settings, worker_name=host_format(name), served=served)

    @signals.worker_ready.connect(weak=False)
    def _start(sender=None, **_kwargs) -> None:
        maintenance.worker_name = getattr(sender, "hostname", None) or maintenance.worker_name  # as Celery named it
        maintenance.start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_kwargs) -> None:
        maintenance.stop_event.set()

    app.worker_main(["worker", f"--loglevel={loglevel}", "-Q", ",".join(queues), "--pool=prefork",
                     "--concurrency=1", "-n", name, "--without-gossip", "--without-mingle"])
