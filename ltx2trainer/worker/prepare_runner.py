"""Prepare one dataset on a worker (the `prepare` queue): fetch, prepare, store, and record the outcome.

The same fetch and preparation as a training's (`pipeline/dataset_source.fetch_and_prepare`), then the
prepared folder is stored as one zip under the dataset's prefix (what trainings on it unpack instead of
preparing), with a contact sheet and each sample's clip for the owner to review. Whose fault: a
`UserInputError` fails the dataset with its message (its code as the error type), anything else with
`internal_error`; an `InfraError` leaves it `preparing` for the maintenance thread to queue again once its
lease has run out. Nothing here is billed: only training steps are.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

from ltx2trainer.errors import InfraError, UserInputError
from ltx2trainer.jobs.datasets import claim_dataset, finish_dataset, renew_lease
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.server_paths import job_paths
from ltx2trainer.settings import Settings
from ltx2trainer.storage import dataset_prefix, owner_prefix
from ltx2trainer.uploads import parse_reference, storage_key
from ltx2trainer.wiring import Services

log = logging.getLogger(__name__)


def execute_preparation(dataset_id: str, settings: Settings, *, services: Services | None = None) -> str:
    """Prepare dataset `dataset_id` if it is this worker's to prepare; returns what happened."""
    services = services or Services(settings, ensure_schema=False)
    row = claim_dataset(services.db, dataset_id, settings.job_lease_s, settings.job_max_attempts)
    if row is None:
        return "skipped"
    work = settings.data_dir / "datasets" / dataset_id
    paths = job_paths(settings, work)
    outcome = "ready"
    with _lease(services, dataset_id, settings.job_lease_s):
        try:
            report, files, sha256 = _prepare(services, row, work)
        except UserInputError as exc:
            finish_dataset(services.db, dataset_id, error={"type": exc.code, "message": paths.hide(exc.message)})
            outcome = "failed"
        except InfraError as exc:
            log.error("dataset %s: platform error, it is queued again after its lease: %s", dataset_id, exc)
            return "retry"
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected fault: fail it, say so in our log
            log.error("dataset %s failed:\n%s", dataset_id, traceback.format_exc())
            finish_dataset(services.db, dataset_id, error={
                "type": "internal_error", "message": paths.hide(f"preparation failed: {type(exc).__name__}: {exc}")})
            outcome = "failed"
        else:
            finish_dataset(services.db, dataset_id, report=report, files=files, source_sha256=sha256)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return outcome


def _prepare(services: Services, row, work: Path) -> tuple[dict, dict, str | None]:
    from ltx2trainer.pipeline.dataset_files import file_sha256, store_dataset_files
    from ltx2trainer.pipeline.dataset_source import fetch_and_prepare
    from ltx2trainer.pipeline.fetch import ARCHIVE_NAME

    settings = services.settings
    training_input = TrainingInput.from_job(row.fields, row.adjustments or [], context={
        "allow_file_urls": settings.allow_file_urls, "allow_uploads": True})
    source, allow_local = None, None
    if (upload := parse_reference(training_input.training_data_url)) is not None:
        source, allow_local = str(_copy_upload(services, row.owner, upload[0], work / "fetch")), True
    prepared = fetch_and_prepare(training_input, work / "fetch", work / "dataset", settings, source=source,
                                 allow_local=allow_local)
    # What a training with the same content and fields finds (jobs/datasets.find_ready_dataset).
    archive = work / "fetch" / ARCHIVE_NAME
    sha256 = upload[0] if upload is not None else file_sha256(archive) if archive.is_file() else None
    files = store_dataset_files(services.storage, dataset_prefix(row.owner, row.id), work)
    return prepared.report.model_dump(mode="json"), files, sha256


def _copy_upload(services: Services, owner: str, sha256: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"upload-{sha256}.zip"
    try:
        with services.storage.open(storage_key(owner_prefix(owner), sha256)) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except FileNotFoundError:
        raise UserInputError("the uploaded training data is no longer stored; create the dataset again",
                             code="not_found") from None
    return target


@contextlib.contextmanager
def _lease(services: Services, dataset_id: str, lease_s: float) -> Iterator[None]:
    """Renew the dataset's lease while it is prepared, so the maintenance thread leaves it alone."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(Exception):
                renew_lease(services.db, dataset_id, lease_s)

    thread = threading.Thread(target=beat, name=f"lease-{dataset_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
