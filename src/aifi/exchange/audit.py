"""The append-only access log: each entry carries the hash of the one before it.

Editing, removing or re-ordering an entry breaks the chain from that point on, which
`verify_chain` finds. Fields follow NEN 7513 (who, organisation, role, action, object,
patient pseudonym, time, outcome).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, text

from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database
from aifi.exchange.models import AuditEntry

GENESIS = "0" * 64
#: Advisory-lock key that makes appends to the chain one at a time across all replicas.
CHAIN_LOCK = 0x41494649_0002


def entry_digest(entry: AuditEntry) -> str:
    body = {
        "at": as_utc(entry.at).isoformat(),
        "organisation": entry.organisation_id,
        "role": entry.role,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "patient": entry.patient_pseudonym,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "prev": entry.prev_hash,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Actor:
    organisation_id: str
    role: str


class AuditLog:
    """Appends to the chain one at a time.

    In one process a lock is enough; with replicas on PostgreSQL each append also takes a
    transaction-scoped advisory lock before it reads the chain's head, so two replicas never
    chain two entries to the same predecessor.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()

    def record(
        self,
        actor: Actor,
        action: str,
        object_type: str,
        object_id: str,
        *,
        outcome: str = "success",
        patient_pseudonym: str = "",
        detail: str = "",
    ) -> None:
        """Append one entry in its own transaction, chained to the newest one."""
        with self._lock, self._db.session() as session:
            if self._db.is_postgresql:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
            last = session.scalars(
                select(AuditEntry.entry_hash).order_by(AuditEntry.id.desc()).limit(1)
            ).first()
            entry = AuditEntry(
                at=utcnow(),
                organisation_id=actor.organisation_id,
                role=actor.role,
                action=action,
                object_type=object_type,
                object_id=object_id,
                patient_pseudonym=patient_pseudonym,
                outcome=outcome,
                detail=detail[:2000],
                prev_hash=last or GENESIS,
                entry_hash="",
            )
            entry.entry_hash = entry_digest(entry)
            session.add(entry)


def verify_chain(entries: Iterable[AuditEntry]) -> list[str]:
    """Problems found in the chain, in order; empty when every link holds."""
    problems: list[str] = []
    expected_prev = GENESIS
    for entry in entries:
        if entry.prev_hash != expected_prev:
            problems.append(
                f"entry {entry.id}: previous hash does not match (removed or re-ordered)"
            )
        if entry_digest(entry) != entry.entry_hash:
            problems.append(f"entry {entry.id}: content does not match its hash (edited)")
        expected_prev = entry.entry_hash
    return problems
