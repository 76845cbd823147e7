"""Training metrics of a job, one row per step (`job_metrics`): written by the worker, read by the gateway.

- Writing (`record_metrics`): the worker buffers a row per step and writes them with its usage-ledger flushes
  (every 0.5 s and before each checkpoint, `worker/context.py`), one bulk upsert per flush. (job, step) is the
  key: a step re-run after a crash and resume overwrites the row of the attempt that died, never duplicates it.
- Reading (`read_metrics`, `metrics_json`, `metrics_csv`): `GET /v1/trainings/{id}/metrics`, while the job runs
  and after. Plain column tuples and the standard library's encoders: 10 000 steps answer in about 0.1 s.

Held-out loss: not built yet (there is no held-out split). It will be measured once per checkpoint, not per
step, on samples the training never sees, so it gets a table of its own, one row per checkpoint
(`job_checkpoint_metrics`: job_id, step, holdout_loss; key (job_id, step)), written by the worker in the flush
before the checkpoint's event, read here by a `read_checkpoint_metrics` beside `read_metrics`, and shown as the
checkpoints listing's `holdout_loss` (null today, `api/render.render_checkpoints`). Today's probe loss
(`training/probe.py`) is computed on the training samples with noise the training never drew: it is not
held-out data, and it is not stored per job.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ltx2trainer.jobs.db import Database
from ltx2trainer.jobs.models import JobMetricRow

# The columns of a metrics row after `step`, in the order of the API's objects and CSV header.
METRIC_FIELDS = ("loss", "video_loss", "audio_loss", "learning_rate", "grad_norm", "sigma")
COLUMNS = ("step", *METRIC_FIELDS)
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


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def metrics_json(rows: Sequence[tuple]) -> str:
    """`{"object": "list", "data": [{step, loss, ...}, ...]}`; a non-finite value (a diverged loss) is null."""
    data = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    try:
        return json.dumps({"object": "list", "data": data}, separators=(",", ":"), allow_nan=False)
    except ValueError:  # rare: only then is every value looked at (twice as slow)
        data = [{name: _finite(value) for name, value in item.items()} for item in data]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":"), allow_nan=False)


def metrics_csv(rows: Sequence[tuple]) -> str:
    """A header row (`COLUMNS`), then one row per step; an unknown value is empty, a non-finite one nan/inf."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return out.getvalue()
