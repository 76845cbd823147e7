"""The Celery app: a broker chosen by settings, and settings chosen for jobs that run for hours.

Embedded default: kombu's filesystem transport under the data dir (no server; one machine). Production:
Redis. The job itself lives in the database; the broker only carries "run job <id>". Why each setting is
what it is: docs/celery.md.
"""

from __future__ import annotations

from celery import Celery

from ltx2trainer.settings import Settings

TRAINING_QUEUE = "trainings"
RUN_JOB_TASK = "ltx2trainer.run_job"
# Dataset preparation (jobs/datasets.py) needs no GPU: its own queue, which CPU-only workers can serve alone.
PREPARE_QUEUE = "prepare"
PREPARE_DATASET_TASK = "ltx2trainer.prepare_dataset"
EMBEDDED_POLL_INTERVAL_S = 0.1  # how often an idle worker looks for work on the filesystem broker


def broker_transport_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.data_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            # kombu's default control folder is "control" in the working directory: keep it in the data dir
            "control_folder": str(folder / "control"),
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": EMBEDDED_POLL_INTERVAL_S,
        }
    # Redis: a delivered but unacknowledged task is handed to another worker after visibility_timeout,
    # even while it still runs. It must exceed the longest job (docs/celery.md).
    return {"visibility_timeout": settings.broker_visibility_timeout_s}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings` (the gateway uses it only to send; workers also register the task)."""
    app = Celery("ltx2trainer", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=TRAINING_QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": TRAINING_QUEUE}, PREPARE_DATASET_TASK: {"queue": PREPARE_QUEUE}},
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        # Acknowledge after the job returns, so a worker that dies mid-job hands it on...
        task_acks_late=True,
        # ...also when only its child process was killed (OOM, segfault): requeue rather than ack.
        task_reject_on_worker_lost=True,
        # A job is hours long: reserve no second job behind the running one.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # A fresh process per job: GPU memory, CUDA state and anything a job leaked are freed after it.
        worker_max_tasks_per_child=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith("redis"):
        app.conf.result_backend_transport_options = {"visibility_timeout": settings.broker_visibility_timeout_s}
        app.conf.visibility_timeout = settings.broker_visibility_timeout_s
    return app
