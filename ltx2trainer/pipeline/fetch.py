"""Fetch stage: get the user's training data onto local disk and safely unpacked.

`fetch_dataset` accepts an http(s) URL (streamed, size-limited, with timeouts and SSRF checks on every
redirect hop), a `data:` URL, or, where allowed, a local path (a zip or a folder). Downloads are written
through a temp file and renamed, and a finished download or extraction is reused on a re-run, so a
redelivered job does not fetch twice.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ltx2trainer import netguard
from ltx2trainer.errors import UserInputError
from ltx2trainer.guarded_http import Deadline, DeadlineExceeded, guarded_client
from ltx2trainer.pipeline.extract import ExtractLimits, IgnoredEntry, extract_archive
from ltx2trainer.settings import Settings
from ltx2trainer.uploads import decode_data_url

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
USER_AGENT = "ltx2trainer/0.1 (+dataset fetch)"
ARCHIVE_NAME = "training_data.zip"
EXTRACTED_DIR_NAME = "extracted"

ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


@dataclass
class FetchResult:
    """Where the dataset's files are, and what extraction left out."""

    root: Path
    ignored: list[IgnoredEntry] = field(default_factory=list)


def fetch_dataset(
    source: str,
    work_dir: Path,
    settings: Settings,
    *,
    allow_local: bool | None = None,
    on_progress: ProgressCallback | None = None,
) -> FetchResult:
    """Download `source` into `work_dir` and extract it; returns the folder holding the user's files.

    `allow_local` defaults to `settings.allow_file_urls` (the CLI passes True).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    allow_local = settings.allow_file_urls if allow_local is None else allow_local
    local = local_path(source)
    if local is not None:
        if not allow_local:
            raise UserInputError("local paths are not accepted as training data on this service", code="bad_url")
        if not local.exists():  # named as the user wrote it (not expanded: "~" is the server's home)
            raise UserInputError(f"training data not found: {source}", code="not_found")
        if local.is_dir():
            return FetchResult(root=local)
        archive = local
    else:
        archive = work_dir / ARCHIVE_NAME
        if not archive.exists():  # a finished download from an earlier attempt is reused
            download(source, archive, settings, on_progress=on_progress)

    extracted = work_dir / EXTRACTED_DIR_NAME
    report = extract_archive(archive, extracted, ExtractLimits.from_settings(settings))
    return FetchResult(root=extracted, ignored=report.ignored)


def download(source: str, dest: Path, settings: Settings, *, on_progress: ProgressCallback | None = None) -> Path:
    """Save an http(s) or data: URL to `dest` (atomically); raise UserInputError with the reason if it fails."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme == "data":
        return _save_data_url(source, dest, settings.download_max_bytes)
    if scheme in ("http", "https"):
        return _download_http(source, dest, settings, on_progress)
    raise UserInputError(f"unsupported URL scheme {scheme!r} for training data", code="bad_url")


def local_path(source: str) -> Path | None:
    """The local path a `file:` URL or plain path names; None for other URLs."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or len(parts.scheme) == 1:  # plain path, or a Windows drive letter
        return Path(source).expanduser()
    return None


def _save_data_url(source: str, dest: Path, max_bytes: int) -> Path:
    # The gateway's decoder (strict base64), so a data: URL means the same here, in the CLI and at submit.
    payload, _media_type = decode_data_url(source)
    if len(payload) > max_bytes:
        raise UserInputError(_too_large_message(len(payload), max_bytes), code="too_large")
    _write_atomically(dest, [payload])
    return dest


def _download_http(source: str, dest: Path, settings: Settings, on_progress: ProgressCallback | None) -> Path:
    timeout = httpx.Timeout(
        connect=settings.download_connect_timeout_s,
        read=settings.download_read_timeout_s,
        write=settings.download_read_timeout_s,
        pool=settings.download_connect_timeout_s,
    )
    url = source
    client = guarded_client(allow_private=settings.allow_private_urls, what="training_data_url", timeout=timeout,
                            headers={"User-Agent": USER_AGENT})
    # One deadline for the whole download, redirects included: a peer trickling bytes cannot hold a worker.
    with client, Deadline(settings.download_deadline_s) as deadline:
        # Redirects are followed by hand so that every hop passes the address checks.
        for _hop in range(settings.download_max_redirects + 1):
            host, port = _http_target(url, redirected=url != source)
            netguard.check_host(host, port, allow_private=settings.allow_private_urls, what="training_data_url")
            try:
                with client.stream("GET", url) as response:
                    stream = response.extensions.get("network_stream")
                    peer = stream.get_extra_info("server_addr") if stream is not None else None
                    netguard.check_peer(
                        host, peer[0] if peer else None, allow_private=settings.allow_private_urls,
                        what="training_data_url",
                    )
                    if response.is_redirect and "location" in response.headers:
                        url = urllib.parse.urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise UserInputError(
                            f"downloading the training data failed: HTTP {response.status_code} "
                            f"{response.reason_phrase} from {host}",
                            code="download_failed",
                        )
                    return _save_response(response, dest, settings.download_max_bytes, on_progress, deadline)
            except httpx.InvalidURL as exc:  # httpx parses a redirect's Location before handing it over
                raise UserInputError(f"download from {host} redirected to an invalid URL ({exc})",
                                     code="bad_url") from exc
            except (httpx.HTTPError, DeadlineExceeded) as exc:
                raise _download_error(exc, host, settings, deadline.expired) from exc
    raise UserInputError(
        f"downloading the training data failed: more than {settings.download_max_redirects} redirects",
        code="download_failed",
    )


def _download_error(exc: Exception, host: str, settings: Settings, past_deadline: bool) -> UserInputError:
    """The user's error for a failed download: past the total deadline, timed out, or another HTTP failure."""
    if past_deadline:
        return UserInputError(
            f"downloading the training data from {host} took longer than {settings.download_deadline_s:g} s in "
            "total (the service's download deadline); the server sends too slowly", code="download_failed")
    if isinstance(exc, httpx.TimeoutException):
        return UserInputError(
            f"downloading the training data from {host} timed out ({type(exc).__name__}: no data for "
            f"{settings.download_read_timeout_s:g} s or no connection within "
            f"{settings.download_connect_timeout_s:g} s)", code="download_failed")
    return UserInputError(f"downloading the training data from {host} failed: {type(exc).__name__}: {exc}",
                          code="download_failed")


def _http_target(url: str, *, redirected: bool) -> tuple[str, int]:
    """(host, port) of an http(s) URL, or the user's error naming what is wrong with it (a redirect's target
    is as untrusted as the URL submitted)."""
    what = f"download redirected to {url[:200]}" if redirected else f"training_data_url {url[:200]}"
    try:
        httpx.URL(url)  # what the client will parse
        return netguard.http_target(url)
    except (netguard.InvalidURL, httpx.InvalidURL) as exc:
        raise UserInputError(f"{what}: an invalid URL ({exc})", code="bad_url") from exc
    except netguard.NotHttpURL as exc:
        raise UserInputError(f"download redirected to an unsupported URL: {url[:200]}" if redirected else
                             f"{what}: not an http(s) URL", code="bad_url") from exc


def _save_response(
    response: httpx.Response, dest: Path, max_bytes: int, on_progress: ProgressCallback | None,
    deadline: Deadline | None = None,
) -> Path:
    declared = response.headers.get("content-length")
    total = int(declared) if declared and declared.isdigit() else None
    if total is not None and total > max_bytes:
        raise UserInputError(_too_large_message(total, max_bytes), code="too_large")

    def chunks():
        received = 0
        for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
            if deadline is not None:
                deadline.check()
            received += len(chunk)
            if received > max_bytes:  # a missing or lying Content-Length does not get past the limit
                raise UserInputError(_too_large_message(received, max_bytes, at_least=True), code="too_large")
            if on_progress is not None:
                on_progress(received, total)
            yield chunk

    _write_atomically(dest, chunks())
    return dest


def _write_atomically(dest: Path, chunks) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _too_large_message(size: int, limit: int, *, at_least: bool = False) -> str:
    mib = 1024 * 1024
    qualifier = "more than " if at_least else ""
    return (
        f"the training data is {qualifier}{size / mib:.1f} MiB; the limit on this service is "
        f"{limit / mib:.1f} MiB"
    )
