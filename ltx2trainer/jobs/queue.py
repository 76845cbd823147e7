"""Handing a job to the workers: only its id crosses the broker; everything else is in the database."""

from __future__ import annotations

from typing import Protocol

from ltx2trainer.settings import Settings


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...


class CeleryJobQueue:
    """Sends `run_job(job_id)` through the configured Celery broker (the gateway never imports the task)."""

    def __init__(self, settings: Settings) -> None:
        from ltx2trainer.worker.celery_app import make_celery

        self.app = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        from ltx2trainer.worker.celery_app import RUN_JOB_TASK, TRAINING_QUEUE

        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=TRAINING_QUEUE)
