"""API keys: created once, stored hashed, presented as `Authorization: Bearer <key>`."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from aifi.exchange.audit import Actor
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database
from aifi.exchange.errors import ExchangeError, Forbidden
from aifi.exchange.models import ApiKey, Organisation

KEY_PREFIX = "aifi_"


class Unauthorised(ExchangeError):
    """Wrong or missing key: the caller learns nothing more than that."""

    status = 401

    def __init__(self) -> None:
        super().__init__("unauthorised")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def store_api_key(db: Database, organisation_id: str, key: str, label: str = "") -> None:
    with db.session() as session:
        session.add(
            ApiKey(
                organisation_id=organisation_id,
                key_hash=hash_api_key(key),
                label=label,
                created_at=utcnow(),
            )
        )


def authenticate(db: Database, authorization: str | None) -> Actor:
    """The organisation behind a bearer key, or :class:`Unauthorised`."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorised()
    key = authorization.removeprefix("Bearer ").strip()
    if not key.startswith(KEY_PREFIX):
        raise Unauthorised()
    with db.session() as session:
        row = session.execute(
            select(Organisation.id, Organisation.kind)
            .join(ApiKey, ApiKey.organisation_id == Organisation.id)
            .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
        ).first()
    if row is None:
        raise Unauthorised()
    return Actor(organisation_id=row.id, role=row.kind)


def require_role(actor: Actor, *roles: str) -> None:
    if actor.role not in roles:
        raise Forbidden(f"this action is for {' or '.join(roles)} organisations, not {actor.role}")
