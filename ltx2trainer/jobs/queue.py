"""Handing a job to the workers: only its id crosses the broker; everything else is in the database.

The database is the source of truth, the broker a delivery mechanism that can lose messages (a Redis restart
without persistence, a message a worker dropped when its claim failed). `pending_job_ids` says which jobs the
broker still holds (waiting, or delivered and not yet acknowledged), so the workers' sweeper can publish again
the queued jobs it no longer holds (`worker/app.sweep_lost_jobs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ltx2trainer.settings import Settings


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def enqueue_preparation(self, dataset_id: str) -> None: ...

    def pending_job_ids(self) -> set[str] | None: ...


class CeleryJobQueue:
    """Sends `run_job(job_id)` through the configured Celery broker (the gateway never imports the task)."""

    def __init__(self, settings: Settings) -> None:
        from ltx2trainer.jobs.celery_app import make_celery

        self.settings = settings
        self.app = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        from ltx2trainer.jobs.celery_app import RUN_JOB_TASK, TRAINING_QUEUE

        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=TRAINING_QUEUE)

    def enqueue_preparation(self, dataset_id: str) -> None:
        """Send `prepare_dataset(dataset_id)` to the `prepare` queue."""
        from ltx2trainer.jobs.celery_app import PREPARE_DATASET_TASK, PREPARE_QUEUE

        self.app.send_task(PREPARE_DATASET_TASK, args=[dataset_id], queue=PREPARE_QUEUE)

    def pending_job_ids(self) -> set[str] | None:
        """Job ids of the run_job messages the broker holds, waiting or unacknowledged; None when this broker
        cannot be asked (then nothing is republished)."""
        url = self.settings.broker_url
        if url.startswith(("redis://", "rediss://")):
            return _redis_pending(url)
        if url.startswith("filesystem://"):
            return _folder_pending(self.settings.data_dir / "broker" / "queue")
        return None


def _job_id(message: dict) -> str | None:
    """The job id of a Celery protocol-2 run_job message (its `argsrepr` header: "['<id>']")."""
    from ltx2trainer.jobs.celery_app import RUN_JOB_TASK

    headers = message.get("headers") or {}
    if headers.get("task") != RUN_JOB_TASK:
        return None
    args = str(headers.get("argsrepr", "")).strip("[]() ,")
    return args.strip("'\"") or None


def _redis_pending(url: str) -> set[str]:
    """kombu's Redis transport keeps waiting messages in a list named after the queue, and delivered ones until
    they are acknowledged in the `unacked` hash ([message, exchange, routing key] per delivery tag)."""
    import redis

    from ltx2trainer.jobs.celery_app import TRAINING_QUEUE

    client = redis.Redis.from_url(url)
    try:
        raw = [json.loads(item) for item in client.lrange(TRAINING_QUEUE, 0, -1)]
        raw += [json.loads(item)[0] for item in client.hvals("unacked")]
    finally:
        client.close()
    return {job_id for message in raw if (job_id := _job_id(message))}


def _folder_pending(folder: Path) -> set[str]:
    """The embedded broker: one file per waiting message (taken messages are gone from the folder)."""
    found = set()
    for path in folder.glob("*.msg"):
        try:
            job_id = _job_id(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # taken (deleted) or being written right now
            continue
        if job_id:
            found.add(job_id)
    return found
