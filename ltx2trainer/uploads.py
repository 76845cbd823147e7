"""Inline training data (a `data:` URL in the request) is stored once, as a file, and referred to by a short
reference everywhere else.

A 50 MB `data:` URL used to live in the job row and come back in every status poll, list, `config.json` and
log. The gateway now decodes it at submit, puts the bytes in object storage under the owner's prefix, keyed by
their SHA-256 (the same upload twice is stored once), and keeps the reference

    upload:sha256=<64 hex>;size=<bytes>

in the job's input instead. The worker reads the file back from storage (`pipeline/run.py`). References are
accepted only from the gateway itself (schema context `allow_uploads`), never from a user, so a user cannot
point a job at anything but their own upload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse

from ltx2trainer.errors import UserInputError

SCHEME = "upload:"
_REFERENCE = re.compile(r"^upload:sha256=(?P<sha256>[0-9a-f]{64});size=(?P<size>\d+)$")


def decode_data_url(url: str) -> tuple[bytes, str]:
    """(bytes, media type) of a `data:` URL; `UserInputError` naming what is malformed."""
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:"):
        raise UserInputError("training_data_url is a malformed data: URL (no comma before the payload)",
                             code="bad_url")
    params = header[5:].split(";")
    media_type = params[0] or "application/octet-stream"
    try:
        if "base64" in (p.strip().lower() for p in params[1:]):
            return base64.b64decode(payload, validate=True), media_type
        return urllib.parse.unquote_to_bytes(payload), media_type
    except (binascii.Error, ValueError) as exc:
        raise UserInputError(f"training_data_url is a malformed data: URL ({exc})", code="bad_url") from None


def reference(data: bytes) -> str:
    return f"{SCHEME}sha256={hashlib.sha256(data).hexdigest()};size={len(data)}"


def parse_reference(value: str) -> tuple[str, int] | None:
    """(sha256, size) of an upload reference, or None when `value` is not one."""
    match = _REFERENCE.match(value)
    return (match["sha256"], int(match["size"])) if match else None


def storage_key(owner_prefix: str, sha256: str) -> str:
    """Where an owner's upload lives: beside their jobs (`owner_prefix` is `storage.owner_prefix(owner)`)."""
    return f"{owner_prefix}uploads/{sha256}"


def redact_url(url: str | None) -> str | None:
    """A URL as it may be shown: credentials in it (user:password@) and the values of query parameters that
    sign or authorise it (S3/GCS/Azure signatures, tokens, keys) replaced by "REDACTED"."""
    if not url or url.startswith(("data:", SCHEME)):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode([(name, "REDACTED" if _is_secret(name) else value) for name, value in pairs],
                                       safe="REDACTED")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def displayed_input(training_input: dict) -> dict:
    """A job's input as it is shown (envelopes, lists, config.json): its URLs redacted (`redact_url`)."""
    shown = dict(training_input)
    for name in ("training_data_url", "webhook_url"):
        if shown.get(name):
            shown[name] = redact_url(shown[name])
    if shown.get("validation"):
        shown["validation"] = [{**entry, "image_url": redact_url(entry.get("image_url"))}
                               if isinstance(entry, dict) and entry.get("image_url") else entry
                               for entry in shown["validation"]]
    return shown


_SECRET_NAMES = re.compile(r"(signature|sig|token|secret|password|passwd|credential|key|auth|session|^se$|^sp$|"
                           r"^sv$|^st$|^sr$|^skoid$|^sktid$|^skt$|^ske$|^sks$|^skv$)", re.IGNORECASE)


def _is_secret(name: str) -> bool:
    return bool(_SECRET_NAMES.search(name))
