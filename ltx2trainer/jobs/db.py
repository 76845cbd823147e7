"""The job database: SQLAlchemy 2 engine, sessions and the declarative base shared by every table.

SQLite (the embedded default, a file under the data dir) and PostgreSQL (production) behave the same to the
code above: timestamps are always timezone-aware UTC, JSON columns are plain dicts and lists. SQLite is put in
WAL mode with a busy timeout, because the gateway's threads and a worker process write to it at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_POOL_SIZE = 8  # matches the gateway's thread pool (ltx2trainer.api.app.GATEWAY_THREADS)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use ltx2trainer.jobs.db.utcnow()")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, dt.datetime: UTCDateTime}


class Database:
    """An engine and its session factory. `session()` commits on success and rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def create_schema(self) -> None:
        """Bring the schema up to date with the migrations (`jobs/migrate.py`): creates a new database, upgrades
        an older one keeping its rows."""
        from ltx2trainer.jobs.migrate import upgrade

        upgrade(self)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # the embedded default's data dir
        # A fixed pool: connections beyond the pool would be opened (with the PRAGMAs below) and closed per use.
        engine = create_engine(url, pool_size=SQLITE_POOL_SIZE, max_overflow=0, pool_timeout=60,
                               connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
