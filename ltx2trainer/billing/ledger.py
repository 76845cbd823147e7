"""Per-step billing: the usage ledger, settlement at the end of a job, budgets checked before one starts.

- Metering: the worker records each completed training step in `usage_records` (unique per job and step:
  a step re-run after a crash and resume is recorded once).
- Settlement (a lifecycle listener, in the transaction of the terminal transition): succeeded or cancelled by
  the user = the steps completed × the unit price fixed at submission; failed (before training, or a
  platform fault) = $0. The figures go on the job (`usage`) and into `settlements`.
- Budgets: `max_cost_usd` on a request and a spending limit per API key are checked before queueing.

Money is exact: integer nano-dollars in the database, `Decimal` everywhere else; never a binary float.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ltx2trainer.billing.models import SettlementRow, UsageRecordRow
from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.lifecycle import TransitionListener
from ltx2trainer.jobs.models import ApiKeyRow, JobRow, JobStatus

NANO_PER_USD = 10**9
FOUR_DECIMALS = Decimal("0.0001")


def to_nano(amount: Decimal | str | int) -> int:
    """USD → integer nano-dollars; refuses amounts finer than a nano-dollar rather than rounding them."""
    value = Decimal(str(amount)) * NANO_PER_USD
    if value != value.to_integral_value():
        raise ValueError(f"{amount} USD is not a whole number of nano-dollars")
    return int(value)


def usd(nano: int) -> str:
    """A dollar amount as an exact string: 4 decimals (the price has 4), more only where they are needed."""
    amount = Decimal(nano) / NANO_PER_USD
    four = amount.quantize(FOUR_DECIMALS)
    return str(four) if four == amount else f"{amount.normalize():f}"  # :f never uses exponents


def usage_snapshot(steps_completed: int, steps_billed: int, unit_price_nano: int) -> dict[str, Any]:
    """The `usage` object of a job (strings for money, so no JSON reader turns them into floats)."""
    return {"unit": "step", "steps_completed": steps_completed, "steps_billed": steps_billed,
            "unit_price": usd(unit_price_nano), "amount_usd": usd(steps_billed * unit_price_nano),
            "currency": "USD"}


def initial_usage(unit_price: Decimal) -> dict[str, Any]:
    return usage_snapshot(0, 0, to_nano(unit_price))


def fixed_unit_price(usage: dict[str, Any] | None, default: Decimal) -> Decimal:
    """The price per step fixed in a job's `usage` when it was submitted (a later price change does not reach
    it); `default` for a job stored without one."""
    stored = (usage or {}).get("unit_price")
    return Decimal(str(stored)) if stored is not None else default


def unit_price_nano_of(job: JobRow, default: Decimal) -> int:
    """The price per step fixed when the job was submitted, in nano-dollars."""
    return to_nano(fixed_unit_price(job.usage, default))


def estimated_cost(number_of_steps: int, usage: dict[str, Any] | None, default_price: Decimal) -> Decimal:
    """What a job of `number_of_steps` steps costs in USD: its steps × the unit price fixed in its `usage` at
    submission (`default_price` for a job stored without one, or a quote for a job not yet submitted). Exact:
    Decimal keeps the price's decimals (2000 × 0.0048 = 9.6000).

    The one place an estimate is made — the envelope, the submit's budget check and the spending limits'
    reservations, the estimates endpoint, the dashboard — so that they agree with each other and with what the
    job is billed, whatever the price setting says later.
    """
    return fixed_unit_price(usage, default_price) * number_of_steps


def job_estimated_cost(job: JobRow, default_price: Decimal) -> Decimal:
    """`estimated_cost` of a stored job, at the price fixed when it was submitted."""
    return estimated_cost(job.input.get("number_of_steps", 0), job.usage, default_price)


# --- metering (the worker) ---------------------------------------------------------------------------


def record_steps(db: Database, job_id: str, steps: list[int], default_price: Decimal) -> dict[str, Any] | None:
    """Record completed steps (idempotently) and refresh the job's running usage; returns that usage."""
    if not steps:
        return None
    with db.session() as session:
        job = session.get(JobRow, job_id)
        if job is None or job.is_terminal:
            return None  # settled already: nothing more is billed
        price = unit_price_nano_of(job, default_price)
        rows = [{"job_id": job_id, "owner": job.owner, "api_key_id": job.api_key_id, "step": step,
                 "unit_price_nano_usd": price, "created_at": utcnow()} for step in sorted(set(steps))]
        dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
        session.execute(dialect.insert(UsageRecordRow).values(rows)
                        .on_conflict_do_nothing(index_elements=["job_id", "step"]))
        completed = _steps_recorded(session, job_id)
        job.usage = usage_snapshot(completed, completed, price)  # provisional until settlement
        return job.usage


def _steps_recorded(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(UsageRecordRow).where(UsageRecordRow.job_id == job_id))


# --- settlement (a lifecycle listener) ---------------------------------------------------------------


def billing_listener(default_price: Decimal) -> TransitionListener:
    """Settles a job when it reaches a terminal state, in the same transaction."""

    def listener(session: Session, job: JobRow, old_status: str | None, new_status: str) -> None:
        if new_status not in JobStatus.TERMINAL:
            return
        price = unit_price_nano_of(job, default_price)
        completed = _steps_recorded(session, job.id)
        if new_status == JobStatus.FAILED:
            billed, reason = 0, "failed jobs are not charged (before training, or a platform fault)"
        elif new_status == JobStatus.CANCELLED:
            billed, reason = completed, "cancelled: the steps completed, delivered with the last checkpoint"
        else:
            billed, reason = completed, "succeeded"
        job.usage = usage_snapshot(completed, billed, price)
        session.merge(SettlementRow(
            job_id=job.id, owner=job.owner, api_key_id=job.api_key_id, outcome=new_status,
            steps_completed=completed, steps_billed=billed, unit_price_nano_usd=price,
            amount_nano_usd=billed * price, reason=reason, settled_at=utcnow(),
        ))

    return listener


# --- budgets (the gateway, before queueing) ----------------------------------------------------------


@dataclass(frozen=True)
class BudgetRefusal:
    message: str


def check_budget(session: Session, *, api_key_id: str | None, estimate: Decimal, max_cost_usd: Decimal | None,
                 number_of_steps: int, unit_price: Decimal) -> BudgetRefusal | None:
    """Why a job of cost `estimate` (its `estimated_cost`) may not start, or None. Both messages say by how
    much it is over; `unit_price` is the new job's, and the price of jobs stored without one.

    Run it in the transaction that creates the job (`Lifecycle.submit(guard=...)`; a sweep's jobs together:
    `Lifecycle.submit_all`): with a spending limit it first takes the key's write lock (a row lock on PostgreSQL;
    SQLite's database write lock), so concurrent submits with one key are checked one after the other, each
    seeing what the others reserved.
    """
    if max_cost_usd is not None and estimate > max_cost_usd:
        return BudgetRefusal(
            f"the training would cost ${estimate} ({number_of_steps} steps × ${unit_price}), "
            f"${estimate - max_cost_usd} more than max_cost_usd ${max_cost_usd}")
    if api_key_id is None:
        return None
    lock_for_write(session)
    limit = session.scalar(select(ApiKeyRow.spend_limit_nano_usd).where(ApiKeyRow.id == api_key_id)
                           .with_for_update())
    if limit is None:
        return None
    spent = session.scalar(select(func.coalesce(func.sum(SettlementRow.amount_nano_usd), 0))
                           .where(SettlementRow.api_key_id == api_key_id)) or 0
    active = session.scalars(select(JobRow).where(
        JobRow.api_key_id == api_key_id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
    reserved = sum(to_nano(job_estimated_cost(job, unit_price)) for job in active)
    needed = spent + reserved + to_nano(estimate)
    if needed <= limit:
        return None
    return BudgetRefusal(
        f"the training would cost ${estimate}, which exceeds this API key's spending limit of ${usd(limit)} "
        f"by ${usd(needed - limit)} (spent ${usd(spent)}, reserved by queued and running trainings "
        f"${usd(reserved)})")


def lock_for_write(session: Session) -> None:
    """On SQLite, make the session's transaction a writer from its first statement (BEGIN IMMEDIATE), so a
    read-then-insert cannot interleave with another one; PostgreSQL's `FOR UPDATE` row locks do that there."""
    if session.get_bind().dialect.name != "sqlite":
        return
    connection = session.connection().connection.dbapi_connection
    if not connection.in_transaction:  # pysqlite begins lazily, at the first write: begin as a writer now
        session.execute(text("BEGIN IMMEDIATE"))


def set_spend_limit(db: Database, key_id: str, limit_usd: Decimal | None) -> bool:
    with db.session() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            return False
        row.spend_limit_nano_usd = None if limit_usd is None else to_nano(limit_usd)
        return True


# --- reports (the usage API and the dashboard) -------------------------------------------------------


def usage_report(db: Database, *, owner: str | None, start: dt.datetime, end: dt.datetime,
                 group_by: str, api_key_id: str | None = None) -> dict[str, Any]:
    """Settled charges in [start, end) by day or by job; `owner=None` means every owner (admins)."""
    query = select(SettlementRow).where(SettlementRow.settled_at >= start, SettlementRow.settled_at < end)
    if owner is not None:
        query = query.where(SettlementRow.owner == owner)
    if api_key_id is not None:
        query = query.where(SettlementRow.api_key_id == api_key_id)
    with db.session() as session:
        rows = list(session.scalars(query.order_by(SettlementRow.settled_at, SettlementRow.job_id)))
    if group_by == "job":
        data = [{"job_id": r.job_id, "owner": r.owner, "api_key_id": r.api_key_id, "outcome": r.outcome,
                 "steps_completed": r.steps_completed, "steps_billed": r.steps_billed,
                 "unit_price": usd(r.unit_price_nano_usd), "amount_usd": usd(r.amount_nano_usd),
                 "settled_at": r.settled_at.isoformat()} for r in rows]
    else:
        days: dict[str, list[int]] = {}
        for r in rows:
            day = days.setdefault(r.settled_at.date().isoformat(), [0, 0, 0])
            day[0] += r.steps_billed
            day[1] += r.amount_nano_usd
            day[2] += 1
        data = [{"date": date, "steps": steps, "amount_usd": usd(amount), "jobs": jobs}
                for date, (steps, amount, jobs) in sorted(days.items())]
    total_steps = sum(r.steps_billed for r in rows)
    total_nano = sum(r.amount_nano_usd for r in rows)
    return {"object": "usage", "unit": "step", "currency": "USD", "group_by": group_by,
            "start": start.isoformat(), "end": end.isoformat(), "data": data,
            "total": {"steps": total_steps, "amount_usd": usd(total_nano), "jobs": len(rows)}}
