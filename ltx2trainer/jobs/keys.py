"""API keys: `<key id>:<secret>`, sent as `Authorization: Key …` (the hosted API's form) or `Bearer …`.

Only a SHA-256 of the secret is stored. The secrets are 256-bit random strings, so a fast hash is enough
(slow password hashes defend low-entropy secrets); comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from ltx2trainer.jobs.db import Database, utcnow
from ltx2trainer.jobs.models import ApiKeyRow

KEY_ID_PREFIX = "key_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's owner (the account every record belongs to) and whether it is an admin."""

    owner: str
    key_id: str
    is_admin: bool = False


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    owner: str
    token: str  # "<key id>:<secret>", shown once


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, owner: str, *, name: str = "", is_admin: bool = False) -> CreatedKey:
    owner = owner.strip()
    if not owner:
        raise ValueError("a key needs an owner")
    key_id = KEY_ID_PREFIX + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with db.session() as session:
        session.add(ApiKeyRow(id=key_id, owner=owner, name=name, secret_hash=_hash(secret), is_admin=is_admin))
    return CreatedKey(key_id=key_id, owner=owner, token=f"{key_id}:{secret}")


def list_keys(db: Database, owner: str | None = None) -> list[ApiKeyRow]:
    with db.session() as session:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if owner is not None:
            query = query.where(ApiKeyRow.owner == owner)
        return list(session.scalars(query))


def revoke_key(db: Database, key_id: str) -> bool:
    """Revoke a key (idempotent); False if there is no such key."""
    with db.session() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return True


def authenticate(db: Database, authorization: str | None) -> Principal | None:
    """The principal of an `Authorization: Key id:secret` / `Bearer id:secret` header, or None."""
    token = parse_authorization(authorization)
    if token is None or ":" not in token:
        return None
    key_id, secret = token.split(":", 1)
    with db.session() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _hash(secret)):
            return None
        return Principal(owner=row.owner, key_id=row.id, is_admin=row.is_admin)


def parse_authorization(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("key", "bearer") or not value.strip():
        return None
    return value.strip()
