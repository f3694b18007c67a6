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
from typing import cast

from sqlalchemy import Table, insert, select, text

from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database
from aifi.exchange.models import AuditEntry

GENESIS = "0" * 64
_TABLE = cast(Table, AuditEntry.__table__)
_COLUMNS = [column.name for column in _TABLE.columns if column.name != "id"]
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
        self._changed = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

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
        """Append one entry, chained to the newest one; returns once it is committed.

        Appends are group-committed: while one thread writes, the entries of others queue up,
        and the next writer takes them all in one transaction, in the order they came. The
        chain needs its appends in series; this keeps them in series without one transaction
        (and one wait) per request.
        """
        item = _Pending(
            AuditEntry(
                at=utcnow(),
                organisation_id=actor.organisation_id,
                role=actor.role,
                action=action,
                object_type=object_type,
                object_id=object_id,
                patient_pseudonym=patient_pseudonym,
                outcome=outcome,
                detail=detail[:2000],
                prev_hash="",
                entry_hash="",
            )
        )
        with self._changed:
            self._queue.append(item)
            while not item.done:
                if self._writing:
                    self._changed.wait()
                    continue
                self._writing = True
                batch, self._queue = self._queue, []
                self._changed.release()
                error: BaseException | None = None
                try:
                    self._append(batch)
                except BaseException as exc:  # every waiter of this batch learns it failed
                    error = exc
                finally:
                    self._changed.acquire()
                    self._writing = False
                    for pending in batch:
                        pending.done, pending.error = True, error
                    self._changed.notify_all()
        if item.error is not None:
            raise item.error

    def _append(self, batch: list[_Pending]) -> None:
        with self._db.session() as session:
            if self._db.is_postgresql:
                # Replicas share the chain: one appends at a time, across processes.
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
            last = session.scalars(
                select(AuditEntry.entry_hash).order_by(AuditEntry.id.desc()).limit(1)
            ).first()
            previous = last or GENESIS
            rows = []
            for pending in batch:
                entry = pending.entry
                entry.prev_hash = previous
                entry.entry_hash = entry_digest(entry)
                previous = entry.entry_hash
                rows.append({column: getattr(entry, column) for column in _COLUMNS})
            # One executemany, row by row in order: ids follow the chain.
            session.execute(insert(_TABLE), rows)


@dataclass
class _Pending:
    entry: AuditEntry
    done: bool = False
    error: BaseException | None = None


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
