"""Local filesystem storage (the embedded default): files under one root, served by the gateway.

Writes go through a temporary file in the target's folder and `os.replace`, so a reader never sees half a
file and a crash leaves at worst a stray ``.name.tmp-…`` file. Download URLs point at the gateway's
``GET /v1/files/{key}`` route and carry an expiry and an HMAC-SHA256 signature:

    {base_url}/v1/files/{key}?expires=<unix seconds>&name=<file name>&type=<content type>&sig=<hex>

The signature covers the key, the expiry, the download file name and the content type, so none of them
can be changed without the secret. The gateway checks it with `verify_signed_path` (or
`verify_signed_query`) and then streams `LocalStorage.open(key)` with the signed name and type.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from ltx2trainer.errors import InfraError
from ltx2trainer.storage.base import Storage, StoredObject, _check_expires_s, check_key, check_prefix

FILES_ROUTE = "/v1/files/"


def sign_path(key: str, expires: int, name: str, content_type: str, secret: str) -> str:
    """Hex HMAC-SHA256 of a signed download: key, expiry (unix seconds), file name and content type.

    Each field is percent-encoded before joining with '|', so no two field tuples sign the same message.
    """
    message = "|".join(quote(part, safe="") for part in (key, str(int(expires)), name, content_type))
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_signed_path(
    key: str,
    expires: int | str,
    name: str,
    sig: str,
    secret: str,
    now: float | None = None,
    *,
    content_type: str = "",
) -> bool:
    """Whether a signed download URL's parameters are genuine and not yet expired.

    `expires` is the URL's unix time in seconds (the URL is valid while `now` < `expires`); `now` defaults
    to the current time. `content_type` is the URL's ``type`` parameter: pass it, since the signature
    covers it. The signature is compared in constant time; an unsafe key or a malformed expiry is rejected.
    """
    try:
        expires_at = int(expires)
        check_key(key)
    except (TypeError, ValueError):
        return False
    if (time.time() if now is None else now) >= expires_at:
        return False
    expected = sign_path(key, expires_at, name, content_type, secret)
    return hmac.compare_digest(expected.encode("ascii"), str(sig).encode("utf-8"))


def verify_signed_query(key: str, query: Mapping[str, str], secret: str, *, now: float | None = None) -> bool:
    """`verify_signed_path` reading ``expires``, ``name``, ``type`` and ``sig`` from a URL's query mapping.

    For the gateway route: ``verify_signed_query(key, request.query_params, secret)``; on success serve
    the file with ``Content-Type: query["type"]`` and `content_disposition(query["name"])`.
    """
    fields = ("expires", "name", "type", "sig")
    if any(field not in query for field in fields):
        return False
    return verify_signed_path(
        key, query["expires"], query["name"], query["sig"], secret, now, content_type=query["type"]
    )


class LocalStorage(Storage):
    """Objects as files under `root`; download URLs signed with `secret` and served by the gateway.

    `clock` returns the current unix time in seconds (injected by tests).
    """

    def __init__(self, root: Path, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("LocalStorage needs a non-empty secret to sign download URLs")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def resolve(self, key: str) -> Path:
        """The path of `key` under the root; ValueError if the key is unsafe or a symlink leads outside."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} leads outside the storage root")
        return path

    def _existing(self, key: str) -> Path:
        path = self.resolve(key)
        if not path.is_file():
            raise FileNotFoundError(f"no stored object {key!r} in {self.root}")
        return path

    def _write(self, key: str, write: Callable[[Path], None]) -> Path:
        target = self.resolve(key)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, target)
        except OSError as exc:  # disk full, permissions, read-only volume: the platform's fault
            tmp.unlink(missing_ok=True)
            raise InfraError(f"local storage could not write {key!r} under {self.root}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        """Copy the file at `path` to `key` (temp file + rename). FileNotFoundError if `path` is missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot store {key!r}: {path} is not a file")
        target = self._write(key, lambda tmp: shutil.copyfile(path, tmp))
        return StoredObject(key=key, size=target.stat().st_size, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Write `data` to `key` (temp file + rename)."""
        self._write(key, lambda tmp: tmp.write_bytes(data))
        return StoredObject(key=key, size=len(data), content_type=content_type)

    def exists(self, key: str) -> bool:
        return self.resolve(key).is_file()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def open(self, key: str) -> BinaryIO:
        return self._existing(key).open("rb")

    def delete_prefix(self, prefix: str) -> int:
        """Delete the files whose key starts with `prefix`, and the folders this leaves empty."""
        check_prefix(prefix)
        parent_key = prefix.rpartition("/")[0]
        base = self.resolve(parent_key) if parent_key else self.root
        if not base.is_dir():
            return 0
        deleted = 0
        for dirpath, _dirnames, filenames in os.walk(base, topdown=False):  # children before their folder
            folder = Path(dirpath)
            folder_key = "" if folder == self.root else folder.relative_to(self.root).as_posix() + "/"
            for name in filenames:
                if f"{folder_key}{name}".startswith(prefix):
                    (folder / name).unlink(missing_ok=True)
                    deleted += 1
            if folder_key and folder_key.startswith(prefix) and not any(folder.iterdir()):
                folder.rmdir()
        return deleted

    def url_for(self, key: str, *, file_name: str, content_type: str, expires_s: int, base_url: str) -> str:
        """A gateway URL for `key` signed for `expires_s` seconds (see the module docstring)."""
        check_key(key)
        if not base_url:
            raise ValueError("local storage URLs need the gateway's public base URL (base_url)")
        expires = int(self._clock()) + _check_expires_s(expires_s)
        query = urlencode(
            {
                "expires": str(expires),
                "name": file_name,
                "type": content_type,
                "sig": sign_path(key, expires, file_name, content_type, self._secret),
            },
            quote_via=quote,
        )
        return f"{base_url.rstrip('/')}{FILES_ROUTE}{quote(key, safe='/')}?{query}"
