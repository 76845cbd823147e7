"""Which workers are alive and which base model each serves: the truth behind `GET /health`'s `workers`.

A worker identifies its configured model at start-up (`identify_model`: no torch, no weights read),
records it here under its Celery node name, and its maintenance thread refreshes `seen_at` while it runs. The
gateway lists the workers seen within `RECENT_S`; a worker that stopped simply ages out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.models import WorkerRow

SEEN_EVERY_S = 10.0  # how often a running worker refreshes its row
RECENT_S = 60.0  # /health lists workers seen within this long


@dataclass(frozen=True)
class ServedModel:
    """What a worker serves: the model's identity (`BaseModelInfo.as_dict()`), or why it cannot serve it.

    `error` is what /health shows (and the workers table stores): the reason with the configured model's and
    text encoder's paths as `<model>` and `<text_encoder>`. `detail` is the same reason with the paths, for the
    operator's log; it is never stored or shown."""

    info: dict[str, Any] | None
    error: str | None = None
    detail: str | None = field(default=None, compare=False)

    def public(self) -> dict[str, Any] | str:
        """As /health shows it: the identity, or the error message."""
        return self.info if self.info is not None else f"model_error: {self.error}"


def identify_model(model: str, text_encoder: str | None) -> ServedModel:
    """The configured model's identity, or the `ModelError` message when it cannot be used (never raises)."""
    from ltx2trainer.errors import ModelError
    from ltx2trainer.model.identity import describe_model  # torch-free
    from ltx2trainer.server_paths import model_paths

    try:
        return ServedModel(describe_model(model, text_encoder).as_dict())
    except ModelError as exc:
        reason = exc.message
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable file: report it, never crash /health
        reason = f"{type(exc).__name__}: {exc}"
    return ServedModel(None, model_paths(model, text_encoder).hide(reason), reason)


def record_worker(db: Database, name: str, served: ServedModel) -> None:
    """Insert or replace this worker's row (start-up)."""
    with db.session() as session:
        row = session.get(WorkerRow, name)
        now = utcnow()
        if row is None:
            session.add(WorkerRow(name=name, model=served.info, model_error=served.error, started_at=now,
                                  seen_at=now))
        else:
            row.model, row.model_error, row.started_at, row.seen_at = served.info, served.error, now, now


def touch_worker(db: Database, name: str, served: ServedModel) -> None:
    """Refresh `seen_at` (re-creating the row if it went missing)."""
    with db.session() as session:
        row = session.get(WorkerRow, name)
        if row is None:
            session.add(WorkerRow(name=name, model=served.info, model_error=served.error))
        else:
            row.seen_at = utcnow()


def recent_workers(db: Database, within_s: float = RECENT_S) -> list[dict[str, Any]]:
    """Workers seen within `within_s`, by name: `{name, model, seen_at}` (model: identity or error string)."""
    since = utcnow() - dt.timedelta(seconds=within_s)
    with db.session() as session:
        rows = session.scalars(select(WorkerRow).where(WorkerRow.seen_at >= since).order_by(WorkerRow.name))
        return [{"name": row.name, "model": ServedModel(row.model, row.model_error).public(),
                 "seen_at": row.seen_at.isoformat(timespec="seconds")} for row in rows]
