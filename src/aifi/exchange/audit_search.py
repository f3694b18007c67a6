"""Searching the access log wherever its entries are: the table, and the archive files.

A hospital's privacy officer asks the operator who touched a patient's pseudonymised data, or
one job, and when (NEN 7513 asks that it can be answered). Once old entries are archived
(:mod:`aifi.exchange.audit_archive`) `GET /audit` no longer shows them, so the answer reads
the archive files whose period overlaps the question's, streamed, and then the table.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select

from aifi.exchange.audit import Actor, AuditLog, archived_head
from aifi.exchange.audit_archive import archives, read_archive
from aifi.exchange.blobs import BlobStore
from aifi.exchange.clock import as_utc
from aifi.exchange.db import Database
from aifi.exchange.errors import ArchiveMissing
from aifi.exchange.models import AuditEntry

log = logging.getLogger(__name__)

#: Where a found entry is still kept in the database.
IN_DATABASE = "database"
#: Entries read from the table at a time.
SEARCH_BATCH = 5_000
#: How long one page of a search over HTTP may read before it answers with what it found
#: and where to go on: reading archive files runs at about 80,000 entries a second, and a
#: national year holds some 110 million; a balancer or client gives up long before.
PAGE_SECONDS = 20.0
#: Archived entries read between looks at the clock.
CLOCK_EVERY = 1_000


@dataclass(frozen=True)
class AuditQuery:
    """What to look for; every criterion given must hold (none given: every entry)."""

    patient_pseudonym: str | None = None
    organisation_id: str | None = None
    #: An object, and what lies under it: a job's id finds the job, its inputs and results.
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        # Moments compare in UTC whoever built the query (a naive one is taken as UTC).
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None:
                object.__setattr__(self, name, as_utc(moment))

    def matches(self, entry: Any) -> bool:
        at = as_utc(entry.at)
        return (
            (self.patient_pseudonym is None or entry.patient_pseudonym == self.patient_pseudonym)
            and (self.organisation_id is None or entry.organisation_id == self.organisation_id)
            and (self.object_id is None or _under(entry.object_id, self.object_id))
            and (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.patient_pseudonym is not None:
            found.append(AuditEntry.patient_pseudonym == self.patient_pseudonym)
        if self.organisation_id is not None:
            found.append(AuditEntry.organisation_id == self.organisation_id)
        if self.object_id is not None:
            found.append(
                or_(
                    AuditEntry.object_id == self.object_id,
                    AuditEntry.object_id.startswith(self.object_id + "/", autoescape=True),
                )
            )
        if self.since is not None:
            found.append(AuditEntry.at >= self.since)
        if self.until is not None:
            found.append(AuditEntry.at < self.until)
        return found

    def refusal(self) -> str | None:
        """Why this query is not asked as it stands, or None."""
        if not (self.patient_pseudonym or self.organisation_id or self.object_id):
            return "name a patient, an organisation or an object to search for"
        if self.since and self.until and self.since >= self.until:
            return "since must come before until"
        return None

    def describe(self) -> str:
        """The criteria, as the search's own log entry names them (the patient pseudonym goes
        in the entry's own column)."""
        criteria = [
            f"{name}={value}" if name != "patient" else name
            for name, value in (
                ("patient", self.patient_pseudonym),
                ("organisation", self.organisation_id),
                ("object", self.object_id),
                ("since", self.since and self.since.isoformat()),
                ("until", self.until and self.until.isoformat()),
            )
            if value
        ]
        return ", ".join(criteria)

    def overlaps(self, first_at: datetime, last_at: datetime) -> bool:
        """Whether an archive of entries stored from `first_at` to `last_at` may hold any."""
        return (self.since is None or as_utc(last_at) >= self.since) and (
            self.until is None or as_utc(first_at) < self.until
        )


def _under(object_id: str, wanted: str) -> bool:
    return object_id == wanted or object_id.startswith(wanted + "/")


@dataclass
class Scan:
    """How far a search has read: every entry up to chain position `position` has been
    looked at; `stopped` when it ran out of time before the end of the log."""

    position: int = 0
    stopped: bool = False


def search(
    db: Database,
    blobs: BlobStore,
    query: AuditQuery,
    *,
    after_seq: int = 0,
    unlinked: bool = True,
    deadline: float | None = None,
    scan: Scan | None = None,
) -> Generator[tuple[str, Any], None, None]:
    """The entries `query` matches, in chain order from position `after_seq` on, each with
    where it is kept: an archive's file, or :data:`IN_DATABASE`; then, with `unlinked`, the
    entries written too recently to be linked into the chain yet. Streamed: memory does not
    grow with the log.

    An archiving round may move entries out of the table while the search reads it. The
    newest archived position is looked at after every batch read from the table: once it has
    passed the search's position, that batch is set aside and the moved entries are read from
    their file instead, so that none is missed and none is found twice.

    With a `deadline` (a `time.monotonic()` moment) the search stops once it has passed it,
    having read at least :data:`CLOCK_EVERY` archived entries or one table batch since it
    began, so that every call gets further; `scan` tells how far it read.
    """
    scan = scan if scan is not None else Scan()
    scan.position = position = after_seq
    read = 0

    def out_of_time() -> bool:
        scan.stopped = deadline is not None and read > 0 and time.monotonic() >= deadline
        return scan.stopped

    while True:
        for archive in archives(db):
            if archive.last_seq <= position:
                continue
            if query.overlaps(archive.first_at, archive.last_at):
                try:
                    for entry in read_archive(blobs, archive.blob_key):
                        # A page that goes on inside a file reads its start again: at most
                        # one file (ARCHIVE_ENTRIES, under a second), not counted as progress.
                        if entry.chain_seq <= position:
                            continue
                        scan.position = entry.chain_seq
                        if query.matches(entry):
                            yield archive.blob_key, entry
                        read += 1
                        if read % CLOCK_EVERY == 0 and out_of_time():
                            return
                except FileNotFoundError:
                    log.error("audit search: archive %s is missing from the blob store",
                              archive.blob_key)  # fmt: skip
                    raise ArchiveMissing(
                        f"the access-log archive {archive.blob_key} (positions "
                        f"{archive.first_seq}–{archive.last_seq}) is missing from the "
                        "exchange's blob store: the search cannot go past it until it is put "
                        "back (`aifi audit verify --archives` lists every file missing)"
                    ) from None
            scan.position = position = archive.last_seq
        moved = False
        more = True  # the table may hold more than one batch from here
        while not moved:
            # After a short batch the next one finds the end at once: it is read whatever
            # the time, or a search that finds entries as fast as they are written (its own
            # pages' log entries) would never end.
            if more and out_of_time():
                return
            rows = _table_batch(db, query, AuditEntry.chain_seq, AuditEntry.chain_seq > position)
            moved = _newest_archived(db) > position
            if not moved:
                if not rows:
                    break
                for row in rows:
                    scan.position = row.chain_seq
                    yield IN_DATABASE, row
                scan.position = position = rows[-1].chain_seq
                more = len(rows) == SEARCH_BATCH
                read += 1
        if not moved:
            break
    if unlinked:
        newest = 0
        while rows := _table_batch(
            db, query, AuditEntry.id, AuditEntry.chain_seq.is_(None), AuditEntry.id > newest
        ):
            for row in rows:
                yield IN_DATABASE, row
            newest = rows[-1].id


def _table_batch(
    db: Database, query: AuditQuery, order: Any, *where: ColumnElement[bool]
) -> list[Any]:
    with db.session() as session:
        return list(
            session.execute(
                select(*AuditEntry.__table__.c)
                .where(*where, *query.conditions())
                .order_by(order)
                .limit(SEARCH_BATCH)
            ).all()
        )


def _newest_archived(db: Database) -> int:
    with db.session() as session:
        return archived_head(session)[0]


@dataclass(frozen=True)
class SearchPage:
    """A page of a search: the entries found, each with where it is kept, and the chain
    position to go on after (None on the last page). `stopped`: the page ran out of time
    before it was full, so it may hold fewer entries than asked for, even none, and the
    search goes on after `next_after`."""

    entries: list[tuple[str, Any]]
    next_after: int | None
    stopped: bool = False


def search_page(
    db: Database,
    blobs: BlobStore,
    audit: AuditLog,
    actor: Actor,
    query: AuditQuery,
    *,
    after: int = 0,
    limit: int = 500,
    seconds: float = PAGE_SECONDS,
) -> SearchPage:
    """One page of :func:`search` for someone who asks the exchange (the API, the web pages).

    Entries written until now are linked first, so that the page holds them in chain order;
    pages follow chain positions, so an archiving round between two pages neither skips nor
    repeats an entry. A page reads for about `seconds` at most: a patient's few entries in a
    year of archives are found over several requests, each answered in time, a page shorter
    than `limit` (`stopped`) saying where to go on. A search reads other people's accesses
    to a patient's data, so it is itself logged, naming the patient searched for.
    """
    audit.chain()
    scan = Scan()
    deadline = time.monotonic() + seconds
    entries = search(
        db, blobs, query, after_seq=after, unlinked=False, deadline=deadline, scan=scan
    )
    with contextlib.closing(entries):  # an archive file read halfway is closed at once
        found = list(itertools.islice(entries, limit + 1))
    page = found[:limit]
    if len(found) > limit:
        next_after: int | None = page[-1][1].chain_seq
    else:
        next_after = scan.position if scan.stopped else None
    stopped = scan.stopped and len(found) <= limit
    audit.record(
        actor,
        "search",
        "audit",
        query.describe()[:200],
        patient_pseudonym=query.patient_pseudonym or "",
        detail=f"{len(page)} entries after position {after}"
        + (f"; read until position {next_after} in {seconds:g} s" if stopped else ""),
    )
    return SearchPage(page, next_after, stopped)


def log_listing(audit: AuditLog, actor: Actor, entries: Sequence[Any], *, where: str) -> None:
    """Store that `actor` was shown `entries` of the log (`where`: which listing), before they
    are given out.

    Entries name who touched which patient's data, so reading them is an access like any other,
    as a search is. A listing holds many patients' entries: its own entry names the range of
    entries shown (by id), from which a privacy officer can tell whose were among them.
    """
    ids = [int(entry.id) for entry in entries]
    shown = f"entries {min(ids)} to {max(ids)}" if ids else "no entries"
    audit.record(actor, "read", "audit", shown, detail=f"{len(ids)} entries, by {where}")


def list_entries(
    db: Database,
    audit: AuditLog,
    actor: Actor,
    *,
    after_id: int,
    limit: int,
    where: str,
    after_seq: int | None = None,
) -> list[AuditEntry]:
    """The entries still in the table after id `after_id`, oldest first, `limit` at most;
    logged as shown to `actor` (see :func:`log_listing`).

    With `after_seq`, the linked entries after that position of the chain, in chain order:
    what an export that reads the log page after page must use. An id is handed out when an
    entry is written and seen when its transaction commits, so on PostgreSQL a page by ids
    can pass an entry still being written; the chain takes entries as they are seen.
    """
    if after_seq is not None:
        query = (
            select(AuditEntry)
            .where(AuditEntry.chain_seq > after_seq)
            .order_by(AuditEntry.chain_seq)
        )
    else:
        query = select(AuditEntry).where(AuditEntry.id > after_id).order_by(AuditEntry.id)
    with db.session() as session:
        entries = list(session.scalars(query.limit(limit)))
    log_listing(audit, actor, entries, where=where)
    return entries
