"""Archiving the access log: old entries move to files in the blob store, chain and all.

The log gains about ten entries per job, a hundred million a year nationally. Kept in the
database for ever, the table, its backups and the daily `aifi audit verify` would grow without
end. :class:`AuditArchiver` moves the entries stored before a moment out of the table, oldest
first, in runs of up to :data:`ARCHIVE_ENTRIES`. Each run becomes one gzip'd JSON-lines file
under ``audit/`` in the blob store (the object store in production, where a bucket's object
lock can keep it unchanged), recorded in ``audit_archives`` with its first and last position
in the chain, the hash its first entry links to, its last entry's hash and the file's SHA-256.

The chain is not cut: the first entry left in the table links to the newest archive's last
hash; `check_chain` starts there and checks that the archives follow one another, and
:func:`verify_archives` reads the files back and checks every entry in them. A run is checked
as it is written: an archive is never made of a broken chain.

Nothing is lost or doubled. One round runs at a time (`Database.turn`: an advisory lock on
PostgreSQL, a lock file beside SQLite's). A run's file is stored before its entries leave
the table, and they leave in the transaction that records the archive, which makes sure it
removes exactly the entries written (else the file no record names is deleted again).

The turn alone does not make that safe: PostgreSQL restarting ends the advisory lock's
session, the replica archiving goes on unaware on its other connections, and another takes
the lock and archives too. So a file is named by its first *and last* position: two rounds
never write over each other's file unless they hold the same entries, and of two rounds
over the same entries only the first to record removes them. A crash between the file and
its record leaves the entries in the table and the file; the next round starts at the same
position, and once it has recorded its own file, it deletes every file no record names that
begins at or before it: their entries are in recorded files now, and no round can record
them any more. The newest linked entry always stays in the table: the next link is made
from it.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from aifi.chain_anchor import Anchor
from aifi.exchange.audit import SYSTEM, AuditLog, ChainCheck, ChainWalk, archived_head
from aifi.exchange.blobs import BlobStore, TempBlob
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import ARCHIVE_LOCK, Database
from aifi.exchange.errors import ExchangeError, StorageFull
from aifi.exchange.models import AuditArchive, AuditEntry
from aifi.exchange.settings import ExchangeSettings

#: Where the archive files sit in the blob store.
ARCHIVE_FOLDER = "audit/"
#: Entries in one archive file at most (a few MB gzip'd): small enough that the transaction
#: removing them from the table is short, large enough that a year makes a few thousand.
ARCHIVE_ENTRIES = 50_000
#: Entries read from the table at a time while a file is written.
READ_BATCH = 5_000
#: The columns an archived entry keeps, in the order a file line lists them.
COLUMNS = (
    "chain_seq", "id", "at", "organisation_id", "role", "action", "object_type", "object_id",
    "patient_pseudonym", "outcome", "detail", "prev_hash", "entry_hash",
)  # fmt: skip


class ArchiveRefused(ExchangeError):
    """The log cannot be archived as it stands (a broken chain); nothing was moved."""

    status = 409


def archive_key(first_seq: int, last_seq: int) -> str:
    """The file of the run from chain position `first_seq` to `last_seq`: of two rounds
    only those holding the same entries, the same bytes, write the same file."""
    return f"{ARCHIVE_FOLDER}{first_seq:012d}-{last_seq:012d}.jsonl.gz"


def first_position(key: str) -> int | None:
    """The chain position an archive file begins at, from its name (None: not one)."""
    name = key.removeprefix(ARCHIVE_FOLDER)
    digits = name[:12]
    return int(digits) if len(digits) == 12 and digits.isdigit() else None


@dataclass(frozen=True)
class _Run:
    """A run written to a file, not yet recorded."""

    first_seq: int
    last_seq: int
    first_prev_hash: str
    last_hash: str
    entries: int
    first_at: datetime
    last_at: datetime
    temp: TempBlob


class AuditArchiver:
    """Moves old entries of the access log to the blob store (see the module)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        audit: AuditLog,
        settings: ExchangeSettings,
        metrics: Any | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._audit = audit
        self._settings = settings
        self._metrics = metrics

    def sweep(self, now: datetime | None = None) -> list[AuditArchive]:
        """Archive what is older than `archive_audit_after_seconds` (nothing when unset).

        A round that fails is counted as an error of kind ``audit_archive`` (a broken chain
        among them: the operator's alert) and raised to the caller's log.
        """
        after = self._settings.archive_audit_after_seconds
        if after is None:
            return []
        try:
            written = self.archive_before((now or utcnow()) - timedelta(seconds=after))
        except Exception:
            if self._metrics is not None:
                self._metrics.errors.labels("audit_archive").inc()
            raise
        if self._metrics is not None:
            self._metrics.audit_archived.inc(sum(archive.entries for archive in written))
        return written

    def archive_before(
        self, before: datetime, on_entries: Callable[[int], object] | None = None
    ) -> list[AuditArchive]:
        """Archive the linked entries stored before `before` (all but the newest linked one);
        the archives written, oldest first. `on_entries(n)` hears of each batch written.

        One replica at a time: one that finds another archiving leaves the round to it.

        Raises
        ------
        ArchiveRefused
            when the entries to archive do not form an unbroken chain.
        StorageFull
            when the blob store has no room for a file (nothing left the table).
        """
        written: list[AuditArchive] = []
        with self._db.turn(ARCHIVE_LOCK) as mine:
            while mine:
                archive = self._archive_run(as_utc(before), on_entries)
                if archive is None:
                    break
                written.append(archive)
        return written

    def _archive_run(
        self, before: datetime, on_entries: Callable[[int], object] | None
    ) -> AuditArchive | None:
        with self._db.session() as session:
            after, previous = archived_head(session)
            newest = session.scalar(select(func.max(AuditEntry.chain_seq)))
        if newest is None or newest - 1 <= after:
            return None
        last_allowed = min(newest - 1, after + ARCHIVE_ENTRIES)
        run = self._write(after, previous, last_allowed, before, on_entries)
        if run is None:
            return None
        key = archive_key(run.first_seq, run.last_seq)
        try:
            self._blobs.commit(run.temp, key)
        finally:
            self._blobs.discard(run.temp)
        try:
            with self._db.session() as session:
                archive = self._record(session, run, key)
        except ArchiveRefused:
            self._forget_unrecorded(key)
            raise
        self._clear_leftovers(run.first_seq)
        return archive

    def _clear_leftovers(self, first_seq: int) -> None:
        """Delete the files no record names that begin at or before `first_seq`: a crashed
        round's, or one of a replica that lost its turn. The entries they hold are in
        recorded files now, so no round that wrote them can record them any more. A file
        left by a failure here is deleted by the next round."""
        with self._db.session() as session:
            named = set(session.scalars(select(AuditArchive.blob_key)))
        for key in self._blobs.keys_under(ARCHIVE_FOLDER):
            first = first_position(key)
            if key not in named and first is not None and first <= first_seq:
                self._forget_unrecorded(key)

    def _forget_unrecorded(self, key: str) -> None:
        """Delete the file `key` unless an archive names it (never another round's file)."""
        with self._db.session() as session:
            named = session.scalar(select(AuditArchive.id).where(AuditArchive.blob_key == key))
        if named is None:
            self._blobs.delete(key)

    def _write(
        self,
        after: int,
        previous: str,
        last_allowed: int,
        before: datetime,
        on_entries: Callable[[int], object] | None,
    ) -> _Run | None:
        """The entries after position `after`, up to `last_allowed` and stored before
        `before`, written to a file in the store's spool folder and checked on the way."""
        walk = ChainWalk(expected_prev=previous, expected_seq=after + 1)
        first: Any = None
        last: Any = None
        count = 0
        # An entry's time is taken when it is made, and entries are linked as their
        # transactions commit: times are not in chain order, so the run's span is their least
        # and greatest, or a search by period would pass over this file.
        earliest: datetime | None = None
        latest: datetime | None = None
        fd, name = tempfile.mkstemp(dir=self._blobs.incoming, suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                for row in _entries(self._db, after, last_allowed, before):
                    walk.step(row)
                    if not walk.ok:
                        raise ArchiveRefused(
                            f"the access log cannot be archived: {walk.problems[0]}; nothing "
                            "was moved (aifi audit verify lists every problem)"
                        )
                    out.write(_line(row))
                    if first is None:
                        first = row
                    last = row
                    count += 1
                    at = as_utc(row.at)
                    earliest = at if earliest is None or at < earliest else earliest
                    latest = at if latest is None or at > latest else latest
                    if on_entries is not None and count % READ_BATCH == 0:
                        on_entries(READ_BATCH)
            if on_entries is not None and count % READ_BATCH:
                on_entries(count % READ_BATCH)
            if last is None:
                path.unlink()
                return None
            temp = _temp_blob(path)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(
                    "no room to write an audit archive; nothing left the table"
                ) from exc
            raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return _Run(
            first_seq=first.chain_seq,
            last_seq=last.chain_seq,
            first_prev_hash=first.prev_hash,
            last_hash=last.entry_hash,
            entries=count,
            first_at=earliest or as_utc(first.at),
            last_at=latest or as_utc(last.at),
            temp=temp,
        )

    def _record(self, session: Session, run: _Run, key: str) -> AuditArchive:
        """The archive's row, the entries' removal and an entry saying so, in one
        transaction that removes exactly the entries the file holds."""
        removed = session.execute(
            delete(AuditEntry)
            .where(AuditEntry.chain_seq >= run.first_seq, AuditEntry.chain_seq <= run.last_seq)
            .execution_options(synchronize_session=False)
        )
        count = int(getattr(removed, "rowcount", -1))
        if count != run.entries:
            raise ArchiveRefused(
                f"positions {run.first_seq}–{run.last_seq} of the access log held {count} "
                f"entries when they were to leave the table, not the {run.entries} archived; "
                "nothing was moved"
            )
        archive = AuditArchive(
            first_seq=run.first_seq,
            last_seq=run.last_seq,
            first_prev_hash=run.first_prev_hash,
            last_hash=run.last_hash,
            entries=run.entries,
            first_at=run.first_at,
            last_at=run.last_at,
            blob_key=key,
            size=run.temp.size,
            sha256=run.temp.sha256,
            created_at=utcnow(),
        )
        session.add(archive)
        self._audit.record_in(
            session,
            SYSTEM,
            "archive",
            "audit_log",
            f"{run.first_seq}-{run.last_seq}",
            detail=(
                f"{run.entries} entries stored {run.first_at.isoformat()} to "
                f"{run.last_at.isoformat()} moved to {key} ({run.temp.size} bytes, "
                f"sha256 {run.temp.sha256})"
            ),
        )
        return archive


def _entries(db: Database, after: int, last_allowed: int, before: datetime) -> Iterator[Any]:
    """Linked entries after position `after` up to `last_allowed`, in chain order, a batch
    at a time, until the first one stored at or after `before`."""
    columns = AuditEntry.__table__.c
    position = after
    while position < last_allowed:
        with db.session() as session:
            rows = session.execute(
                select(*columns)
                .where(AuditEntry.chain_seq > position, AuditEntry.chain_seq <= last_allowed)
                .order_by(AuditEntry.chain_seq)
                .limit(READ_BATCH)
            ).all()
        if not rows:
            return
        for row in rows:
            if as_utc(row.at) >= before:
                return
            yield row
        position = rows[-1].chain_seq


def _line(row: Any) -> bytes:
    record = {column: getattr(row, column) for column in COLUMNS}
    record["at"] = as_utc(row.at).isoformat()
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _temp_blob(path: Path) -> TempBlob:
    with path.open("rb") as written:
        digest = hashlib.file_digest(written, "sha256").hexdigest()
    return TempBlob(path=path, size=path.stat().st_size, sha256=digest)


def archives(db: Database) -> list[AuditArchive]:
    """Every archive, oldest run first."""
    with db.session() as session:
        return list(session.scalars(select(AuditArchive).order_by(AuditArchive.first_seq)))


def verify_archives(
    db: Database,
    blobs: BlobStore,
    on_entries: Callable[[int], object] | None = None,
    anchors: Iterable[Anchor] = (),
) -> ChainCheck:
    """Read every archive file back and check it: its SHA-256 against its record, and each
    entry's place, link and hash, from the hash its record says it starts after to the one
    it says it ends with, and each of `anchors` that falls in it. Streamed: memory does not
    grow with a file."""
    summary = ChainWalk()  # gathers every file's problems, listed and counted as one walk's
    entries = 0
    for archive in archives(db):
        where = f"archive {archive.blob_key}: "
        walk = ChainWalk(
            expected_prev=archive.first_prev_hash,
            expected_seq=archive.first_seq,
            anchors=[a for a in anchors if archive.first_seq <= a.seq <= archive.last_seq],
        )
        digest = hashlib.sha256()
        try:
            for entry in read_archive(blobs, archive.blob_key, digest):
                walk.step(entry)
                if on_entries is not None and walk.entries % READ_BATCH == 0:
                    on_entries(READ_BATCH)
        except FileNotFoundError:
            summary.problem(where + "not in the blob store")
            continue
        except (OSError, zlib.error, ValueError, TypeError, KeyError) as exc:
            summary.problem(f"{where}unreadable ({type(exc).__name__}: {exc})")
            continue
        if on_entries is not None and walk.entries % READ_BATCH:
            on_entries(walk.entries % READ_BATCH)
        walk.anchors_not_met(archive.last_seq, where="the file")
        entries += walk.entries
        summary.absorb(walk, where)
        if digest.hexdigest() != archive.sha256:
            summary.problem(where + "the file is not the one archived (its SHA-256 differs)")
        if walk.entries != archive.entries or walk.expected_prev != archive.last_hash:
            summary.problem(
                f"{where}holds {walk.entries} entries ending in {walk.expected_prev[:12]}…, "
                f"its record says {archive.entries} ending in {archive.last_hash[:12]}…"
            )
    return ChainCheck(entries, summary.problems, summary.problem_count)


def read_archive(
    blobs: BlobStore, key: str, digest: Any | None = None
) -> Iterator[SimpleNamespace]:
    """The entries of the archive file `key`, in chain order, each with the columns of a
    table row (`at` a datetime); streamed, a chunk of the file at a time. `digest` (a
    hashlib object) is fed the file's bytes on the way."""
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)  # gzip
    pending = b""
    for chunk in blobs.read(key):
        if digest is not None:
            digest.update(chunk)
        pending += inflate.decompress(chunk)
        *lines, pending = pending.split(b"\n")
        yield from (_entry(line) for line in lines)
    pending += inflate.flush()
    yield from (_entry(line) for line in pending.split(b"\n") if line)


def _entry(line: bytes) -> SimpleNamespace:
    record = json.loads(line)
    record["at"] = datetime.fromisoformat(record["at"])
    return SimpleNamespace(**record)
