"""The job store is the source of truth: queued jobs whose broker message was lost (Redis restarted without
persistence, a message dropped after a failed claim) are published again by the workers' sweeper, once each."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from sqlalchemy import select, update

from ltx2trainer.jobs.models import JobRow
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.app import reap_dead_workers, sweep_lost_jobs, sweep_lost_preparations

INPUT = {"training_data_url": "https://example.com/a.zip", "number_of_steps": 100}


def submit(services: Services) -> str:
    job, _ = services.lifecycle.submit("alice", INPUT)
    services.queue.enqueue(job.id)
    return job.id


def age(services: Services, seconds: float = 120) -> None:
    """As if every job had been submitted `seconds` ago (the sweeper leaves younger ones alone)."""
    with services.db.session() as session:
        for job in session.scalars(select(JobRow)):
            session.execute(update(JobRow).where(JobRow.id == job.id).values(
                updated_at=job.updated_at - dt.timedelta(seconds=seconds)))


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_queued_jobs_lost_by_the_broker_are_published_again_once(tmp_path, database_url, redis_url, broker):
    url = redis_url if broker == "redis" else "filesystem://localhost/"
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=url)
    services, other_worker = Services(settings), Services(settings)
    queued = [submit(services) for _ in range(3)]
    running = submit(services)
    assert services.lifecycle.start(running, "worker-1", lease_s=60, max_attempts=3) is not None
    age(services)
    assert sweep_lost_jobs(services) == []  # every message is still there: nothing to do
    assert services.queue.pending_job_ids() == set(queued) | {running}

    if broker == "redis":  # a restart without persistence
        redis.Redis.from_url(url).flushdb()
    else:
        for message in (tmp_path / "data" / "broker" / "queue").glob("*.msg"):
            message.unlink()
    assert services.queue.pending_job_ids() == set()

    first, second = sweep_lost_jobs(services), sweep_lost_jobs(other_worker)  # two workers' sweepers
    assert sorted(first + second) == sorted(queued)  # each queued job exactly once; the running one has a lease
    assert services.queue.pending_job_ids() == set(queued)
    assert sweep_lost_jobs(services) == []  # published again recently: left alone until it is old again
    age(services)
    assert sweep_lost_jobs(services) == []  # and its message is there now
    logs = [event.data["message"] for event in services.store.events(queued[0], kinds=("log",))]
    assert "the queue lost this job's message; queued again" in logs

    # The running job's worker dies too: its lease expires, the reaper queues it again.
    with services.db.session() as session:
        session.execute(update(JobRow).where(JobRow.id == running).values(
            lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert reap_dead_workers(services) == [running]
    assert services.queue.pending_job_ids() == set(queued) | {running}
    for job_id in queued + [running]:  # a worker takes each message: each job starts once
        assert services.lifecycle.start(job_id, "worker-2", lease_s=60, max_attempts=3) is not None
        assert services.lifecycle.start(job_id, "worker-3", lease_s=60, max_attempts=3) is None  # a duplicate


def test_a_job_submitted_while_the_broker_is_down_is_accepted_and_published_once_it_answers(
        tmp_path, database_url, redis_url):
    from fastapi.testclient import TestClient

    from ltx2trainer.api import create_app
    from ltx2trainer.jobs.keys import create_key
    from tests.live_service import free_port

    down = Settings(data_dir=tmp_path / "data", database_url=database_url,
                    broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    gateway = Services(down)
    token = create_key(gateway.db, "alice").token
    with TestClient(create_app(down, services=gateway)) as client:
        response = client.post("/v1/trainings", json=INPUT, headers={"Authorization": f"Key {token}"})
    assert response.status_code == 201, response.text  # not a 5xx: the job is safe in the database
    job = response.json()
    assert job["status"] == "queued" and job["error"] is None

    # A worker's sweeper, on the broker that answers again, publishes it (once it is old enough).
    worker = Services(Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=redis_url))
    assert sweep_lost_jobs(worker) == []  # too young: it may still be on its way to the broker
    age(worker)
    assert sweep_lost_jobs(worker) == [job["id"]]
    assert worker.queue.pending_job_ids() == {job["id"]}


def test_the_sweeper_waits_quietly_while_the_broker_is_down(tmp_path, caplog):
    from tests.live_service import free_port

    services = Services(Settings(data_dir=tmp_path / "data", broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    services.lifecycle.submit("alice", INPUT)
    age(services)
    assert sweep_lost_jobs(services) == []  # no exception out of the maintenance tick
    assert "cannot read the job queue" in caplog.text


def age_datasets(services: Services, seconds: float = 120) -> None:
    """As if every dataset had been put on the prepare queue `seconds` ago."""
    from ltx2trainer.jobs.datasets import DatasetRow

    with services.db.session() as session:
        for row in session.scalars(select(DatasetRow)):
            row.queued_at = row.queued_at - dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_queued_datasets_lost_by_the_broker_are_prepared_again_once(tmp_path, database_url, redis_url, broker):
    from ltx2trainer.jobs.datasets import claim_dataset, create_dataset

    url = redis_url if broker == "redis" else "filesystem://localhost/"
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=url)
    services, other_worker = Services(settings), Services(settings)
    datasets = [create_dataset(services.db, "alice", {"training_data_url": "https://example.com/a.zip"}, []).id
                for _ in range(2)]
    for dataset_id in datasets:
        services.queue.enqueue_preparation(dataset_id)
    job = submit(services)  # a training's message on the same broker is not taken for a dataset's
    age_datasets(services)
    assert sweep_lost_preparations(services) == []  # every message is still there
    assert services.queue.pending_preparation_ids() == set(datasets)
    assert services.queue.pending_job_ids() == {job}

    if broker == "redis":
        redis.Redis.from_url(url).flushdb()
    else:
        for message in (tmp_path / "data" / "broker" / "queue").glob("*.msg"):
            message.unlink()
    first, second = sweep_lost_preparations(services), sweep_lost_preparations(other_worker)
    assert sorted(first + second) == sorted(datasets)  # each exactly once
    assert services.queue.pending_preparation_ids() == set(datasets)
    assert services.queue.pending_job_ids() == set()  # the training is the other sweeper's
    assert sweep_lost_preparations(services) == []  # sent again just now: left alone until it is old again
    for dataset_id in datasets:  # a worker takes each message: each dataset is prepared once
        assert claim_dataset(services.db, dataset_id, lease_s=60, max_attempts=3) is not None
        assert claim_dataset(services.db, dataset_id, lease_s=60, max_attempts=3) is None
    age_datasets(services)
    assert sweep_lost_preparations(services) == []  # preparing: not queued any more


def test_a_dataset_created_while_the_broker_is_down_is_accepted_and_queued_once_it_answers(
        tmp_path, database_url, redis_url, caplog):
    from fastapi.testclient import TestClient

    from ltx2trainer.api import create_app
    from ltx2trainer.jobs.keys import create_key
    from tests.live_service import free_port

    down = Settings(data_dir=tmp_path / "data", database_url=database_url,
                    broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    gateway = Services(down)
    token = create_key(gateway.db, "alice").token
    with TestClient(create_app(down, services=gateway)) as client:
        response = client.post("/v1/datasets", json={"training_data_url": "https://example.com/a.zip"},
                               headers={"Authorization": f"Key {token}"})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["status"] == "queued"
    assert f"could not queue dataset {dataset['id']} now" in caplog.text

    assert sweep_lost_preparations(gateway) == []  # the broker is still down: nothing raised, nothing sent
    worker = Services(Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=redis_url))
    assert sweep_lost_preparations(worker) == []  # too young: it may still be on its way to the broker
    age_datasets(worker)
    assert sweep_lost_preparations(worker) == [dataset["id"]]
    assert worker.queue.pending_preparation_ids() == {dataset["id"]}
