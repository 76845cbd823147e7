"""How fast `GET /v1/trainings/{id}/metrics` answers for a long job: 10 000 steps, on SQLite and PostgreSQL.

    .venv/bin/python bench/metrics.py [--steps 10000] [--repeat 20] [--checkpoints 4]
                                      [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

For each database (a fresh SQLite file; a fresh PostgreSQL database, dropped afterwards): the schema through the
migrations, one job of the owner, `--steps` metric rows written the way the worker writes them (`record_metrics`,
in flushes of 50 rows; timed too) and `--checkpoints` evenly spaced checkpoint rows with a held-out loss
(`record_checkpoint_metrics`: the JSON's `checkpoints`, the CSV's last column), then each format fetched through the real app (FastAPI's TestClient: the
routing, auth, middleware and encoding a request goes through, without a socket) `--repeat` times after one
warm-up. Prints a table of the median and worst times, and the body sizes. Target: well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from ltx2trainer.api import create_app  # noqa: E402
from ltx2trainer.jobs.keys import create_key  # noqa: E402
from ltx2trainer.jobs.metrics import metric_row, record_checkpoint_metrics, record_metrics  # noqa: E402
from ltx2trainer.settings import Settings  # noqa: E402
from ltx2trainer.wiring import Services  # noqa: E402

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FLUSH_ROWS = 50  # about what the worker writes per 0.5 s flush at ~100 steps/s
TARGET_S = 1.0


@contextlib.contextmanager
def sqlite_database(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder / 'bench.db'}"


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"ltx2t_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(database: str, url: str, folder: Path, steps: int, repeat: int, checkpoints: int) -> list[dict]:
    settings = Settings(data_dir=folder / "data", database_url=url)
    services = Services(settings)
    app = create_app(settings, services=services)
    token = create_key(services.db, "alice").token
    job, _ = services.lifecycle.submit("alice", {"training_data_url": "https://example.com/a.zip",
                                                 "number_of_steps": steps})
    rng = random.Random(0)
    rows = [metric_row(step, rng.uniform(0.05, 1.5), rng.uniform(0.05, 1.0), rng.uniform(0.0, 0.5),
                       1e-4 * (1 - 0.9 * step / steps), rng.uniform(0.01, 5.0), rng.uniform(0.0, 1.0))
            for step in range(1, steps + 1)]
    started = time.perf_counter()
    for start in range(0, steps, FLUSH_ROWS):
        record_metrics(services.db, job.id, rows[start:start + FLUSH_ROWS])
    write_s = time.perf_counter() - started
    marked = [steps * (i + 1) // checkpoints for i in range(checkpoints)] if checkpoints else []
    for step in marked:  # the default interval: a quarter of the steps (the last is the final step's row)
        record_checkpoint_metrics(services.db, job.id, step, rng.uniform(0.05, 1.5), rng.uniform(0.05, 1.5))

    results = []
    with TestClient(app) as client:
        headers = {"Authorization": f"Key {token}"}
        for fmt in ("json", "csv"):
            times, size = [], 0
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                response = client.get(f"/v1/trainings/{job.id}/metrics", params={"format": fmt}, headers=headers)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text
                size = len(response.content)
                if attempt:  # the first one warms up
                    times.append(elapsed)
            if fmt == "json":
                body = response.json()
                rows_back = len(body["data"])
                assert [row["step"] for row in body["checkpoints"]] == marked, body["checkpoints"]
            else:
                lines = response.text.splitlines()
                rows_back = len(lines) - 1
                filled = [int(line.split(",", 1)[0]) for line in lines[1:] if not line.endswith(",")]
                assert lines[0].endswith(",holdout_loss") and filled == marked, filled
            assert rows_back == steps, rows_back
            results.append({"database": database, "format": fmt, "rows": rows_back, "bytes": size,
                            "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times),
                            "write_s": write_s})
    services.db.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoint rows with a held-out loss")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        with sqlite_database(folder) as url:
            results += measure("sqlite", url, folder / "sqlite", args.steps, args.repeat, args.checkpoints)
        with postgres_database(args.postgres_url) as url:
            results += measure("postgresql", url, folder / "postgresql", args.steps, args.repeat, args.checkpoints)

    print(f"GET /v1/trainings/{{id}}/metrics, {args.steps} steps and {args.checkpoints} checkpoints, {args.repeat} "
          "requests each after a warm-up (TestClient, in process)")
    print(f"{'database':<11} {'format':<6} {'rows':>6} {'bytes':>9} {'median ms':>10} {'max ms':>8} "
          f"{'write s':>8}")
    for r in results:
        print(f"{r['database']:<11} {r['format']:<6} {r['rows']:>6} {r['bytes']:>9} {r['median_ms']:>10.1f} "
              f"{r['max_ms']:>8.1f} {r['write_s']:>8.2f}")
    worst = max(r["max_ms"] for r in results) / 1000
    print(f"worst {worst * 1000:.1f} ms: {'within' if worst < TARGET_S else 'OVER'} the {TARGET_S:.0f} s target "
          f"(write s: {args.steps} rows in flushes of {FLUSH_ROWS}, record_metrics)")
    if worst >= TARGET_S:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
