"""Shared fixtures: settings in a temp folder, a real HTTP server on loopback, and a prepare helper."""

from __future__ import annotations

import os

# The tiny model gains nothing from intra-op threads, and they fight with the dataset workers and the
# second DDP process over 2 cores (seconds per step instead of milliseconds). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ltx2trainer.hashing import fingerprint
from ltx2trainer.pipeline.fetch import fetch_dataset
from ltx2trainer.pipeline.preprocess import PrepareOptions, PrepareResult, prepare_dataset
from ltx2trainer.settings import Settings

if shutil.which("ffmpeg") is None:  # pragma: no cover - scripts/test.sh installs it
    raise RuntimeError("the tests generate media with the ffmpeg command; install it (apt-get install ffmpeg)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults under a temp folder; loopback URLs stay forbidden as in production."""
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def loopback_settings(tmp_path: Path) -> Settings:
    """Like `settings` but allowing loopback URLs, for downloads from the test HTTP server."""
    return Settings(data_dir=tmp_path / "data", allow_private_urls=True)


@dataclass
class Route:
    """What the test server answers on one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True  # False: no Content-Length, body streamed until the connection closes
    stall_s: float = 0.0  # sleep this long after the headers before sending the body
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 serving `routes`; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.send_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.stall_s:
                    time.sleep(route.stall_s)
                try:
                    if route.trickle_s:
                        for index in range(len(route.body)):
                            self.wfile.write(route.body[index:index + 1])
                            self.wfile.flush()
                            time.sleep(route.trickle_s)
                    else:
                        self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval lets shutdown() return promptly at teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


PrepareFn = Callable[..., PrepareResult]


@pytest.fixture
def prepare(tmp_path: Path, settings: Settings) -> PrepareFn:
    """prepare(source, **options) -> PrepareResult: fetch (local zip or folder) then prepare into tmp/out.

    Defaults favour speed: the low 1:1 preset (512×512), 9 frames at 25 fps; `out=` and `workers=` override.
    """

    def run(source: Path, *, out: Path | None = None, workers: int = 1, **options) -> PrepareResult:
        out = out or tmp_path / "out"
        options = {"number_of_frames": 9, "frame_rate": 25, "width": 512, "height": 512, **options}
        work_dir = tmp_path / f"fetch-{fingerprint(str(source))}"  # one per source: fetch reuses its work
        fetched = fetch_dataset(str(source), work_dir, settings, allow_local=True)
        return prepare_dataset(
            fetched.root, out, PrepareOptions(**options), workers=workers, upstream_ignored=fetched.ignored
        )

    return run


# --- databases: the suite runs against SQLite and PostgreSQL ---------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get(
    "LTX2T_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("LTX2T_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The admin URL of the test PostgreSQL server (scripts/test.sh makes sure one runs)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - scripts/test.sh starts PostgreSQL
        raise RuntimeError(f"PostgreSQL is needed at {POSTGRES_ADMIN_URL} (scripts/test.sh starts it): {exc}") from exc
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server_url) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"ltx2t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_server_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test using this runs twice: on SQLite (the embedded default) and on PostgreSQL (production)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after the test."""
    import random

    import redis

    number = random.randint(1, 15)
    url = f"{REDIS_TEST_URL}/{number}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - scripts/test.sh starts Redis
        raise RuntimeError(f"Redis is needed at {REDIS_TEST_URL} (scripts/test.sh starts it)") from exc
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def api(tmp_path, database_url):
    """The gateway in process with two owners' keys (tests/api_harness.py), on SQLite and on PostgreSQL."""
    from tests.api_harness import open_api

    with open_api(tmp_path, database_url) as harness:
        yield harness
