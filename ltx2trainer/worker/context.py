"""What a job sees of the service while it runs: phase, progress, logs, cancel, lease, publishing.

All of it goes through the lifecycle (the database), never through Celery, so status polls, SSE and the
queue facade see progress within about a second. Progress is written at most every
`PROGRESS_INTERVAL_S` (and on the last step); the cancel flag is read at most every `CANCEL_CHECK_S`, so a
running job stops within one training step of a cancel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ltx2trainer.jobs.lifecycle import Lifecycle
from ltx2trainer.jobs.models import JobRow
from ltx2trainer.schemas import ProgressReport, TrainingMetrics, TrainingOutput, finite_loss
from ltx2trainer.server_paths import job_paths
from ltx2trainer.settings import Settings

PROGRESS_INTERVAL_S = 0.5
CANCEL_CHECK_S = 0.25
LOGGED_PACKAGES = ("ltx2trainer",)
# `log.error(..., extra={JOB_LOG: False})` keeps a record out of the job's logs: the worker's log still has it.
JOB_LOG = "job_log"


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead): stop without touching the job."""


class WorkerContext:
    def open_upload(self, sha256: str):
        """The owner's stored inline training data (`uploads.py`), for reading."""
        from ltx2trainer.storage import owner_prefix
        from ltx2trainer.uploads import storage_key

        return self.storage.open(storage_key(owner_prefix(self.owner), sha256))

    def __init__(self, job: JobRow, lifecycle: Lifecycle, storage, settings: Settings, worker_id: str) -> None:
        self.job_id = job.id
        self.owner = job.owner
        self.lifecycle = lifecycle
        self.storage = storage
        self.settings = settings
        self.worker_id = worker_id
        self.work_dir: Path = settings.data_dir / "jobs" / job.id
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # The job's logs and error are the user's to read: the server's folders in them become placeholders.
        self.paths = job_paths(settings, self.work_dir)
        self.partial_output: TrainingOutput | None = None  # what a cancelled run delivers (its last checkpoint)
        self.own_output: TrainingOutput | None = None  # the last step's output, when a checkpoint's is delivered
        self._lease_lost = threading.Event()
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancel_requested = False
        self._phase: str | None = None
        self._unbilled_steps: list[int] = []  # completed steps not yet in the usage ledger
        self._unsaved_metrics: list[dict[str, Any]] = []  # their metrics rows (jobs/metrics.py), written with them

    # --- the pipeline's JobContext ---------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        if phase != self._phase:
            self._phase = phase
            self.lifecycle.set_phase(self.job_id, phase)

    def log(self, message: str, level: str = "INFO") -> None:
        self.lifecycle.log(self.job_id, self.paths.hide(message), level)

    def report_step(self, info: Any) -> None:
        """After every training step: meter it, and every PROGRESS_INTERVAL_S write usage, metrics and progress."""
        from ltx2trainer.jobs.metrics import metric_row

        self._unbilled_steps.append(info.step)
        self._unsaved_metrics.append(metric_row(info.step, info.loss, info.video_loss, info.audio_loss, info.lr,
                                                info.grad_norm, info.sigma))
        if info.checkpoint_after:
            # A resume starts after this step and never redoes it: it must be in the ledger before the
            # checkpoint exists, or a crash right after the checkpoint would leave it trained and unbilled.
            self.flush_records()
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL_S and info.step != info.total:
            return
        self._last_progress = now
        self.flush_records()
        per_step = info.elapsed_s / max(info.step, 1)
        loss = finite_loss(info.loss)  # a diverged step's inf or NaN would fail the progress write
        report = ProgressReport(step=info.step, total_steps=info.total, loss=loss, lr=info.lr,
                                eta_s=round(per_step * (info.total - info.step), 1),
                                steps_per_s=round(1 / per_step, 3))
        self.lifecycle.report_progress(self.job_id, report.model_dump(mode="json"))

    def flush_records(self) -> None:
        """Record the steps completed since the last flush in the usage ledger (idempotent per step), and their
        metrics (one upsert: a step re-run after a resume overwrites its row)."""
        from ltx2trainer.billing.ledger import record_steps
        from ltx2trainer.jobs.metrics import record_metrics

        steps, self._unbilled_steps = self._unbilled_steps, []
        record_steps(self.lifecycle.db, self.job_id, steps, self.settings.price_per_step)
        metrics, self._unsaved_metrics = self._unsaved_metrics, []
        record_metrics(self.lifecycle.db, self.job_id, metrics)

    def cancelled(self) -> bool:
        if self._lease_lost.is_set():
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        if not self._cancel_requested and now - self._last_cancel_check >= CANCEL_CHECK_S:
            self._last_cancel_check = now
            self._cancel_requested = self.lifecycle.is_cancel_requested(self.job_id)
        return self._cancel_requested

    def publish(self, name: str, path: Path, content_type: str, *, announce: bool = False) -> dict[str, Any]:
        """Put a file under the job's prefix in object storage; returns its reference for the output."""
        from ltx2trainer.storage import job_prefix

        stored = self.storage.put_file(job_prefix(self.owner, self.job_id) + name, path, content_type)
        ref = {"key": stored.key, "content_type": content_type, "file_name": Path(name).name,
               "file_size": stored.size}
        if announce:
            self.lifecycle.publish(self.job_id, name, ref)
        return ref

    def record_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint published under the job's prefix: its row of checkpoint metrics (held-out and training
        loss; overwritten by a resumed attempt), then a `checkpoint` event and its webhook (once per step)."""
        from ltx2trainer.jobs.metrics import record_checkpoint_metrics

        record_checkpoint_metrics(self.lifecycle.db, self.job_id, checkpoint["step"], checkpoint.get("holdout_loss"),
                                  checkpoint.get("train_loss"))
        self.lifecycle.record_checkpoint(self.job_id, checkpoint)

    def fetch_parent(self, training_id: str, step: int, folder: Path):
        """`resume_from`: the owner's training's checkpoint of `step` (its LoRA) and its prepared data, downloaded
        into `folder` (a pipeline.continuation.ParentCheckpoint)."""
        from ltx2trainer.errors import UserInputError
        from ltx2trainer.jobs.promotion import PROMOTABLE, checkpoint_steps
        from ltx2trainer.pipeline.continuation import PREPARED_ARCHIVE, ParentCheckpoint
        from ltx2trainer.storage import job_prefix

        with self.lifecycle.db.session() as session:
            parent = session.get(JobRow, training_id)
            if parent is None or parent.owner != self.owner:
                raise UserInputError(f"resume_from: no training {training_id}", code="not_found")
            if parent.status not in PROMOTABLE:
                raise UserInputError(f"resume_from: training {training_id} is {parent.status}; a training can "
                                     "continue from one that succeeded or was cancelled")
            files = checkpoint_steps(session, parent).get(step)
        if files is None:
            raise UserInputError(f"resume_from: training {training_id} has no checkpoint of step {step}",
                                 code="not_found")
        folder.mkdir(parents=True, exist_ok=True)
        lora_file, prepared = folder / "lora.safetensors", folder / "prepared_data.zip"
        self._download(files["lora_file"]["key"], lora_file)
        try:
            self._download(job_prefix(self.owner, training_id) + PREPARED_ARCHIVE, prepared)
        except FileNotFoundError:
            raise UserInputError(f"resume_from: training {training_id}'s prepared data is not stored (it finished "
                                 "before trainings could be continued); submit with its training_data_url instead",
                                 code="not_found") from None
        return ParentCheckpoint(training_id, step, lora_file, prepared)

    def fetch_dataset(self, dataset_id: str, folder: Path) -> tuple[Path, list[Path], set[str]]:
        """`dataset_id`: the owner's ready dataset's prepared zip and its encoded-latent zips, downloaded into
        `folder`; returns (prepared zip, encoded zips, the cache folder names the dataset has)."""
        from ltx2trainer.errors import UserInputError
        from ltx2trainer.jobs.datasets import DatasetStatus, get_dataset, mark_used

        row = get_dataset(self.lifecycle.db, dataset_id, self.owner)
        if row is None or row.status != DatasetStatus.READY:
            raise UserInputError(f"dataset_id: no ready dataset {dataset_id} (deleted, or not prepared)",
                                 code="not_found")
        mark_used(self.lifecycle.db, dataset_id)
        folder.mkdir(parents=True, exist_ok=True)
        prepared = folder / "prepared.zip"
        self._download(row.files["prepared"]["key"], prepared)
        encoded = []
        for name, ref in sorted((row.encoded or {}).items()):
            self._download(ref["key"], folder / f"{name}.zip")
            encoded.append(folder / f"{name}.zip")
        return prepared, encoded, set(row.encoded or {})

    def store_dataset_cache(self, dataset_id: str, cache_name: str, archive: Path) -> None:
        """Keep one base model's encoded latents with the dataset, for the next training on that model."""
        from ltx2trainer.jobs.datasets import record_encoded
        from ltx2trainer.storage import dataset_prefix

        key = dataset_prefix(self.owner, dataset_id) + f"encoded/{cache_name}.zip"
        stored = self.storage.put_file(key, archive, "application/zip")
        record_encoded(self.lifecycle.db, dataset_id, cache_name, {
            "key": stored.key, "content_type": "application/zip", "file_name": archive.name,
            "file_size": stored.size})

    def find_dataset(self, sha256: str, fields: dict[str, Any]) -> str | None:
        from ltx2trainer.jobs.datasets import find_ready_dataset

        found = find_ready_dataset(self.lifecycle.db, self.owner, sha256, fields)
        return found.id if found is not None else None

    def register_dataset(self, sha256: str, fields: dict[str, Any], adjustments: list[Any], work: Path) -> str:
        """Keep this job's prepared folder as a ready dataset of the owner's (stored like a prepared one)."""
        from ltx2trainer.jobs.datasets import create_ready_dataset, new_dataset_id
        from ltx2trainer.pipeline.dataset_files import store_dataset_files
        from ltx2trainer.pipeline.preprocess.report import PrepareReport
        from ltx2trainer.storage import dataset_prefix

        dataset_id = new_dataset_id()
        files = store_dataset_files(self.storage, dataset_prefix(self.owner, dataset_id), work)
        report = PrepareReport.read(work / "dataset").model_dump(mode="json")
        create_ready_dataset(self.lifecycle.db, self.owner, fields, adjustments, sha256, report, files, dataset_id)
        return dataset_id

    def _download(self, key: str, target: Path) -> None:
        import shutil

        tmp = target.with_name(target.name + ".part")
        with self.storage.open(key) as source, open(tmp, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
        tmp.replace(target)

    def record_final_metrics(self, output: TrainingOutput) -> None:
        """The final step's row of checkpoint metrics, from a finished run's output metrics (the last step's
        loss and the held-out loss after it), as the checkpoints listing shows the final entry."""
        from ltx2trainer.jobs.metrics import record_checkpoint_metrics

        metrics = output.metrics
        if isinstance(metrics, TrainingMetrics) and metrics.steps:
            record_checkpoint_metrics(self.lifecycle.db, self.job_id, metrics.steps, metrics.holdout_loss,
                                      metrics.final_loss)

    # --- running ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew the job's lease in the background; if it is lost, the next cancel check raises LeaseLost."""
        stop = threading.Event()
        interval = self.settings.job_lease_s / 3

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    if not self.lifecycle.heartbeat(self.job_id, self.worker_id, self.settings.job_lease_s):
                        self._lease_lost.set()
                        return
                except Exception:  # noqa: BLE001 - a database hiccup: try again next beat
                    logging.getLogger(__name__).warning("heartbeat of job %s failed", self.job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    @contextlib.contextmanager
    def capture_logs(self, level: int = logging.INFO) -> Iterator[None]:
        """Forward the package's log records during the job into the job's logs (status, SSE, facade)."""
        handler = _JobLogHandler(self, level)
        loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
        previous = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            if lg.level == logging.NOTSET or lg.level > level:
                lg.setLevel(level)
        try:
            yield
        finally:
            for lg, old in zip(loggers, previous, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(old)


class _JobLogHandler(logging.Handler):
    LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN", logging.ERROR: "ERROR"}

    def __init__(self, context: WorkerContext, level: int) -> None:
        super().__init__(level)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, JOB_LOG, True):  # for the operator only (a crash's traceback)
            return
        try:
            self.context.log(record.getMessage(), self.LEVELS.get(record.levelno, "INFO"))
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)
