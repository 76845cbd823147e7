"""Handing a job to the workers: only its id crosses the broker; everything else is in the database.

The database is the source of truth, the broker a delivery mechanism that can lose messages (a Redis restart
without persistence, a message a worker dropped when its claim failed, a request that came while the broker
was down). `pending_job_ids` and `pending_preparation_ids` say which jobs and datasets the broker still holds
(waiting, or delivered and not yet acknowledged), so the workers' sweeper can publish again the queued ones it
no longer holds (`worker/app.sweep_lost_jobs`, `sweep_lost_preparations`).
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

    def pending_preparation_ids(self) -> set[str] | None: ...


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
        from ltx2trainer.jobs.celery_app import RUN_JOB_TASK, TRAINING_QUEUE

        return self._pending(RUN_JOB_TASK, TRAINING_QUEUE)

    def pending_preparation_ids(self) -> set[str] | None:
        """Dataset ids of the prepare_dataset messages the broker holds, as `pending_job_ids`."""
        from ltx2trainer.jobs.celery_app import PREPARE_DATASET_TASK, PREPARE_QUEUE

        return self._pending(PREPARE_DATASET_TASK, PREPARE_QUEUE)

    def _pending(self, task: str, queue: str) -> set[str] | None:
        url = self.settings.broker_url
        if url.startswith(("redis://", "rediss://")):
            return _redis_pending(url, task, queue)
        if url.startswith("filesystem://"):
            return _folder_pending(self.settings.data_dir / "broker" / "queue", task)
        return None


def _argument(message: dict, task: str) -> str | None:
    """The single argument (a job or dataset id) of a Celery protocol-2 message for `task` (its `argsrepr`
    header: "['<id>']"); None for another task's message."""
    headers = message.get("headers") or {}
    if headers.get("task") != task:
        return None
    args = str(headers.get("argsrepr", "")).strip("[]() ,")
    return args.strip("'\"") or None


def _redis_pending(url: str, task: str, queue: str) -> set[str]:
    """kombu's Redis transport keeps waiting messages in a list named after the queue, and delivered ones until
    they are acknowledged in the `unacked` hash ([message, exchange, routing key] per delivery tag), shared by
    every queue (hence the filter by task)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        raw = [json.loads(item) for item in client.lrange(queue, 0, -1)]
        raw += [json.loads(item)[0] for item in client.hvals("unacked")]
    finally:
        client.close()
    return {found for message in raw if (found := _argument(message, task))}


def _folder_pending(folder: Path, task: str) -> set[str]:
    """The embedded broker: one file per waiting message, every queue's in one folder (taken messages are gone
    from it)."""
    found = set()
    for path in folder.glob("*.msg"):
        try:
            argument = _argument(json.loads(path.read_text(encoding="utf-8")), task)
        except (OSError, ValueError):  # taken (deleted) or being written right now
            continue
        if argument:
            found.add(argument)
    return found
