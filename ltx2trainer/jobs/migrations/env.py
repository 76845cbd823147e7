"""Alembic's entry point for the job store's migrations (run through `ltx2trainer.jobs.migrate`, which passes
the connection in `config.attributes["connection"]` and, only to autogenerate a revision, every table in
`config.attributes["target_metadata"]`; there is no alembic.ini)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters a table by copying it, which Alembic's batch mode does for us.
context.configure(connection=connection, target_metadata=context.config.attributes.get("target_metadata"),
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
