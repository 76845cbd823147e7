"""What every storage backend offers, and the key rules they share.

A key is a '/'-separated relative path such as ``jobs/alice-1f2e…/<job id>/lora.safetensors``. Keys are
checked before any backend touches them, so a key can never name something outside the storage root (no
absolute paths, no ``..`` or ``.`` segments, no backslashes, no empty segments, no control characters).

Outputs of one job live under one prefix, `job_prefix(owner, job_id)`, so a job's files can be listed,
served and deleted together. Downloads go through time-limited URLs (`Storage.url_for`): presigned for S3,
HMAC-signed and served by the gateway for local files. `Storage.file_object` wraps such a URL in the
hosted API's File shape ``{url, content_type, file_name, file_size}``.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from ltx2trainer.schemas import File

JOBS_ROOT = "jobs"
_OWNER_SLUG_MAX_CHARS = 40
_OWNER_HASH_HEX_CHARS = 16  # 64 bits of SHA-256: owners are created by admins, not chosen by attackers
_JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StoredObject:
    """An object just written: its key, its size in bytes and the content type it was stored with."""

    key: str
    size: int
    content_type: str


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative '/'-separated path, else raise ValueError saying why."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} is absolute; keys are relative '/'-separated paths")
    if "\\" in key:
        raise ValueError(f"storage key {key!r} contains a backslash; separate segments with '/'")
    if _CONTROL_CHARS.search(key):
        raise ValueError(f"storage key {key!r} contains a control character")
    for segment in key.split("/"):
        if segment == "":
            raise ValueError(f"storage key {key!r} has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise ValueError(f"storage key {key!r} contains a {segment!r} segment")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it is a safe, non-empty key prefix (a trailing '/' allowed), else raise ValueError."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"storage prefix {prefix!r} is empty; refusing to address the whole storage")
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def job_prefix(owner: str, job_id: str) -> str:
    """The prefix all outputs of one job live under: ``jobs/{owner segment}/{job_id}/``.

    The owner segment is a readable slug of the owner (lower-case letters, digits, '_' and '-', at most
    40 characters) followed by '-' and the first 16 hex digits of SHA-256 of the exact owner string. The
    hash keeps owners that slug alike apart ("Alice" vs "alice", "a b" vs "a/b") and the whole segment is
    safe as a file name and an S3 key segment whatever the owner contains. `job_id` must already be a safe
    segment (letters, digits, '_', '.', '-'; a UUID is).
    """
    if not owner:
        raise ValueError("job_prefix needs a non-empty owner")
    if not _JOB_ID_PATTERN.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is not a safe path segment (letters, digits, '_', '.', '-')")
    slug = re.sub(r"[^a-z0-9_-]+", "-", owner.lower()).strip("-")[:_OWNER_SLUG_MAX_CHARS] or "owner"
    digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:_OWNER_HASH_HEX_CHARS]
    return f"{JOBS_ROOT}/{slug}-{digest}/{job_id}/"


def owner_prefix(owner: str) -> str:
    """The prefix of everything an owner has stored (`job_prefix` without the job): ``jobs/{owner segment}/``."""
    return job_prefix(owner, "x").removesuffix("x/")


def dataset_prefix(owner: str, dataset_id: str) -> str:
    """Where a dataset's files live (jobs/datasets.py): beside the owner's jobs, ``jobs/{owner}/datasets/{id}/``."""
    return f"{owner_prefix(owner)}datasets/{dataset_id}/"


def content_disposition(file_name: str) -> str:
    """A Content-Disposition header value that downloads as `file_name` (RFC 6266, UTF-8 via RFC 5987).

    Carries an ASCII fallback ``filename="…"`` for old clients and the exact name in ``filename*``.
    """
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in file_name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _check_expires_s(expires_s: int) -> int:
    if int(expires_s) <= 0:
        raise ValueError(f"expires_s must be a positive number of seconds, got {expires_s}")
    return int(expires_s)


class Storage(ABC):
    """An object store addressed by keys (see `check_key`); `LocalStorage` and `S3Storage` implement it.

    A missing key raises FileNotFoundError from `size` and `open`; a platform failure (S3 unreachable,
    bad credentials) raises `ltx2trainer.errors.InfraError`.
    """

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        """Store the file at `path` under `key`, replacing any object there."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store `data` under `key`, replacing any object there."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The stored object's size in bytes."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; the caller closes it."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (a plain string prefix, as in S3).

        Returns how many objects were deleted. An empty prefix is refused (ValueError).
        """

    @abstractmethod
    def url_for(self, key: str, *, file_name: str, content_type: str, expires_s: int, base_url: str) -> str:
        """A download URL for `key`, valid for `expires_s` seconds, that downloads as `file_name`.

        `base_url` is the gateway's public base URL (e.g. ``https://trainer.example.com``); only local
        storage uses it, since its files are served by the gateway.
        """

    def file_object(
        self, key: str, *, file_name: str, content_type: str, expires_s: int, base_url: str = ""
    ) -> dict[str, Any]:
        """The hosted API's File ``{url, content_type, file_name, file_size}`` of a stored object.

        `file_size` is in bytes; the URL expires after `expires_s` seconds.
        """
        size = self.size(key)
        url = self.url_for(key, file_name=file_name, content_type=content_type, expires_s=expires_s, base_url=base_url)
        return File(url=url, content_type=content_type, file_name=file_name, file_size=size).model_dump()


def is_file_ref(value: Any) -> bool:
    """A stored output reference `{key, file_name, content_type, file_size}` (what jobs record)."""
    return isinstance(value, dict) and {"key", "file_name", "content_type", "file_size"} <= value.keys()


def render_refs(storage: Storage, value: Any, *, expires_s: int, base_url: str) -> Any:
    """`value` with every stored reference inside it made into a File `{url, content_type, file_name, file_size}`.

    URLs are signed at the moment of rendering, so a job read (or a webhook sent) hours later still gets
    working links; the stored size is used, so rendering costs no storage round trip.
    """
    if is_file_ref(value):
        url = storage.url_for(value["key"], file_name=value["file_name"], content_type=value["content_type"],
                              expires_s=expires_s, base_url=base_url)
        return {"url": url, "content_type": value["content_type"], "file_name": value["file_name"],
                "file_size": value["file_size"]}
    if isinstance(value, dict):
        return {key: render_refs(storage, item, expires_s=expires_s, base_url=base_url) for key, item in value.items()}
    if isinstance(value, list):
        return [render_refs(storage, item, expires_s=expires_s, base_url=base_url) for item in value]
    return value
