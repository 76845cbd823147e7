"""The composition root: builds the database, lifecycle (with its listeners), queue and storage from settings.

The gateway, the worker and the CLI all wire themselves here, so every process reacts to job transitions
the same way (webhook outbox, billing) and reads the same backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import MetaData

from ltx2trainer.jobs.db import Base, Database
from ltx2trainer.jobs.lifecycle import Lifecycle
from ltx2trainer.jobs.queue import CeleryJobQueue, JobQueue
from ltx2trainer.jobs.store import JobStore
from ltx2trainer.settings import Settings


def all_tables() -> MetaData:
    """The metadata with every table of the database registered: the job store's, the webhook outbox's and
    billing's. Gathered here because `notify/` and `billing/` build on `jobs/`, which may not import them;
    what the migrations are compared with (`ltx2trainer db revision`, tests/test_migrations.py)."""
    import ltx2trainer.billing.models
    import ltx2trainer.jobs.datasets
    import ltx2trainer.jobs.models
    import ltx2trainer.jobs.sweeps
    import ltx2trainer.notify.models  # noqa: F401

    return Base.metadata


@dataclass
class Services:
    settings: Settings
    ensure_schema: bool = True  # worker children skip it: their parent process created the tables

    @cached_property
    def db(self) -> Database:
        db = Database(self.settings.database_url)
        if self.ensure_schema:
            db.create_schema()
        return db

    @cached_property
    def lifecycle(self) -> Lifecycle:
        from ltx2trainer.billing.ledger import billing_listener
        from ltx2trainer.notify.webhooks import checkpoint_listener, outbox_listener

        # Billing first: it settles `usage`, which the webhook payloads then carry.
        return Lifecycle(self.db, listeners=[billing_listener(self.settings.price_per_step),
                                             outbox_listener(self.settings)],
                         event_listeners=[checkpoint_listener(self.settings)])

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.db)

    @cached_property
    def queue(self) -> JobQueue:
        return CeleryJobQueue(self.settings)

    @cached_property
    def storage(self):
        from ltx2trainer.storage import get_storage

        return get_storage(self.settings)
