"""Moving old entries of the disclosure log out of the gateway, into files the hospital keeps.

The disclosure log names patients, and the gateway never removes an entry on its own: how long
such a log is kept is the hospital's decision (its privacy officer's, under the AVG and NEN
7513), not the spool's. When that time has come, :func:`archive_disclosures` moves the entries
written before a date into gzip'd JSON-lines files in a folder the hospital chooses (its
archive storage), in runs of up to :data:`RUN_ENTRIES`, and records each run in the log's
``archives`` table: positions, the hash its first entry links to and its last entry's, the
file's SHA-256. The chain goes on across runs: `DisclosureLog.verify` checks that the records
follow one another and that the first entry left links to the last archived one;
:func:`verify_archive` checks a file against its record, entry by entry, and the anchors
that fall inside it. Deleting a file the hospital no longer needs is then its own act.

A file is written whole and flushed to the disk before its entries leave the log, and they
leave in the transaction that records the run, which removes exactly the entries written. The
newest entry always stays: the next entry links to it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from aifi.durable import write_atomically
from aifi.file_lock import held_alone
from aifi.gateway.disclosures import (
    GENESIS,
    Anchor,
    ArchivedRun,
    DisclosureLog,
    NotRecorded,
    entry_digest,
)

#: Entries in one file at most: the transaction that removes them from the log is short, so
#: the running gateway's next entry hardly waits.
RUN_ENTRIES = 20_000


def archive_file(folder: Path, first_seq: int) -> Path:
    """The file of the run that starts at entry `first_seq`: an archiving that follows a
    crash starts there too, and writes over the file left behind instead of beside it."""
    return folder / f"disclosures-{first_seq:09d}.jsonl.gz"


def archive_disclosures(log: DisclosureLog, before: datetime, folder: Path) -> list[ArchivedRun]:
    """Move the entries written before `before` (all but the newest) into files in `folder`;
    the runs written, oldest first. One archiving of a log at a time (a lock file beside it).

    Raises
    ------
    NotRecorded
        When the entries to move do not form an unbroken chain (nothing moves; `--verify`
        names every problem), another archiving of the log is under way, or the log cannot
        be written.
    OSError
        When a file cannot be written (a full disk): nothing left the log.
    """
    with held_alone(f"{log.path}.archiving") as mine:
        if not mine:
            raise NotRecorded(
                f"another archiving of {log.path} is under way; nothing was moved by this one"
            )
        return _archive(log, before, folder)


def _archive(log: DisclosureLog, before: datetime, folder: Path) -> list[ArchivedRun]:
    moment = before.astimezone(UTC).isoformat()
    written: list[ArchivedRun] = []
    while True:
        runs = log.archived()
        after, previous = (runs[-1].last_seq, runs[-1].last_hash) if runs else (0, GENESIS)
        entries = log.oldest(after, moment, RUN_ENTRIES)
        if not entries:
            return written
        _check_links(entries, after, previous)
        path = archive_file(folder, entries[0]["seq"])
        write_atomically(path, functools.partial(_write, entries=entries), fsync=True)
        run = ArchivedRun(
            first_seq=entries[0]["seq"],
            last_seq=entries[-1]["seq"],
            first_prev_hash=entries[0]["prev_hash"],
            last_hash=entries[-1]["entry_hash"],
            entries=len(entries),
            first_at=entries[0]["at"],
            last_at=entries[-1]["at"],
            file=str(path.resolve()),
            sha256=_sha256(path),
            archived_at=datetime.now(UTC).isoformat(),
        )
        try:
            log.forget_archived(run)
        except NotRecorded:
            if run.file not in {recorded.file for recorded in log.archived()}:
                path.unlink(missing_ok=True)  # never a file a recorded run names
            raise
        written.append(run)


def _check_links(entries: list[dict[str, Any]], after: int, previous: str) -> None:
    for entry in entries:
        seq = entry["seq"]
        if seq != after + 1 or entry["prev_hash"] != previous:
            raise NotRecorded(
                f"entry {seq}: does not follow the entry before it; nothing was archived "
                "(aifi disclosures --verify names every problem)"
            )
        if entry_digest(entry, previous) != entry["entry_hash"]:
            raise NotRecorded(f"entry {seq}: its content was changed; nothing was archived")
        after, previous = seq, entry["entry_hash"]


def _write(out: BinaryIO, entries: list[dict[str, Any]]) -> None:
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as packed:
        for entry in entries:
            packed.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")


def _sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def read_archive(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of an archive file, oldest first, streamed."""
    with gzip.open(path, "rb") as source:
        for line in source:
            yield json.loads(line)


def verify_archive(
    log: DisclosureLog, path: Path, anchors: Iterable[Anchor] = ()
) -> tuple[ArchivedRun | None, list[str]]:
    """Check an archive file against the run the log recorded for it: its SHA-256, and each
    entry's number, link and hash, from the run's first link to its last hash; each of
    `anchors` in the run's range must be in the file as anchored. The run (None when the log
    records no run for the file) and the problems found."""
    digest = _sha256(path)
    runs = log.archived()
    # By name (the hospital may move the file, not rename it), else by content.
    run = next((run for run in runs if Path(run.file).name == path.name), None)
    run = run or next((run for run in runs if run.sha256 == digest), None)
    if run is None:
        return None, [f"{path}: the log records no archive of this name or content"]
    problems: list[str] = []
    if digest != run.sha256:
        problems.append(f"{path}: not the file archived (its SHA-256 differs)")
    wanted = {anchor.seq: anchor for anchor in anchors if run.first_seq <= anchor.seq}
    seq, previous = run.first_seq - 1, run.first_prev_hash
    for entry in read_archive(path):
        if entry["seq"] != seq + 1 or entry["prev_hash"] != previous:
            problems.append(f"entry {entry['seq']}: does not follow the entry before it")
        if entry_digest(entry, entry["prev_hash"]) != entry["entry_hash"]:
            problems.append(f"entry {entry['seq']}: its content was changed")
        anchor = wanted.pop(entry["seq"], None)
        if anchor is not None and anchor.entry_hash != entry["entry_hash"]:
            problems.append(f"entry {entry['seq']}: not the entry anchored as {anchor}")
        seq, previous = entry["seq"], entry["entry_hash"]
    if (seq, previous) != (run.last_seq, run.last_hash):
        problems.append(f"{path}: ends at entry {seq}, its record at {run.last_seq}")
    problems += [
        f"entry {n}: anchored as {anchor} but not in {path}"
        for n, anchor in sorted(wanted.items())
        if n <= run.last_seq
    ]
    return run, problems
