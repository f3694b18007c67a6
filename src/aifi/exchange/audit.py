"""The append-only access log: each entry carries the hash of the one before it.

Editing, removing or re-ordering a linked entry breaks the chain from that point on, which
`verify_chain` finds. Fields follow NEN 7513 (who, organisation, role, action, object,
patient pseudonym, time, outcome).

An entry is written in two steps. It is stored with the change it records, in the same
transaction (`record_in`: a transaction's entries go in one INSERT just before it commits) — a
read's entry before the read answers (`reading`: on PostgreSQL by the read's own session,
which runs in autocommit; on SQLite just after it), and a refusal in a short transaction of
its own (`record`) — and so it is never lost, nor left behind by a change that rolled back. Moments
later `chain` links the entries stored since the last round into the hash chain, one replica
at a time. Requests thus never wait for each other (or for other replicas) to extend the
chain; an entry is tamper-evident from the round that links it, within a second of its write.

The chain cannot show its newest entries cut off by whoever can write the database:
:class:`AuditAnchors` puts the newest entry's position and hash in each replica's journal,
and `check_chain` holds the chain to anchors given back from there. Old entries can move to
archive files in the blob store with the chain unbroken (:mod:`aifi.exchange.audit_archive`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Select,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from aifi.chain_anchor import Anchor
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import CHAIN_LOCK, Database, execute_core
from aifi.exchange.errors import ExchangeError
from aifi.exchange.models import AuditArchive, AuditEntry

GENESIS = "0" * 64
#: Seconds between looks at the chain's newest anchor, for the journal.
ANCHOR_SECONDS = 600.0

log = logging.getLogger(__name__)
_TABLE = cast(Table, AuditEntry.__table__)
#: Built once: it runs at nearly every commit.
_STORE_ENTRIES = insert(_TABLE)


def linked_digest(entry: Any, prev_hash: str) -> str:
    """The hash of `entry` (an entry, or a row with its columns) linked after `prev_hash`."""
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
        "prev": prev_hash,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Actor:
    organisation_id: str
    role: str


#: Who the audit log names for what the exchange does on its own policies (retention, jobs
#: left unfinished).
SYSTEM = Actor(organisation_id="exchange", role="system")


class AuditLog:
    """Stores entries at once and links them into the chain in rounds (see the module)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        if not event.contains(db.sessions, "before_commit", _store_pending):
            event.listen(db.sessions, "before_commit", _store_pending)
            event.listen(db.sessions, "after_rollback", _drop_pending)
        self._changed = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        self._chaining = threading.Lock()

    def record_in(
        self,
        session: Session,
        actor: Actor,
        action: str,
        object_type: str,
        object_id: str,
        *,
        outcome: str = "success",
        patient_pseudonym: str = "",
        detail: str = "",
    ) -> None:
        """Store an entry in the caller's transaction: it commits, or rolls back, with the
        change it records.

        The transaction's entries are inserted together just before it commits: a job that
        opens, or a result that completes its job, costs one INSERT for its two entries.
        """
        row = _row(actor, action, object_type, object_id, outcome, patient_pseudonym, detail)
        session.info.setdefault(_PENDING, []).append(row)

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
        """Store an entry in a transaction of its own; returns once it is committed.

        For refusals, which have no transaction to join. Stores are group-committed: while
        one thread writes, the entries of others queue up, and the next writer takes them all
        in one transaction.
        """
        self._store(
            [_row(actor, action, object_type, object_id, outcome, patient_pseudonym, detail)]
        )

    def refused(
        self,
        actor: Actor,
        action: str,
        object_type: str,
        object_id: str,
        exc: ExchangeError,
        *,
        patient_pseudonym: str = "",
    ) -> None:
        """Store the refusal `exc` of an access, in a transaction of its own (the refused
        one's is rolled back), and mark it stored."""
        self.record(
            actor,
            action,
            object_type,
            object_id,
            outcome="refused",
            patient_pseudonym=patient_pseudonym,
            detail=exc.message,
        )
        exc.audited = True

    @contextmanager
    def reading(
        self, actor: Actor, action: str, object_type: str, object_id: str
    ) -> Iterator[Read]:
        """A read in a session of its own, audited however it ends.

        The body reads in `Read.session` and calls `Read.succeeded` for what it gave out; a
        refusal (an :class:`ExchangeError`) is stored as such and raised on. On PostgreSQL
        the read runs in autocommit (:meth:`Database.reading`) and its session stores its
        entries, one INSERT, before it answers: no transaction of their own, and no BEGIN or
        COMMIT round trips. On SQLite any insert would make the read wait for the one
        writer, so its entries are group-committed just after it (`record`).
        """
        joins = self._db.is_postgresql
        try:
            with self._db.reading() as session:
                read = Read(session, actor, action, object_type, object_id)
                yield read
                if joins and read.rows:
                    session.info.setdefault(_PENDING, []).extend(read.rows)
        except ExchangeError as exc:
            if exc.status < 500:  # a store that is down is the exchange's trouble, not a refusal
                self.refused(actor, action, object_type, object_id, exc)
            raise
        if not joins and read.rows:
            self._store(read.rows)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` in a group-committed transaction; returns once they are committed."""
        item = _Pending(rows)
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
                    with self._db.session() as session:
                        rows = [row for pending in batch for row in pending.rows]
                        execute_core(session, _STORE_ENTRIES, rows)
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

    def chain(self, limit: int = 10_000) -> int:
        """Link the entries stored since the last round into the chain; how many were linked.

        One round at a time: in this process by a lock, across replicas by a
        transaction-scoped advisory lock. A replica that finds another one linking leaves the
        round to it. Entries are linked in the order they became visible, oldest id first.
        """
        with self._chaining, self._db.session() as session:
            if (
                self._db.is_postgresql
                and not session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK}
                ).scalar()
            ):
                return 0
            head = session.execute(_HEAD).first()
            # The newest linked entry is never archived; were the table's all gone, the
            # chain would go on from the archived runs' end, not start again.
            position, previous = (
                (int(head[0] or 0), str(head[1])) if head else archived_head(session)
            )
            links = []
            for entry in session.execute(_UNLINKED.limit(limit)):
                position += 1
                digest = linked_digest(entry, previous)
                links.append({"entry": entry.id, "seq": position, "prev": previous, "hash": digest})
                previous = digest
            if links and self._db.is_postgresql:
                execute_core(session, _LINK_ALL, _columns_of(links))
            elif links:
                execute_core(session, _LINK, links)
            return len(links)


#: Where a session keeps the entries its transaction stores when it commits.
_PENDING = "aifi.audit.pending"


def _store_pending(session: Session) -> None:
    """Before a transaction commits: its entries, in one INSERT."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        execute_core(session, _STORE_ENTRIES, rows)


def _drop_pending(session: Session, _transaction: Any = None) -> None:
    """A transaction that rolled back stores none of its entries."""
    session.info.pop(_PENDING, None)


def _row(
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    outcome: str,
    patient_pseudonym: str,
    detail: str,
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "organisation_id": _fit(actor.organisation_id, "organisation_id"),
        "role": _fit(actor.role, "role"),
        "action": _fit(action, "action"),
        "object_type": _fit(object_type, "object_type"),
        "object_id": _fit(object_id, "object_id"),
        "patient_pseudonym": _fit(patient_pseudonym, "patient_pseudonym"),
        "outcome": _fit(outcome, "outcome"),
        "detail": detail[:2000],
        "prev_hash": "",
        "entry_hash": "",
        "chain_seq": None,
    }


#: The longest text each column of an entry holds (PostgreSQL refuses longer; SQLite not).
_LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in AuditEntry.__table__.columns
    if isinstance(column.type, String) and column.type.length is not None
}


def _fit(value: str, column: str) -> str:
    """`value` cut to its column's length, the cut marked with "…".

    An entry's text comes partly from callers (a 200-character result name after its job's
    id; a login form's user name): one too long for its column would fail on PostgreSQL,
    and with it every entry group-committed beside it, changes already made among them.
    """
    longest = _LENGTHS[column]
    return value if len(value) <= longest else value[: longest - 1] + "…"


_HEAD = (
    select(AuditEntry.chain_seq, AuditEntry.entry_hash)
    .where(AuditEntry.chain_seq.is_not(None))
    .order_by(AuditEntry.chain_seq.desc())
    .limit(1)
)
#: The columns a link hashes, of the entries not linked yet (rows, not entries: a busy exchange
#: links hundreds a second, and loading each as an object cost more than hashing it).
_UNLINKED = (
    select(
        AuditEntry.id,
        AuditEntry.at,
        AuditEntry.organisation_id,
        AuditEntry.role,
        AuditEntry.action,
        AuditEntry.object_type,
        AuditEntry.object_id,
        AuditEntry.patient_pseudonym,
        AuditEntry.outcome,
        AuditEntry.detail,
    )
    .where(AuditEntry.chain_seq.is_(None))
    .order_by(AuditEntry.id)
)
_ARCHIVED_HEAD = (
    select(AuditArchive.last_seq, AuditArchive.last_hash)
    .order_by(AuditArchive.last_seq.desc())
    .limit(1)
)
_LINK = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("entry"))
    .values(chain_seq=bindparam("seq"), prev_hash=bindparam("prev"), entry_hash=bindparam("hash"))
)
#: PostgreSQL: a round's links in one statement, its columns as arrays. A round links a few
#: hundred entries; as many UPDATEs, each a statement the server plans and runs, were a fifth
#: of the statements a small job costs it.
_LINK_ALL = text(
    "UPDATE audit_log SET chain_seq = links.seq, prev_hash = links.prev,"
    " entry_hash = links.hash"
    " FROM unnest(CAST(:entry AS integer[]), CAST(:seq AS bigint[]), CAST(:prev AS text[]),"
    " CAST(:hash AS text[])) AS links (entry, seq, prev, hash)"
    " WHERE audit_log.id = links.entry"
)


def _columns_of(links: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The links as one list per column, for :data:`_LINK_ALL`."""
    return {name: [link[name] for link in links] for name in ("entry", "seq", "prev", "hash")}


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    done: bool = False
    error: BaseException | None = None


@dataclass
class Read:
    """An audited read in progress (see `AuditLog.reading`): its session, and the entries
    its success stores."""

    session: Session
    actor: Actor
    action: str
    object_type: str
    object_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def succeeded(self, *, patient_pseudonym: str = "", object_id: str | None = None) -> None:
        """The read gave out `object_id` (by default the object it was opened for)."""
        self.rows.append(
            _row(
                self.actor,
                self.action,
                self.object_type,
                object_id or self.object_id,
                "success",
                patient_pseudonym,
                "",
            )
        )


def newest_anchor(db: Database) -> Anchor | None:
    """The newest linked entry's position and hash; None before the first is linked."""
    with db.session() as session:
        head = session.execute(_HEAD).first()
    return Anchor(int(head[0] or 0), str(head[1])) if head else None


class AuditAnchors:
    """Puts the chain's newest anchor in this replica's journal when it moved.

    The journal goes to the operator's log collector, out of reach of whoever can write the
    database; `aifi audit verify --anchor` then shows entries cut off the chain's end or
    rewritten with fresh hashes, which the chain alone cannot.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._written: Anchor | None = None

    def write(self) -> Anchor | None:
        anchor = newest_anchor(self._db)
        if anchor is not None and anchor != self._written:
            log.info(
                "audit chain anchor %s (check the chain against it: aifi audit verify "
                "--anchor %s)",
                anchor, anchor,
            )  # fmt: skip
            self._written = anchor
        return anchor


def in_chain_order() -> Select[AuditEntry]:
    """The linked entries, in chain order: what `verify_chain` checks."""
    return (
        select(AuditEntry).where(AuditEntry.chain_seq.is_not(None)).order_by(AuditEntry.chain_seq)
    )


def linked_count(session: Session) -> int:
    """Entries linked into the chain (what `check_chain` will read)."""
    return int(
        session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.chain_seq.is_not(None)))
        or 0
    )


@dataclass(frozen=True)
class Unlinked:
    """The entries stored but not linked into the chain yet: normally the last second's."""

    entries: int
    #: When the oldest of them was written, if any.
    oldest: datetime | None


def unlinked(session: Session) -> Unlinked:
    """Read through the chain's index (its position is null until linked): a few rows."""
    entries, oldest = session.execute(
        select(func.count(AuditEntry.id), func.min(AuditEntry.at)).where(
            AuditEntry.chain_seq.is_(None)
        )
    ).one()
    return Unlinked(int(entries or 0), as_utc(oldest) if oldest is not None else None)


def unlinked_count(session: Session) -> int:
    """Entries stored but not linked yet (normally those of the last second)."""
    return unlinked(session).entries


def verify_chain(entries: Iterable[Any]) -> list[str]:
    """Problems found in the chain, in order; empty when every link holds."""
    walk = ChainWalk()
    for entry in entries:
        walk.step(entry)
    return walk.problems


#: Entries read at a time when checking the stored chain.
CHECK_BATCH = 10_000
#: Problems listed at most (all are counted): a log broken early is broken all along.
PROBLEMS_LISTED = 1000


@dataclass
class ChainCheck:
    entries: int
    problems: list[str]
    problem_count: int
    #: Runs moved to the blob store (`aifi.exchange.audit_archive`) and their entries: the
    #: chain was checked across them by their records; `entries` counts the table's.
    archives: int = 0
    archived_entries: int = 0
    #: Anchors that fall inside archived runs: checked only by reading the files.
    anchors_in_archives: list[Anchor] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


class ChainWalk:
    """Walks entries in chain order, keeping only the hash the next entry must carry (and,
    given `expected_seq`, the position it must hold)."""

    def __init__(
        self,
        expected_prev: str = GENESIS,
        expected_seq: int | None = None,
        anchors: Iterable[Anchor] = (),
    ) -> None:
        self.expected_prev = expected_prev
        self.expected_seq = expected_seq
        self.entries = 0
        self.problems: list[str] = []
        self.problem_count = 0
        #: Anchors not met yet, by position: each must be passed with its hash.
        self.anchors = {anchor.seq: anchor for anchor in anchors}
        self.anchors_in_archives: list[Anchor] = []

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def step(self, entry: Any) -> None:
        if self.expected_seq is not None:
            if entry.chain_seq != self.expected_seq:
                self.problem(
                    f"entry {entry.id}: at position {entry.chain_seq}, expected "
                    f"{self.expected_seq} (removed or re-ordered)"
                )
            self.expected_seq = entry.chain_seq + 1
        if entry.prev_hash != self.expected_prev:
            self.problem(f"entry {entry.id}: previous hash does not match (removed or re-ordered)")
        if linked_digest(entry, entry.prev_hash) != entry.entry_hash:
            self.problem(f"entry {entry.id}: content does not match its hash (edited)")
        anchor = self.anchors.pop(entry.chain_seq, None)
        if anchor is not None and anchor.entry_hash != entry.entry_hash:
            self.problem(
                f"entry {entry.id}: not the entry anchored as {anchor} (it, or one before it, "
                "was replaced)"
            )
        self.expected_prev = entry.entry_hash
        self.entries += 1

    def skip_archived(self, archive: Any, position: int) -> None:
        """Go past an archived run by its record: it must start at `position`, after the
        hash the chain stands at."""
        if archive.first_seq != position or archive.first_prev_hash != self.expected_prev:
            self.problem(
                f"archive {archive.blob_key}: does not follow the run before it (an archive "
                "record, or entries before it, removed or changed)"
            )
        if archive.last_seq - archive.first_seq + 1 != archive.entries:
            self.problem(f"archive {archive.blob_key}: its record does not add up")
        for seq in [seq for seq in self.anchors if archive.first_seq <= seq <= archive.last_seq]:
            anchor = self.anchors.pop(seq)
            if seq != archive.last_seq:
                self.anchors_in_archives.append(anchor)  # its file holds it
            elif anchor.entry_hash != archive.last_hash:
                self.problem(f"archive {archive.blob_key}: does not end as anchored ({anchor})")
        self.expected_prev = archive.last_hash

    def anchors_not_met(self, last_seq: int, where: str = "the log") -> None:
        """Every anchor not passed is a problem: its entry was removed, or cut off with the
        entries after `last_seq`."""
        for seq, anchor in sorted(self.anchors.items()):
            cut = f"entries after {last_seq} were removed" if seq > last_seq else "removed"
            self.problem(f"position {seq}: anchored as {anchor} but not in {where} ({cut})")
        self.anchors.clear()

    def problem(self, what: str) -> None:
        self.problem_count += 1
        if len(self.problems) < PROBLEMS_LISTED:
            self.problems.append(what)

    def absorb(self, other: ChainWalk, prefix: str) -> None:
        """Take `other`'s problems as this walk's, each after `prefix`."""
        for listed in other.problems:
            self.problem(prefix + listed)
        self.problem_count += other.problem_count - len(other.problems)


def archived_head(session: Session) -> tuple[int, str]:
    """The chain position and hash the archived runs end with; (0, GENESIS) with none."""
    row = session.execute(_ARCHIVED_HEAD).first()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def check_chain(
    db: Database,
    on_batch: Callable[[int], object] | None = None,
    anchors: Iterable[Anchor] = (),
) -> ChainCheck:
    """Verify the stored chain a batch at a time, in chain order.

    The log gains about two entries for every instance sent (its upload and the vendor's
    read), so it runs to billions of entries nationally: holding them all to verify them, as
    before, would exhaust any replica. Only the last hash is carried from batch to batch;
    `on_batch(n)` hears of each batch (a progress bar). Runs already archived are passed by
    their records, which must follow one another, and the table's first entry must link to
    the last archived one (`audit_archive.verify_archives` reads the archived files).

    Each of `anchors` (from the replicas' journals, :class:`AuditAnchors`) must be met with
    its hash: that shows entries cut off the end, or rewritten with fresh hashes, which the
    chain alone cannot. One inside an archived run is left to the files' check.
    """
    walk = ChainWalk(anchors=anchors)
    last = 0
    with db.session() as session:
        runs = list(session.scalars(select(AuditArchive).order_by(AuditArchive.first_seq)))
    for archive in runs:
        walk.skip_archived(archive, last + 1)
        last = archive.last_seq
    while True:
        with db.session() as session:
            rows = session.execute(
                select(*_TABLE.c)
                .where(AuditEntry.chain_seq > last)
                .order_by(AuditEntry.chain_seq)
                .limit(CHECK_BATCH)
            ).all()
        if not rows:
            walk.anchors_not_met(last)
            return ChainCheck(
                walk.entries,
                walk.problems,
                walk.problem_count,
                archives=len(runs),
                archived_entries=sum(archive.entries for archive in runs),
                anchors_in_archives=walk.anchors_in_archives,
            )
        for row in rows:
            walk.step(row)
        last = rows[-1].chain_seq
        if on_batch is not None:
            on_batch(len(rows))
