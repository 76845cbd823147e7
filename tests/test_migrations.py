"""The job store's schema is migrated, not recreated: a database made by an earlier schema (or before migrations
existed) is upgraded keeping its rows, on SQLite and on PostgreSQL, and the migrations match the models."""

from __future__ import annotations

import datetime as dt
import uuid

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from ltx2trainer.billing.models import UsageRecordRow
from ltx2trainer.jobs.db import Database, utcnow
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
    """A key, a running job and 3 billed steps, written as the first schema's service would have: the job and
    its usage through SQL naming only the columns that schema had (today's model has more)."""
    create_key(services.db, "alice")
    job_id, now = str(uuid.uuid4()), utcnow()
    jobs = JobRow.__table__
    first_schema = {column["name"] for column in inspect(services.db.engine).get_columns("jobs")}
    values = {"id": job_id, "owner": "alice", "status": "running", "input": INPUT, "adjustments": [],
              "request_hash": "", "attempt": 1, "lease_owner": "worker-1", "created_at": now, "started_at": now,
              "updated_at": now, "lease_expires_at": now + dt.timedelta(seconds=60)}
    assert set(values) <= first_schema
    with services.db.engine.begin() as connection:
        connection.execute(jobs.insert().values(values))
        connection.execute(UsageRecordRow.__table__.insert(), [
            {"job_id": job_id, "owner": "alice", "step": step, "unit_price_nano_usd": 4_800_000, "created_at": now}
            for step in (1, 2, 3)])
    return job_id


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


def test_upgrading_to_0007_fills_in_each_jobs_dataset_and_each_datasets_queue_time(tmp_path, database_url):
    """A job trained on a dataset before the `dataset_id` column existed is found among that dataset's trainings
    after the upgrade, and a dataset queued then is looked for by the lost-message sweep."""
    from alembic import command

    from ltx2trainer.jobs.datasets import DatasetRow, create_dataset, trainings_of, trainings_using
    from ltx2trainer.jobs.migrate import _config

    db = Database(database_url)
    upgrade(db)
    services = Services(Settings(data_dir=tmp_path / "data", database_url=database_url), ensure_schema=False)
    dataset = create_dataset(db, "alice", {"training_data_url": "https://example.com/a.zip"}, [])
    on_dataset, _ = services.lifecycle.submit("alice", {**INPUT, "dataset_id": dataset.id})
    services.lifecycle.submit("alice", INPUT)
    with db.engine.begin() as connection:  # back to 0006, where the dataset was only in the stored input
        command.downgrade(_config(connection), "0006")
    assert "dataset_id" not in {column["name"] for column in inspect(db.engine).get_columns("jobs")}

    assert upgrade(db) == head_revision()
    assert trainings_using(db, dataset.id, "alice") == [on_dataset.id]
    assert [job.id for job in trainings_of(db, dataset.id, "alice")] == [on_dataset.id]
    assert trainings_of(db, dataset.id, "bob") == []
    with db.session() as session:
        row = session.get(DatasetRow, dataset.id)
        assert row.queued_at == row.created_at
