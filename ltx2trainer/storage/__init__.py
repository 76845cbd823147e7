"""Where job outputs live: the local filesystem (embedded default) or S3, chosen by `LTX2T_STORAGE_URL`.

storage = get_storage(settings)
prefix = job_prefix(owner, job_id)
storage.put_file(prefix + "lora.safetensors", path, "application/octet-stream")
storage.file_object(prefix + "lora.safetensors", file_name="lora.safetensors",
                    content_type="application/octet-stream", expires_s=settings.file_url_ttl_s,
                    base_url=public_base_url)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from ltx2trainer.settings import Settings
from ltx2trainer.storage.base import (
    Storage,
    StoredObject,
    check_key,
    check_prefix,
    content_disposition,
    dataset_prefix,
    is_file_ref,
    job_prefix,
    owner_prefix,
    render_refs,
)
from ltx2trainer.storage.local import LocalStorage, sign_path, verify_signed_path, verify_signed_query
from ltx2trainer.storage.s3 import S3Storage

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StoredObject",
    "check_key",
    "check_prefix",
    "content_disposition",
    "get_storage",
    "is_file_ref",
    "job_prefix",
    "dataset_prefix",
    "owner_prefix",
    "render_refs",
    "sign_path",
    "verify_signed_path",
    "verify_signed_query",
]


def get_storage(settings: Settings) -> Storage:
    """The storage `settings.storage_url` names.

    ``file:///abs/dir`` is a `LocalStorage` in that folder, signing URLs with the ``file_url_secret``;
    ``s3://bucket[/prefix]`` is an `S3Storage` using `s3_endpoint_url` (empty: AWS) and `s3_region`.
    Any other URL is a ValueError naming it and the supported schemes.
    """
    url = settings.storage_url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r} names a remote host; use file:///absolute/folder")
        root = Path(url2pathname(parts.path))  # url2pathname also percent-decodes
        if not parts.path or not root.is_absolute():
            raise ValueError(f"storage URL {url!r} needs an absolute folder: file:///absolute/folder")
        return LocalStorage(root, settings.secret("file_url_secret"))
    if scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket; use s3://bucket/optional/prefix")
        return S3Storage(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=settings.s3_endpoint_url or None,
            public_endpoint_url=settings.s3_public_endpoint_url or None,
            region=settings.s3_region,
        )
    raise ValueError(
        f"storage URL {url!r} has unsupported scheme {parts.scheme!r}; supported: "
        "file:///absolute/folder, s3://bucket/optional/prefix"
    )
