"""Usage and billing: the caller's charges by day or by job (JSON or CSV), and the dashboard's data.

Admin keys see every owner (or one, with `owner=`); other keys see their own owner's usage only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from ltx2trainer.api.deps import BaseUrlDep, PrincipalDep, ServicesDep
from ltx2trainer.api.render import render_output
from ltx2trainer.billing.ledger import job_estimated_cost, to_nano, usage_report, usd
from ltx2trainer.jobs.db import utcnow
from ltx2trainer.jobs.models import JobRow, JobStatus
from ltx2trainer.schemas import ProgressReport

router = APIRouter(prefix="/v1", tags=["usage and billing"])

DEFAULT_PERIOD_DAYS = 30
DASHBOARD_JOBS = 100
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def _moment(value: str | None, default: dt.datetime, name: str) -> dt.datetime:
    if not value:
        return default
    try:
        parsed = dt.datetime.fromisoformat(value)
        parsed = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise HTTPException(422, detail=f"{name} must be an ISO date or date-time, got {value[:60]!r}") from None
    if not EARLIEST <= parsed <= LATEST:  # the default period reaches 30 days before `end`
        raise HTTPException(422, detail=f"{name} must be between {EARLIEST.date()} and {LATEST.date()}, "
                                        f"got {value[:60]!r}")
    return parsed


def _scope(principal, owner: str | None) -> str | None:
    """The owner whose usage to show: the caller's own, or for admins any (None = all owners)."""
    if principal.is_admin:
        return owner
    if owner is not None and owner != principal.owner:
        raise HTTPException(403, detail="only admin keys may see another owner's usage")
    return principal.owner


@router.get("/usage", summary="Charges by day or by job (JSON, or CSV with format=csv)")
def usage(
    principal: PrincipalDep,
    services: ServicesDep,
    start: Annotated[str | None, Query(description="ISO date/time, inclusive (default: 30 days ago)")] = None,
    end: Annotated[str | None, Query(description="ISO date/time, exclusive (default: now)")] = None,
    group_by: Annotated[Literal["day", "job"], Query()] = "day",
    format: Annotated[Literal["json", "csv"], Query()] = "json",  # noqa: A002 - the public parameter name
    owner: Annotated[str | None, Query(description="admins: one owner (default: all)")] = None,
    api_key_id: Annotated[str | None, Query(description="only jobs submitted with this key")] = None,
) -> Any:
    end_at = _moment(end, utcnow(), "end")
    start_at = _moment(start, end_at - dt.timedelta(days=DEFAULT_PERIOD_DAYS), "start")
    if start_at >= end_at:
        raise HTTPException(422, detail="start must be before end")
    report = usage_report(services.db, owner=_scope(principal, owner), start=start_at, end=end_at,
                          group_by=group_by, api_key_id=api_key_id)
    report["unit_price"] = str(services.settings.price_per_step)
    if format == "json":
        return report
    buffer = io.StringIO()
    rows = report["data"]
    columns = list(rows[0]) if rows else (["job_id", "owner", "api_key_id", "outcome", "steps_completed",
                                           "steps_billed", "unit_price", "amount_usd", "settled_at"]
                                          if group_by == "job" else ["date", "steps", "amount_usd", "jobs"])
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    name = f"usage-{group_by}-{start_at.date()}-{end_at.date()}.csv"
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/dashboard", summary="Everything the billing dashboard shows, in one read")
def dashboard_data(principal: PrincipalDep, services: ServicesDep, base_url: BaseUrlDep,
                   owner: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    scope = _scope(principal, owner)
    end_at = utcnow()
    report = usage_report(services.db, owner=scope, start=end_at - dt.timedelta(days=DEFAULT_PERIOD_DAYS),
                          end=end_at + dt.timedelta(seconds=1), group_by="day")
    query = select(JobRow).order_by(JobRow.created_at.desc()).limit(DASHBOARD_JOBS)
    if scope is not None:
        query = query.where(JobRow.owner == scope)
    with services.db.session() as session:
        jobs = list(session.scalars(query))
    price = services.settings.price_per_step
    running_nano = sum(to_nano((job.usage or {}).get("amount_usd", "0")) for job in jobs
                       if job.status == JobStatus.RUNNING)
    return {
        "owner": scope, "all_owners": scope is None, "unit_price": str(price), "currency": "USD",
        "total_spend_usd": report["total"]["amount_usd"], "spend_by_day": report["data"],
        "running_cost_usd": usd(running_nano), "period_days": DEFAULT_PERIOD_DAYS,
        "trainings": [_dashboard_row(job, services, base_url, price) for job in jobs],
    }


def _dashboard_row(job: JobRow, services, base_url: str, price) -> dict[str, Any]:
    usage = job.usage or {}
    progress = ProgressReport.of_stored(job.progress)
    finished_or_now = job.finished_at or utcnow()
    output = render_output(job.output, services, base_url) or {}
    return {
        "id": job.id, "owner": job.owner, "status": job.status, "phase": job.phase,
        "steps_done": usage.get("steps_completed", progress.step),
        "total_steps": job.input.get("number_of_steps"),
        "cost_usd": usage.get("amount_usd", usd(0)),
        "estimated_cost_usd": usd(to_nano(job_estimated_cost(job, price))),
        "loss": progress.loss, "eta_s": progress.eta_s,
        "created_at": job.created_at.isoformat(),
        "duration_s": round((finished_or_now - job.started_at).total_seconds(), 1) if job.started_at else None,
        "error": (job.error or {}).get("message") if job.status == JobStatus.FAILED else None,
        "lora_url": (output.get("lora_file") or {}).get("url"),
        "video_url": (output.get("video") or {}).get("url"),
        "config_url": (output.get("config_file") or {}).get("url"),
    }


pages = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
INCLUDE = re.compile(r"<!--#include (_[a-z]+\.html)-->\n")


def page_html(name: str) -> str:
    """A page as served: its file with each `<!--#include _part.html-->` line replaced by that shared part
    (the head's meta and stylesheet lines, the sign-in panel), once at start-up. Server-side, not in script:
    the sign-in panel must be there before the page's script wires it."""
    return INCLUDE.sub(lambda match: (STATIC / match.group(1)).read_text(encoding="utf-8"),
                       (STATIC / name).read_text(encoding="utf-8"))


DASHBOARD_HTML = page_html("dashboard.html")
TRAINING_HTML = page_html("training.html")
DATASET_HTML = page_html("dataset.html")
SWEEP_HTML = page_html("sweep.html")
COMMON_CSS = (STATIC / "common.css").read_text(encoding="utf-8")  # the pages' shared styles
COMMON_JS = (STATIC / "common.js").read_text(encoding="utf-8")  # and sign-in, fetch, formats


@pages.get("/dashboard/static/common.css")
def common_css() -> Response:
    """The styles every dashboard page shares (each page links it before its own)."""
    return Response(COMMON_CSS, media_type="text/css", headers={"Cache-Control": "no-store"})


@pages.get("/dashboard/static/common.js")
def common_js() -> Response:
    """The script every dashboard page shares: the API key and sign-in, fetch with the key, escaping, formats."""
    return Response(COMMON_JS, media_type="application/javascript", headers={"Cache-Control": "no-store"})


@pages.get("/dashboard")
def dashboard_page() -> HTMLResponse:
    """The billing dashboard: a static page that signs in with an API key and reads /v1/dashboard."""
    return HTMLResponse(DASHBOARD_HTML, headers={"Cache-Control": "no-store"})


@pages.get("/dashboard/trainings/{job_id}")
def training_page(job_id: str) -> HTMLResponse:  # the page reads the id from its own path
    """One training's page: status, cost, input, loss curve and checkpoints (clips, downloads, promote). The
    same static page for every id: it signs in like the dashboard and reads the job's /v1 resources."""
    return HTMLResponse(TRAINING_HTML, headers={"Cache-Control": "no-store"})


@pages.get("/dashboard/datasets/{dataset_id}")
def dataset_page(dataset_id: str) -> HTMLResponse:  # the page reads the id from its own path
    """One dataset's page: status, fields, the preparation report (skipped clips, warnings, audio), the contact
    sheet, each sample's clip and the trainings on it. Signs in like the dashboard and reads /v1/datasets/{id}."""
    return HTMLResponse(DATASET_HTML, headers={"Cache-Control": "no-store"})


@pages.get("/dashboard/sweeps/{sweep_id}")
def sweep_page(sweep_id: str) -> HTMLResponse:  # the page reads the id from its own path
    """One sweep's page: its trainings side by side (swept values, status, cost, final and held-out loss), the best
    one marked, a loss matrix for a two-field grid. Signs in like the dashboard and reads /v1/sweeps/{id}."""
    return HTMLResponse(SWEEP_HTML, headers={"Cache-Control": "no-store"})
