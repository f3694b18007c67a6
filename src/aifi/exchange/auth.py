"""API keys: created once, stored hashed, presented as `Authorization: Bearer <key>`."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable

from sqlalchemy import bindparam, select

from aifi.exchange.audit import Actor
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database
from aifi.exchange.errors import ExchangeError, Forbidden
from aifi.exchange.models import ApiKey, Organisation
from aifi.exchange.settings import ExchangeSettings

KEY_PREFIX = "aifi_"
#: Seconds a replica answers a verified key from memory by default (`AIFI_KEY_CACHE_SECONDS`).
#: The bound on a revocation: the replica that revokes a key forgets it at once, every other
#: replica within this time. Short, because a leaked key works for this long after it is
#: revoked; long enough that a busy gateway's or worker's requests need one database lookup
#: per key in that time, not each.
KEY_CACHE_SECONDS = float(ExchangeSettings.model_fields["key_cache_seconds"].default)


class Unauthorised(ExchangeError):
    """Wrong or missing key: the caller learns nothing more than that.

    The access log learns more (:mod:`aifi.exchange.refused_keys`): why (`reason`), which key
    (`key`: a revoked key's `organisation/id`, as its revocation names it; an unknown key's
    fingerprint) and, for a revoked key, whose it was (`holder`). Never the key, nor its
    stored hash.
    """

    status = 401

    def __init__(
        self, reason: str = "no API key", key: str = "none", holder: Actor | None = None
    ) -> None:
        super().__init__("unauthorised")
        self.reason = reason
        self.key = key
        self.holder = holder


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def store_api_key(db: Database, organisation_id: str, key: str, label: str = "") -> int:
    """Store a key's hash for an organisation; its id, as the key listing names it."""
    with db.session() as session:
        row = ApiKey(
            organisation_id=organisation_id,
            key_hash=hash_api_key(key),
            label=label,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return int(row.id)


class KeyCache:
    """Recently verified keys, so a busy worker's every request needs no database lookup.

    Only successes are kept, for `ttl` seconds: a key revoked in the database stops working
    within that time on every replica, and at once on the one that revoked it (`forget`).
    `clock` is the monotonic time the lifetime is measured on (a test moves its own on).
    """

    def __init__(
        self,
        ttl: float = KEY_CACHE_SECONDS,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._known: dict[str, tuple[float, Actor]] = {}
        #: Keys revoked here, until when they are not taken back into the cache.
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Actor | None:
        with self._lock:
            found = self._known.get(key_hash)
        if found is None or found[0] < self._clock():
            return None
        return found[1]

    def put(self, key_hash: str, actor: Actor) -> None:
        if self._ttl <= 0:
            return  # every request's key is looked up
        with self._lock:
            now = self._clock()
            if self._revoked.get(key_hash, now) > now:
                return  # revoked here a moment ago (`forget`)
            if len(self._known) >= self._size:
                self._known.clear()
                self._revoked = {h: t for h, t in self._revoked.items() if t > now}
            self._known[key_hash] = (now + self._ttl, actor)

    def forget(self, key_hash: str) -> None:
        """Answer for the key no more: it was revoked here. For `ttl`, the key is not taken
        back either: a request that read it from the database just before the revocation
        committed would otherwise put it back, and the revoking replica, which says it
        refuses the key from the next request on, would take it for up to `ttl` more."""
        with self._lock:
            self._known.pop(key_hash, None)
            if self._ttl > 0:  # else nothing is ever taken back, nor kept
                self._revoked[key_hash] = self._clock() + self._ttl


def key_hash_of(key: str | None) -> str:
    """The stored form of a presented key, or :class:`Unauthorised` if it cannot be one."""
    if not key or not key.strip():
        raise Unauthorised()
    if not key.strip().startswith(KEY_PREFIX):
        # No fingerprint: what was sent may be another system's password, not a random key.
        raise Unauthorised("not an AIFI API key", "not-an-api-key")
    return hash_api_key(key.strip())


def key_fingerprint(key_hash: str) -> str:
    """What the access log names an unknown key by: the first 8 hex digits of its SHA-256
    (`printf %s KEY | sha256sum | cut -c1-8`). Enough to tell one probing key from another,
    or to match a key thought leaked; of a 256-bit random key, 32 bits give nothing to use."""
    return f"sha256:{key_hash[:8]}"


#: A key's organisation, and whether it is revoked (built once: it runs at each cache miss).
_KEY = (
    select(Organisation.id, Organisation.kind, ApiKey.id.label("key_id"), ApiKey.revoked_at)
    .join(ApiKey, ApiKey.organisation_id == Organisation.id)
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


def verified_actor(db: Database, key_hash: str, cache: KeyCache | None = None) -> Actor:
    """The organisation whose live key has this hash (cached for a few seconds).

    A revoked key is read by the same lookup as a live one, so that its refusal can name the
    key and its organisation in the access log without a second query.
    """
    if cache is not None and (known := cache.get(key_hash)) is not None:
        return known
    with db.session() as session:
        row = session.execute(_KEY, {"key_hash": key_hash}).first()
    if row is None:
        raise Unauthorised("unknown API key", key_fingerprint(key_hash))
    actor = Actor(organisation_id=row.id, role=row.kind)
    if row.revoked_at is not None:
        raise Unauthorised(
            f"revoked API key {row.key_id} of organisation {row.id!r}",
            f"{row.id}/{row.key_id}",
            actor,
        )
    if cache is not None:
        cache.put(key_hash, actor)
    return actor


def require_role(actor: Actor, *roles: str) -> None:
    if actor.role not in roles:
        raise Forbidden(f"this action is for {' or '.join(roles)} organisations, not {actor.role}")
