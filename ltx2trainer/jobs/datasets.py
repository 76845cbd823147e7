"""Datasets as resources: a training's data, fetched and prepared once, then trained on by any number of jobs.

A dataset row holds the request's dataset fields (`schemas.DATASET_FIELDS` and the data URL), its status
(`queued` → `preparing` → `ready` | `failed`), and once ready the preparation report and where its files are in
object storage (under the owner's prefix, `datasets/<id>/`): the prepared folder as one zip, a contact sheet,
and each sample's clip. The encoded latents of a dataset are stored beside it per base model and encoding
version (`encoded/<cache folder>.zip`), written by the first training on that model and reused by the next.

Preparation runs on the workers' `prepare` queue (`worker/app.py`; CPU workers can serve it alone). A dataset
whose worker died mid-way stays `preparing` until its lease runs out; the maintenance thread then queues it
again. A `queued` dataset whose broker message was lost (or never sent: the broker was down when it was
created) is published again by the same thread, as a training is (`queued_at` says when it was last sent).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from ltx2trainer.jobs.db import Base, Database, utcnow
from ltx2trainer.jobs.models import JobRow, JobStatus


class DatasetStatus:
    QUEUED = "queued"
    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"  # unused past the retention setting: its files are gone, its entry says when and why
    ALL = (QUEUED, PREPARING, READY, FAILED, EXPIRED)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created", "owner", "created_at"),
                      Index("ix_datasets_owner_source", "owner", "source_sha256"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.QUEUED)
    fields: Mapped[dict[str, Any]]  # training_data_url and the dataset fields, as validated
    # SHA-256 of the fetched archive, once known: a training whose data has the same content and fields reuses it
    source_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    adjustments: Mapped[list[Any]] = mapped_column(default=list)
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # PrepareReport as JSON, once ready
    files: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {prepared, contact_sheet, samples: {…}}
    encoded: Mapped[dict[str, Any]] = mapped_column(default=dict)  # cache folder name -> stored zip reference
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # when it was last put on the prepare queue: the lost-message sweep leaves younger ones alone
    queued_at: Mapped[dt.datetime | None] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)


def create_dataset(db: Database, owner: str, fields: dict[str, Any], adjustments: list[Any]) -> DatasetRow:
    with db.session() as session:
        row = DatasetRow(id=new_dataset_id(), owner=owner, fields=fields, adjustments=adjustments)
        session.add(row)
        session.flush()
        session.expunge(row)
        return row


def get_dataset(db: Database, dataset_id: str, owner: str | None = None) -> DatasetRow | None:
    """The dataset, or None when it does not exist or (given `owner`) belongs to someone else."""
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        session.expunge(row)
        return row


def list_datasets(db: Database, owner: str, limit: int = 100) -> list[DatasetRow]:
    with db.session() as session:
        rows = list(session.scalars(select(DatasetRow).where(DatasetRow.owner == owner)
                                    .order_by(DatasetRow.created_at.desc()).limit(limit)))
        for row in rows:
            session.expunge(row)
        return rows


def claim_dataset(db: Database, dataset_id: str, lease_s: float, max_attempts: int) -> DatasetRow | None:
    """Start preparing a queued dataset; None otherwise (ready, failed, or being prepared elsewhere). A dataset
    past `max_attempts` fails instead."""
    now = utcnow()
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id, with_for_update=not db.is_sqlite)
        if row is None:
            return None
        if row.status != DatasetStatus.QUEUED:
            return None
        if row.attempt >= max_attempts:
            row.status, row.finished_at = DatasetStatus.FAILED, now
            row.error = {"type": "internal_error", "message": f"preparation did not finish in {max_attempts} attempts"}
            return None
        row.status, row.attempt = DatasetStatus.PREPARING, row.attempt + 1
        row.lease_expires_at = now + dt.timedelta(seconds=lease_s)
        session.flush()
        session.expunge(row)
        return row


def renew_lease(db: Database, dataset_id: str, lease_s: float) -> None:
    with db.session() as session:
        session.execute(update(DatasetRow).where(DatasetRow.id == dataset_id,
                                                 DatasetRow.status == DatasetStatus.PREPARING)
                        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s)))


def finish_dataset(db: Database, dataset_id: str, *, report: dict[str, Any] | None = None,
                   files: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                   source_sha256: str | None = None) -> None:
    """Ready with its report and files, or failed with `error` (`{type, message}`)."""
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is None or row.status != DatasetStatus.PREPARING:
            return
        row.status = DatasetStatus.FAILED if error else DatasetStatus.READY
        row.report, row.files, row.error, row.source_sha256 = report, files, error, source_sha256
        row.finished_at, row.lease_expires_at = utcnow(), None


def find_ready_dataset(db: Database, owner: str, source_sha256: str, fields: dict[str, Any]) -> DatasetRow | None:
    """The owner's ready dataset of this content prepared with these fields (the data URL aside), if any."""
    wanted = {name: value for name, value in fields.items() if name != "training_data_url"}
    with db.session() as session:
        for row in session.scalars(select(DatasetRow).where(
                DatasetRow.owner == owner, DatasetRow.source_sha256 == source_sha256,
                DatasetRow.status == DatasetStatus.READY).order_by(DatasetRow.created_at)):
            if {name: row.fields.get(name) for name in wanted} == wanted:
                session.expunge(row)
                return row
    return None


def create_ready_dataset(db: Database, owner: str, fields: dict[str, Any], adjustments: list[Any],
                         source_sha256: str, report: dict[str, Any], files: dict[str, Any],
                         dataset_id: str) -> None:
    """A dataset made by a training that prepared its own data (the implicit dataset of a data URL)."""
    now = utcnow()
    with db.session() as session:
        session.add(DatasetRow(id=dataset_id, owner=owner, fields=fields, adjustments=adjustments,
                               status=DatasetStatus.READY, source_sha256=source_sha256, report=report,
                               files=files, created_at=now, finished_at=now, last_used_at=now))


def new_dataset_id() -> str:
    return str(uuid.uuid4())


def record_encoded(db: Database, dataset_id: str, cache_name: str, ref: dict[str, Any]) -> None:
    """The encoded latents of one base model for this dataset (the first training on that model stores them)."""
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id, with_for_update=not db.is_sqlite)
        if row is not None:
            row.encoded = {**(row.encoded or {}), cache_name: ref}


def mark_used(db: Database, dataset_id: str) -> None:
    with db.session() as session:
        session.execute(update(DatasetRow).where(DatasetRow.id == dataset_id).values(last_used_at=utcnow()))


def requeue_stale_preparations(db: Database) -> list[str]:
    """Put back to `queued` the datasets whose preparing worker stopped renewing its lease (it died), and return
    them for the maintenance thread to send again. Once each: a requeued dataset waits like a new one."""
    with db.session() as session:
        stale = list(session.scalars(select(DatasetRow).where(
            DatasetRow.status == DatasetStatus.PREPARING, DatasetRow.lease_expires_at < utcnow())
            .with_for_update(skip_locked=True)))
        now = utcnow()
        for row in stale:
            row.status, row.lease_expires_at, row.queued_at = DatasetStatus.QUEUED, None, now
        return [row.id for row in stale]


def queued_before(db: Database, moment: dt.datetime) -> list[str]:
    """Queued datasets last put on the queue before `moment`, oldest first."""
    with db.session() as session:
        return list(session.scalars(select(DatasetRow.id).where(
            DatasetRow.status == DatasetStatus.QUEUED, DatasetRow.queued_at < moment)
            .order_by(DatasetRow.created_at)))


def republish(db: Database, dataset_id: str, queued_before: dt.datetime) -> bool:
    """Claim the right to put a queued dataset on the queue again (its message was lost): True for exactly one
    caller, and only while it is still queued and was not (re)sent after `queued_before`."""
    with db.session() as session:
        return session.execute(
            update(DatasetRow)
            .where(DatasetRow.id == dataset_id, DatasetRow.status == DatasetStatus.QUEUED,
                   DatasetRow.queued_at < queued_before)
            .values(queued_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def trainings_using(db: Database, dataset_id: str, owner: str) -> list[str]:
    """The owner's queued or running trainings on this dataset (a dataset in use cannot be deleted)."""
    with db.session() as session:
        return list(session.scalars(select(JobRow.id).where(
            JobRow.owner == owner, JobRow.dataset_id == dataset_id,
            JobRow.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))).order_by(JobRow.created_at)))


def trainings_of(db: Database, dataset_id: str, owner: str, limit: int = 200) -> list[JobRow]:
    """The owner's trainings on this dataset, newest first."""
    with db.session() as session:
        rows = list(session.scalars(select(JobRow).where(JobRow.owner == owner, JobRow.dataset_id == dataset_id)
                                    .order_by(JobRow.created_at.desc()).limit(limit)))
        for row in rows:
            session.expunge(row)
        return rows


def unused_datasets(db: Database, older_than: dt.timedelta) -> list[DatasetRow]:
    """Ready and failed datasets that no training has used (nor anyone created) for `older_than`, and that no
    queued or running training uses."""
    cutoff = utcnow() - older_than
    with db.session() as session:
        rows = list(session.scalars(select(DatasetRow).where(
            DatasetRow.status.in_((DatasetStatus.READY, DatasetStatus.FAILED)),
            DatasetRow.created_at < cutoff,
            (DatasetRow.last_used_at.is_(None)) | (DatasetRow.last_used_at < cutoff))))
        for row in rows:
            session.expunge(row)
    return [row for row in rows if not trainings_using(db, row.id, row.owner)]


def mark_expired(db: Database, dataset_id: str, days: float) -> None:
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is not None:
            row.status, row.files, row.encoded = DatasetStatus.EXPIRED, None, {}
            row.error = {"type": "expired", "message": f"removed on {utcnow().date().isoformat()} after {days:g} "
                                                       "days without a training; create it again to train on it"}


def delete_dataset_row(db: Database, dataset_id: str) -> None:
    with db.session() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is not None:
            session.delete(row)
