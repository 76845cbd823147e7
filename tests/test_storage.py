"""Storage backends: the local filesystem and S3 over HTTP (moto's standalone server), same behaviour."""

from __future__ import annotations

import calendar
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from ltx2trainer.errors import InfraError
from ltx2trainer.schemas import File
from ltx2trainer.settings import Settings
from ltx2trainer.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    get_storage,
    job_prefix,
    verify_signed_path,
    verify_signed_query,
)

BUCKET = "ltx2trainer-test"
SECRET = "test-file-url-secret"
GATEWAY = "https://trainer.example.com"
SAFETENSORS = "application/octet-stream"


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials, and no developer's ~/.aws or instance metadata leaking in."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_env: None) -> Iterator[str]:
    """A real S3 protocol server (moto standalone) on a free loopback port, with the test bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def make_s3_storage(endpoint: str, prefix: str | None = None) -> S3Storage:
    """An S3Storage in the test bucket under a fresh prefix, with short timeouts and no retries."""
    return S3Storage(
        BUCKET,
        prefix if prefix is not None else f"test-{uuid.uuid4().hex[:8]}",
        endpoint_url=endpoint,
        region="us-east-1",
        connect_timeout_s=1,
        read_timeout_s=5,
        max_attempts=1,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage", SECRET)
    return make_s3_storage(request.getfixturevalue("s3_endpoint"))


def read_all(storage: Storage, key: str) -> bytes:
    with storage.open(key) as stream:
        return stream.read()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- both backends ---------------------------------------------------------------------------------


def test_put_bytes_round_trips_through_open(storage: Storage) -> None:
    stored = storage.put_bytes("jobs/a/config.json", b'{"rank": 32}', "application/json")

    assert stored.key == "jobs/a/config.json"
    assert stored.size == 12
    assert stored.content_type == "application/json"
    assert read_all(storage, "jobs/a/config.json") == b'{"rank": 32}'


def test_put_file_round_trips_and_replaces_the_previous_object(storage: Storage, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    source = tmp_path / "lora.safetensors"
    source.write_bytes(payload)

    storage.put_bytes("out/lora.safetensors", b"old", SAFETENSORS)
    stored = storage.put_file("out/lora.safetensors", source, SAFETENSORS)

    assert stored.size == len(payload)
    assert storage.size("out/lora.safetensors") == len(payload)
    assert read_all(storage, "out/lora.safetensors") == payload


def test_missing_object_does_not_exist_and_has_no_size(storage: Storage) -> None:
    storage.put_bytes("present.txt", b"x", "text/plain")

    assert storage.exists("present.txt")
    assert not storage.exists("absent.txt")
    assert not storage.exists("present.txt/child")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        storage.size("absent.txt")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        storage.open("absent.txt")


def test_file_object_has_the_hosted_shape_and_the_real_size(storage: Storage) -> None:
    storage.put_bytes("jobs/a/video.mp4", b"\x00" * 1234, "video/mp4")

    file = storage.file_object(
        "jobs/a/video.mp4", file_name="validation.mp4", content_type="video/mp4", expires_s=60, base_url=GATEWAY
    )

    assert set(file) == {"url", "content_type", "file_name", "file_size"}
    assert File.model_validate(file).file_size == 1234
    assert file["content_type"] == "video/mp4"
    assert file["file_name"] == "validation.mp4"
    assert file["url"].startswith("http")


def test_job_prefixes_isolate_jobs_and_delete_prefix_removes_only_one_job(storage: Storage) -> None:
    job1 = job_prefix("alice", "job1")
    job10 = job_prefix("alice", "job10")  # a string prefix of job1's id must not match it
    other_owner = job_prefix("bob", "job1")
    for prefix in (job1, job10, other_owner):
        storage.put_bytes(prefix + "lora.safetensors", prefix.encode(), SAFETENSORS)
        storage.put_bytes(prefix + "checkpoints/step_100.safetensors", b"ckpt", SAFETENSORS)

    assert len({job1, job10, other_owner}) == 3
    assert read_all(storage, job1 + "lora.safetensors") == job1.encode()

    assert storage.delete_prefix(job1) == 2

    assert not storage.exists(job1 + "lora.safetensors")
    assert not storage.exists(job1 + "checkpoints/step_100.safetensors")
    for kept in (job10, other_owner):
        assert read_all(storage, kept + "lora.safetensors") == kept.encode()
        assert storage.exists(kept + "checkpoints/step_100.safetensors")
    assert storage.delete_prefix(job1) == 0


def test_delete_prefix_refuses_to_delete_everything(storage: Storage) -> None:
    storage.put_bytes("keep.txt", b"x", "text/plain")

    for prefix in ("", "/"):
        with pytest.raises(ValueError, match="empty"):
            storage.delete_prefix(prefix)
    assert storage.exists("keep.txt")


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "../outside", "jobs/../../outside", "jobs/./a", "jobs//a", "jobs/a/", "a\\b", "", "a\x00b"],
)
def test_unsafe_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        storage.put_bytes(key, b"x", "text/plain")
    with pytest.raises(ValueError, match="storage key"):
        storage.exists(key)


def test_job_prefix_makes_any_owner_a_single_safe_segment() -> None:
    prefix = job_prefix("../Evil Owner/é", "0b6c8f9e-8d1b-4f8e-9a57-3c1d2e4f5a6b")

    jobs, owner_segment, job_id, tail = prefix.split("/")
    assert (jobs, job_id, tail) == ("jobs", "0b6c8f9e-8d1b-4f8e-9a57-3c1d2e4f5a6b", "")
    assert owner_segment.startswith("evil-owner-")
    assert owner_segment.isascii() and ".." not in owner_segment
    assert job_prefix("Alice", "j") != job_prefix("alice", "j")
    with pytest.raises(ValueError, match="job id"):
        job_prefix("alice", "../j")


# --- S3 ---------------------------------------------------------------------------------------------


def test_s3_presigned_url_downloads_the_bytes_with_type_and_file_name(s3_endpoint: str) -> None:
    storage = make_s3_storage(s3_endpoint)
    storage.put_bytes("jobs/a/lora.safetensors", b"lora-bytes", SAFETENSORS)

    url = storage.url_for(
        "jobs/a/lora.safetensors",
        file_name="mon lora é.safetensors",
        content_type=SAFETENSORS,
        expires_s=60,
        base_url="",
    )
    response = httpx.get(url)

    assert response.status_code == 200
    assert response.content == b"lora-bytes"
    assert response.headers["content-type"] == SAFETENSORS
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''mon%20lora%20%C3%A9.safetensors" in disposition
    assert 'filename="mon lora _.safetensors"' in disposition


def test_s3_presigned_url_carries_its_expiry(s3_endpoint: str) -> None:
    # moto does not enforce presigned-URL expiry (an expired URL still downloads), so this checks what
    # S3 enforces: the signed X-Amz-Date and X-Amz-Expires parameters.
    storage = make_s3_storage(s3_endpoint)
    storage.put_bytes("a.bin", b"x", SAFETENSORS)

    before = time.time()
    query = parse_qs(
        urlsplit(storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=90, base_url="")).query
    )

    assert query["X-Amz-Expires"] == ["90"]
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    assert abs(signed_at - before) < 5
    assert "X-Amz-Signature" in query
    with pytest.raises(ValueError, match="at most"):
        storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=8 * 24 * 3600, base_url="")


def test_s3_large_file_uploads_in_parts_with_its_content_type(s3_endpoint: str, tmp_path: Path) -> None:
    payload = bytes(range(256)) * (9 * 4096)  # 9 MiB: over boto3's 8 MiB multipart threshold
    source = tmp_path / "big.safetensors"
    source.write_bytes(payload)
    storage = make_s3_storage(s3_endpoint, prefix="multipart")

    storage.put_file("big.safetensors", source, SAFETENSORS)

    head = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").head_object(
        Bucket=BUCKET, Key="multipart/big.safetensors"
    )
    assert head["ContentLength"] == len(payload)
    assert head["ContentType"] == SAFETENSORS
    assert "-" in head["ETag"]  # a multipart ETag ends in -<number of parts>
    assert read_all(storage, "big.safetensors") == payload


def test_s3_storage_down_raises_infra_error_naming_the_endpoint(aws_env: None) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = S3Storage(BUCKET, "p", endpoint_url=endpoint, connect_timeout_s=1, read_timeout_s=2, max_attempts=1)

    started = time.monotonic()
    with pytest.raises(InfraError, match="unreachable.*127.0.0.1"):
        storage.put_bytes("a.bin", b"x", SAFETENSORS)
    with pytest.raises(InfraError, match="unreachable"):
        storage.exists("a.bin")
    with pytest.raises(InfraError, match="unreachable"):
        storage.delete_prefix("jobs/")
    assert time.monotonic() - started < 5


def test_s3_missing_bucket_raises_infra_error_naming_it(s3_endpoint: str) -> None:
    storage = S3Storage("no-such-bucket", endpoint_url=s3_endpoint, max_attempts=1)

    with pytest.raises(InfraError, match="no-such-bucket.*NoSuchBucket"):
        storage.put_bytes("a.bin", b"x", SAFETENSORS)


def test_s3_without_credentials_raises_infra_error_saying_so(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = make_s3_storage(s3_endpoint)

    with pytest.raises(InfraError, match="credentials.*AWS_ACCESS_KEY_ID"):
        storage.put_bytes("a.bin", b"x", SAFETENSORS)
    with pytest.raises(InfraError, match="credentials"):
        storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=60, base_url="")


# --- local signed URLs ------------------------------------------------------------------------------


def signed_parts(url: str) -> tuple[str, dict[str, str]]:
    """The key (decoded, as the gateway route receives it) and the query parameters of a signed local URL."""
    parts = urlsplit(url)
    assert parts.path.startswith("/v1/files/")
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return unquote(parts.path.removeprefix("/v1/files/")), query


def test_local_signed_url_points_at_the_gateway_and_verifies_with_its_own_parameters(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, SECRET, clock=lambda: 1_000_000)
    storage.put_bytes("jobs/a b/lora.safetensors", b"x", SAFETENSORS)

    url = storage.url_for(
        "jobs/a b/lora.safetensors",
        file_name="my lora é.safetensors",
        content_type=SAFETENSORS,
        expires_s=60,
        base_url=GATEWAY + "/",
    )
    key, query = signed_parts(url)

    assert url.startswith(f"{GATEWAY}/v1/files/jobs/a%20b/lora.safetensors?")
    assert key == "jobs/a b/lora.safetensors"
    assert query["expires"] == "1000060"
    assert query["name"] == "my lora é.safetensors"
    assert query["type"] == SAFETENSORS
    assert verify_signed_path(
        key, query["expires"], query["name"], query["sig"], SECRET, now=1_000_059, content_type=query["type"]
    )
    assert verify_signed_query(key, query, SECRET, now=1_000_000)
    assert storage.resolve(key).read_bytes() == b"x"


def test_local_signed_url_rejects_a_tampered_key_name_type_signature_or_secret(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, SECRET, clock=lambda: 1_000_000)
    key, query = signed_parts(
        storage.url_for(
            "jobs/a/lora.safetensors",
            file_name="lora.safetensors",
            content_type=SAFETENSORS,
            expires_s=60,
            base_url=GATEWAY,
        )
    )
    now = 1_000_001

    assert verify_signed_query(key, query, SECRET, now=now)
    assert not verify_signed_query("jobs/b/lora.safetensors", query, SECRET, now=now)
    assert not verify_signed_query(key, {**query, "name": "other.safetensors"}, SECRET, now=now)
    assert not verify_signed_query(key, {**query, "type": "text/html"}, SECRET, now=now)
    assert not verify_signed_query(key, {**query, "expires": "2000000"}, SECRET, now=now)
    assert not verify_signed_query(key, {**query, "sig": "0" * 64}, SECRET, now=now)
    assert not verify_signed_query(key, {**query, "sig": "é"}, SECRET, now=now)
    assert not verify_signed_query(key, {k: v for k, v in query.items() if k != "sig"}, SECRET, now=now)
    assert not verify_signed_query(key, query, "another-secret", now=now)
    assert not verify_signed_path(key, "soon", query["name"], query["sig"], SECRET, now=now)


def test_local_signed_url_is_rejected_after_it_expires(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, SECRET, clock=lambda: 1_000_000)
    key, query = signed_parts(
        storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=60, base_url=GATEWAY)
    )

    assert verify_signed_query(key, query, SECRET, now=1_000_059.9)
    assert not verify_signed_query(key, query, SECRET, now=1_000_060)
    assert not verify_signed_query(key, query, SECRET)  # the real clock is far past 1970


def test_local_resolve_never_escapes_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    storage = LocalStorage(tmp_path / "storage", SECRET)
    (storage.root / "jobs").mkdir()
    (storage.root / "jobs" / "link").symlink_to(outside)

    assert storage.resolve("jobs/a/lora.safetensors") == storage.root / "jobs/a/lora.safetensors"
    with pytest.raises(ValueError, match="outside the storage root"):
        storage.resolve("jobs/link/secret.txt")
    with pytest.raises(ValueError, match="outside the storage root"):
        storage.open("jobs/link/secret.txt")
    with pytest.raises(ValueError, match="storage key"):
        storage.resolve("../outside/secret.txt")


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage", SECRET)
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc")

    storage.put_file("jobs/a/one.bin", source, SAFETENSORS)
    storage.put_bytes("jobs/a/two.bin", b"def", SAFETENSORS)

    assert sorted(p.name for p in (storage.root / "jobs/a").iterdir()) == ["one.bin", "two.bin"]


def test_local_url_needs_the_gateway_base_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, SECRET)

    with pytest.raises(ValueError, match="base_url"):
        storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=60, base_url="")


# --- choosing the backend ---------------------------------------------------------------------------


def test_get_storage_defaults_to_local_files_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data dir")

    storage = get_storage(settings)

    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "data dir" / "storage").resolve()
    key, query = signed_parts(
        storage.url_for("a.bin", file_name="a.bin", content_type=SAFETENSORS, expires_s=60, base_url=GATEWAY)
    )
    assert verify_signed_query(key, query, settings.secret("file_url_secret"))


def test_get_storage_picks_s3_for_s3_urls_with_bucket_prefix_and_endpoint(s3_endpoint: str) -> None:
    settings = Settings(storage_url=f"s3://{BUCKET}/prod/outputs/", s3_endpoint_url=s3_endpoint)

    storage = get_storage(settings)
    storage.put_bytes("jobs/a/lora.safetensors", b"lora", SAFETENSORS)

    assert isinstance(storage, S3Storage)
    body = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").get_object(
        Bucket=BUCKET, Key="prod/outputs/jobs/a/lora.safetensors"
    )["Body"]
    with body:
        assert body.read() == b"lora"


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "http://example.com/storage", "relative/dir"])
def test_get_storage_names_an_unsupported_url_and_the_supported_schemes(tmp_path: Path, url: str) -> None:
    settings = Settings(data_dir=tmp_path, storage_url=url)

    with pytest.raises(ValueError, match="unsupported scheme") as raised:
        get_storage(settings)
    assert url in str(raised.value)
    assert "file:///" in str(raised.value) and "s3://" in str(raised.value)


@pytest.mark.parametrize("url", ["file://host/dir", "s3://", "s3:///prefix"])
def test_get_storage_rejects_incomplete_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="storage URL"):
        get_storage(Settings(data_dir=tmp_path, storage_url=url))


def test_s3_download_urls_are_signed_for_the_public_endpoint(s3_endpoint: str) -> None:
    # Workers upload at the internal endpoint; users get URLs for the one they can reach.
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    storage = S3Storage(BUCKET, "pub", endpoint_url=s3_endpoint, public_endpoint_url=public,
                        connect_timeout_s=1, read_timeout_s=5, max_attempts=1)
    storage.put_bytes("a/b.bin", b"public bytes", "application/octet-stream")
    url = storage.url_for("a/b.bin", file_name="b.bin", content_type="application/octet-stream", expires_s=60)
    assert url.startswith(public + "/")
    assert httpx.get(url, timeout=10).content == b"public bytes"
