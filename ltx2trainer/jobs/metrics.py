"""Training metrics of a job, one row per step (`job_metrics`): written by the worker, read by the gateway.

- Writing (`record_metrics`): the worker buffers a row per step and writes them with its usage-ledger flushes
  (every 0.5 s and before each checkpoint, `worker/context.py`), one bulk upsert per flush. (job, step) is the
  key: a step re-run after a crash and resume overwrites the row of the attempt that died, never duplicates it.
- Reading (`read_metrics`, `metrics_json`, `metrics_csv`): `GET /v1/trainings/{id}/metrics`, while the job runs
  and after. Plain column tuples and the standard library's encoders: 10 000 steps answer in about 0.1 s.
- Checkpoints (`job_checkpoint_metrics`, `record_checkpoint_metrics`, `read_checkpoint_metrics`): the held-out
  loss is measured once per published checkpoint (and after the last step), not per step, on the samples the
  training never sees (`training/holdout.py`), so it has a table of its own, one row per checkpoint (job_id,
  step, holdout_loss, train_loss; key (job_id, step)). The worker writes a row when it records a checkpoint
  (just before the checkpoint's event) and one for the final step when the job succeeds. The metrics route
  lists them beside the steps (JSON `checkpoints`; CSV column `holdout_loss`, filled at checkpoint steps) and
  the checkpoints listing shows `holdout_loss` from the checkpoint's event (`api/render.render_checkpoints`).
  The probe loss (`training/probe.py` on the training samples) is not stored per job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ltx2trainer.jobs.db import Database
from ltx2trainer.jobs.models import JobCheckpointMetricRow, JobMetricRow
from ltx2trainer.schemas import finite_loss

# The columns of a metrics row after `step`, in the order of the API's objects and CSV header.
METRIC_FIELDS = ("loss", "video_loss", "audio_loss", "learning_rate", "grad_norm", "sigma")
COLUMNS = ("step", *METRIC_FIELDS)
# The CSV's columns: a step's metrics, then the held-out loss, filled only on checkpoint steps.
CSV_COLUMNS = (*COLUMNS, "holdout_loss")
# A checkpoint's row, in the order of the API's objects.
CHECKPOINT_COLUMNS = ("step", "train_loss", "holdout_loss")
MAX_ROWS_PER_STATEMENT = 2_000  # x 8 parameters


def metric_row(step: int, loss: float | None, video_loss: float | None = None, audio_loss: float | None = None,
               learning_rate: float | None = None, grad_norm: float | None = None,
               sigma: float | None = None) -> dict[str, Any]:
    """One step's row, as `record_metrics` takes it."""
    return {"step": step, "loss": loss, "video_loss": video_loss, "audio_loss": audio_loss,
            "learning_rate": learning_rate, "grad_norm": grad_norm, "sigma": sigma}


def record_metrics(db: Database, job_id: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or overwrite the rows (one statement); the last row of a step wins. Returns how many were written."""
    by_step = {row["step"]: {"job_id": job_id, **{name: row.get(name) for name in COLUMNS}} for row in rows}
    if not by_step:
        return 0
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    values = list(by_step.values())
    with db.session() as session:
        # One statement per flush (a flush holds ~0.5 s of steps); split only past SQLite's 32 766 parameters.
        for start in range(0, len(values), MAX_ROWS_PER_STATEMENT):
            statement = dialect.insert(JobMetricRow).values(values[start:start + MAX_ROWS_PER_STATEMENT])
            statement = statement.on_conflict_do_update(
                index_elements=["job_id", "step"], set_={name: statement.excluded[name] for name in METRIC_FIELDS})
            session.execute(statement)
    return len(by_step)


def read_metrics(db: Database, job_id: str) -> Sequence[tuple]:
    """The job's rows as tuples in `COLUMNS` order, by step."""
    columns = [getattr(JobMetricRow, name) for name in COLUMNS]
    with db.engine.connect() as connection:
        return connection.execute(select(*columns).where(JobMetricRow.job_id == job_id)
                                  .order_by(JobMetricRow.step)).all()


def record_checkpoint_metrics(db: Database, job_id: str, step: int, holdout_loss: float | None,
                              train_loss: float | None) -> None:
    """Insert or overwrite the checkpoint row of (job, step); a non-finite loss is stored as NULL (SQLite would,
    PostgreSQL would keep a NaN)."""
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(JobCheckpointMetricRow).values(
        job_id=job_id, step=step, holdout_loss=finite_loss(holdout_loss, None),
        train_loss=finite_loss(train_loss, None))
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "step"],
        set_={"holdout_loss": statement.excluded.holdout_loss, "train_loss": statement.excluded.train_loss})
    with db.session() as session:
        session.execute(statement)


def read_checkpoint_metrics(db: Database, job_id: str) -> Sequence[tuple]:
    """The job's checkpoint rows as tuples in `CHECKPOINT_COLUMNS` order, by step."""
    columns = [getattr(JobCheckpointMetricRow, name) for name in CHECKPOINT_COLUMNS]
    with db.engine.connect() as connection:
        return connection.execute(select(*columns).where(JobCheckpointMetricRow.job_id == job_id)
                                  .order_by(JobCheckpointMetricRow.step)).all()


def metrics_json(rows: Sequence[tuple], checkpoints: Sequence[tuple] = ()) -> str:
    """`{"object": "list", "data": [{step, loss, ...}, ...], "checkpoints": [{step, train_loss, holdout_loss},
    ...]}`; a non-finite value (a diverged loss) is null."""
    data = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    marks = [{name: finite_loss(value, None) for name, value in zip(CHECKPOINT_COLUMNS, row, strict=True)}
             for row in checkpoints]  # a handful: always looked at
    try:
        return json.dumps({"object": "list", "data": data, "checkpoints": marks}, separators=(",", ":"),
                          allow_nan=False)
    except ValueError:  # rare: only then is every value looked at (twice as slow)
        data = [{name: finite_loss(value, None) for name, value in item.items()} for item in data]
        return json.dumps({"object": "list", "data": data, "checkpoints": marks}, separators=(",", ":"),
                          allow_nan=False)


def metrics_csv(rows: Sequence[tuple], checkpoints: Sequence[tuple] = ()) -> str:
    """A header row (`CSV_COLUMNS`), then one row per step; an unknown value is empty, a non-finite one nan/inf.
    The last column, `holdout_loss`, is filled only on the steps of `checkpoints` (empty elsewhere)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    holdout = {step: loss for step, _, loss in checkpoints}  # (None is written as an empty field)
    writer.writerows((*row, holdout.get(row[0])) for row in rows)
    return out.getvalue()
