"""The job store's schema is migrated, not recreated: a database made by an earlier schema (or before migrations
existed) is upgraded keeping its rows, on SQLite and on PostgreSQL, and the migrations match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from ltx2trainer.billing.ledger import record_steps
from ltx2trainer.jobs.db import Database
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.jobs.migrate import INITIAL_REVISION, current_revision, head_revision, upgrade
from ltx2trainer.jobs.models import JobRow
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services, all_tables

INPUT = {"training_data_url": "https://example.com/a.zip", "number_of_steps": 100}


def rows_of(db: Database) -> dict[str, int]:
    with db.engine.connect() as connection:
        return {table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
                for table in ("jobs", "job_events", "api_keys", "usage_records")}


def fill(services: Services) -> str:
    create_key(services.db, "alice")
    job, _ = services.lifecycle.submit("alice", INPUT)
    services.lifecycle.start(job.id, "worker-1", lease_s=60, max_attempts=3)
    record_steps(services.db, job.id, [1, 2, 3], services.settings.price_per_step)
    return job.id


def test_a_database_of_the_first_schema_is_upgraded_keeping_its_rows(tmp_path, database_url):
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    db = Database(database_url)
    assert upgrade(db, INITIAL_REVISION) == INITIAL_REVISION  # the schema as it was before the index
    services = Services(settings, ensure_schema=False)
    job_id = fill(services)
    before = rows_of(db)
    indexes = {index["name"] for index in inspect(db.engine).get_indexes("jobs")}
    assert "ix_jobs_status_updated" not in indexes

    result = CliRunner().invoke(__import__("ltx2trainer.cli", fromlist=["app"]).app, ["db", "upgrade"],
                                env={"LTX2T_DATABASE_URL": database_url, "LTX2T_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    assert f"schema at revision {head_revision()} (was {INITIAL_REVISION}" in result.output
    assert rows_of(db) == before and before["usage_records"] == 3
    assert "ix_jobs_status_updated" in {index["name"] for index in inspect(db.engine).get_indexes("jobs")}
    with db.session() as session:
        assert session.scalar(select(JobRow.status).where(JobRow.id == job_id)) == "running"
    assert upgrade(db) == head_revision()  # again: nothing to do


def test_a_database_made_before_migrations_existed_is_stamped_then_upgraded(tmp_path, database_url):
    db = Database(database_url)
    upgrade(db, INITIAL_REVISION)
    with db.engine.begin() as connection:  # what create_all left: the tables and no version table
        connection.execute(text("DROP TABLE alembic_version"))
    services = Services(Settings(data_dir=tmp_path / "data", database_url=database_url), ensure_schema=False)
    fill(services)
    before = rows_of(db)
    assert current_revision(db) is None
    assert upgrade(db) == head_revision()
    assert rows_of(db) == before


def test_the_migrations_build_exactly_what_the_models_describe(tmp_path, database_url):
    db = Database(database_url)
    upgrade(db)
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), all_tables())
    assert differences == [], "the models changed without a migration: ltx2trainer db revision \"what changed\""
