"""The gateway's disclosure log: which patient's study left for which AI product, and which
result came back into the hospital and where it went.

The exchange logs every access too, but it knows pseudonyms only. A hospital's privacy officer
must answer a patient who asks whether their scan went to an AI vendor, to which and when
(AVG/GDPR art. 15), and must be able to audit the gateway's disclosures (NEN 7513). Only the
gateway sees both sides, so it keeps this log itself: in its own file in the workdir, beside
the vault and, like the vault, never sent anywhere.

Entries are appended, each carrying the SHA-256 of the one before it, so an entry edited,
removed or put out of order breaks the chain from there on (:meth:`DisclosureLog.verify`).
The chain alone cannot show its newest entries cut off by someone who also rewinds the
sequence SQLite keeps; an :class:`Anchor` can: the last entry's number and hash, which the
gateway writes to its journal (and so to the hospital's log collector) as the log grows.
The log is not touched by the spool's retention (`retain_hours`): it outlives the studies it
names, as NEN 7513 asks; the hospital decides how long it keeps the file.

An entry is written once the step it records has succeeded and before the gateway marks the
step done: a crash in between makes the gateway repeat the step, so the entry may be written
twice, never not at all. (Notices are marked sent first: sending one again would give the RIS
two messages.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from aifi.chain_anchor import Anchor

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,            -- UTC, ISO 8601
    organisation TEXT NOT NULL,  -- the hospital
    actor TEXT NOT NULL,         -- this gateway (its AE title): every step is its own
    action TEXT NOT NULL,        -- disclosed | reidentified | delivered | notified
    patient_id TEXT NOT NULL,    -- the hospital's own Patient ID
    study_uid TEXT NOT NULL,     -- the hospital's own Study Instance UID
    recipient TEXT NOT NULL,     -- product and vendor, a PACS, a notice channel
    outcome TEXT NOT NULL,       -- success | failure
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_entries_patient ON entries (patient_id, seq);
CREATE INDEX IF NOT EXISTS ix_entries_study ON entries (study_uid, seq);
-- Runs of old entries moved to files by aifi.gateway.disclosure_archive: the chain goes on
-- across them, the first entry left linking to the newest run's last hash.
CREATE TABLE IF NOT EXISTS archives (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL UNIQUE,
    last_seq INTEGER NOT NULL,
    first_prev_hash TEXT NOT NULL,
    last_hash TEXT NOT NULL,
    entries INTEGER NOT NULL,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    file TEXT NOT NULL,          -- where it was written (the hospital may move it on)
    sha256 TEXT NOT NULL,
    archived_at TEXT NOT NULL
);
"""
GENESIS = "0" * 64
#: The newest entry: the link for the next append, and the anchor the journal gets.
_NEWEST = "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
#: Entries read at a time by `verify`: the log grows by a few entries per study, for years.
VERIFY_BATCH = 5_000


class NotRecorded(Exception):
    """An entry could not be written (a full disk, a broken file): the step it records must
    not count as done, so the gateway repeats it later."""


class Action(StrEnum):
    """What the gateway did with a patient's data."""

    disclosed = "disclosed"  # pseudonymised and uploaded to the exchange for a product
    reidentified = "reidentified"  # a product's result mapped back to the patient
    delivered = "delivered"  # a re-identified result stored in a PACS
    notified = "notified"  # a result notice sent (HL7 ORU, FHIR, webhook)
    #: The log put back from a backup (`aifi gateway-restore`): what was written after the
    #: backup, before the restore, is not in it. No patient's entry.
    restored = "restored"


@dataclass(frozen=True)
class Disclosure:
    """One entry of the log."""

    seq: int
    at: str
    organisation: str
    actor: str
    action: str
    patient_id: str
    study_uid: str
    recipient: str
    outcome: str
    detail: str
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class ArchivedRun:
    """Entries `first_seq`…`last_seq`, moved out of the log into `file`."""

    first_seq: int
    last_seq: int
    first_prev_hash: str
    last_hash: str
    entries: int
    first_at: str
    last_at: str
    file: str
    sha256: str
    archived_at: str = ""


def entry_digest(fields: dict[str, Any], prev_hash: str) -> str:
    """The hash of an entry's fields linked after `prev_hash`."""
    body = {key: fields[key] for key in _HASHED} | {"prev": prev_hash}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


_HASHED = (
    "at",
    "organisation",
    "actor",
    "action",
    "patient_id",
    "study_uid",
    "recipient",
    "outcome",
    "detail",
)


class DisclosureLog:
    """Appends entries (from any thread) and reads them back, by patient or study."""

    def __init__(self, path: Path, organisation: str, actor: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._organisation = organisation
        self._actor = actor
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        path.chmod(0o600)  # it names patients, as the vault does

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record(
        self,
        action: Action,
        *,
        patient_id: str,
        study_uid: str,
        recipient: str,
        ok: bool = True,
        detail: str = "",
    ) -> Disclosure:
        """Append one entry, linked to the last; durable when this returns.

        Raises
        ------
        NotRecorded
            When the log cannot be written; the message names the file and the reason.
        """
        fields = {
            "at": datetime.now(UTC).isoformat(),
            "organisation": self._organisation,
            "actor": self._actor,
            "action": action.value,
            "patient_id": patient_id,
            "study_uid": study_uid,
            "recipient": recipient,
            "outcome": "success" if ok else "failure",
            "detail": detail,
        }
        try:
            with self._lock:
                prev, digest, seq = self._append(fields)
        except sqlite3.Error as exc:
            raise NotRecorded(f"the disclosure log {self.path} cannot be written: {exc}") from exc
        return Disclosure(seq=seq, **fields, prev_hash=prev, entry_hash=digest)

    def _append(self, fields: dict[str, str]) -> tuple[str, str, int]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            last = self._conn.execute(_NEWEST).fetchone()
            prev = str(last["entry_hash"]) if last else GENESIS
            digest = entry_digest(fields, prev)
            cursor = self._conn.execute(
                "INSERT INTO entries (at, organisation, actor, action, patient_id, study_uid,"
                " recipient, outcome, detail, prev_hash, entry_hash)"
                " VALUES (:at, :organisation, :actor, :action, :patient_id, :study_uid,"
                " :recipient, :outcome, :detail, :prev, :hash)",
                {**fields, "prev": prev, "hash": digest},
            )
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return prev, digest, int(cursor.lastrowid or 0)

    def entries(
        self, *, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[Disclosure]:
        """A patient's or a study's entries (or all), oldest first."""
        where, params = [], []
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        if study_uid is not None:
            where.append("study_uid = ?")
            params.append(study_uid)
        sql = "SELECT * FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [Disclosure(**dict(row)) for row in rows]

    def restores(self) -> list[Disclosure]:
        """The log's restores from backups, oldest first: around each, entries may be
        missing (those written after its backup, before it)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM entries WHERE action = ? ORDER BY seq", (Action.restored.value,)
            ).fetchall()
        return [Disclosure(**dict(row)) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def anchor(self) -> Anchor | None:
        """The newest entry's anchor; None while the log is empty."""
        with self._lock:
            last = self._conn.execute(_NEWEST).fetchone()
        return Anchor(int(last["seq"]), str(last["entry_hash"])) if last else None

    def verify(
        self,
        on_batch: Callable[[int], object] | None = None,
        anchors: Iterable[Anchor] = (),
    ) -> list[str]:
        """Problems in the chain, in order (empty when every link holds); a batch at a time,
        carrying only the last hash, with `on_batch(n)` told of each batch. Each of `anchors`
        must still be in the log as it was written."""
        problems: list[str] = []
        expected = {anchor.seq: anchor for anchor in anchors}
        previous, last_seq = GENESIS, 0
        for run in self.archived():
            if run.first_seq != last_seq + 1 or run.first_prev_hash != previous:
                problems.append(
                    f"archive {run.file}: does not follow the entries before it (an archive "
                    "record, or entries before it, removed or changed)"
                )
            # An anchor inside a run is checked against its file (`disclosure_archive`); the
            # run's record holds its last entry's hash, which an anchor there must match.
            for seq in [seq for seq in expected if run.first_seq <= seq <= run.last_seq]:
                archived = expected.pop(seq)
                if seq == run.last_seq and archived.entry_hash != run.last_hash:
                    problems.append(f"entry {seq}: not the entry anchored as {archived}")
            previous, last_seq = run.last_hash, run.last_seq
        restored: str | None = None  # the latest restore's entry, once the check passed it
        for batch in self._batches():
            for row in batch:
                fields = dict(row)
                if fields["action"] == Action.restored:
                    restored = f"{fields['seq']} ({fields['at']})"
                anchor = expected.pop(int(fields["seq"]), None)
                if anchor is not None and anchor.entry_hash != fields["entry_hash"]:
                    problems.append(
                        f"entry {fields['seq']}: not the entry anchored as {anchor} "
                        + (
                            "(it, or one before it, was replaced)"
                            if restored is None
                            else f"(the log was restored from a backup at entry {restored}: "
                            "the anchored entry was written after that backup, and lost "
                            "with the disk the backup replaced)"
                        )
                    )
                if fields["prev_hash"] != previous:
                    problems.append(
                        f"entry {fields['seq']}: does not follow the entry before it "
                        "(one was removed, inserted or moved)"
                    )
                if entry_digest(fields, fields["prev_hash"]) != fields["entry_hash"]:
                    problems.append(f"entry {fields['seq']}: its content was changed")
                previous, last_seq = fields["entry_hash"], int(fields["seq"])
            if on_batch is not None:
                on_batch(len(batch))
        with self._lock:
            issued = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'entries'"
            ).fetchone()
        if issued is not None and int(issued[0]) > last_seq:
            problems.append(f"entries after {last_seq} were removed (up to {issued[0]} written)")
        for seq in sorted(expected):
            problems.append(
                f"entry {seq}: anchored as {expected[seq]} but not in the log "
                + (
                    f"(the log was restored from a backup at entry {restored}: entries "
                    "written after that backup were lost with the disk it replaced)"
                    if seq > last_seq and restored is not None
                    else f"(entries after {last_seq} were removed)"
                    if seq > last_seq
                    else "(removed)"
                )
            )
        return problems

    def archived(self) -> list[ArchivedRun]:
        """The runs moved to archive files, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT first_seq, last_seq, first_prev_hash, last_hash, entries, first_at,"
                " last_at, file, sha256, archived_at FROM archives ORDER BY first_seq"
            ).fetchall()
        return [ArchivedRun(**dict(row)) for row in rows]

    def oldest(self, after: int, before: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` entries after `after`, oldest first, up to the first written at or
        after `before` (an ISO time: a run is a stretch of the chain, even if the clock
        stepped back); never the newest entry, which the next append links to."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM entries WHERE seq > ? AND seq < (SELECT max(seq) FROM entries)"
                " ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        stretch = list(itertools.takewhile(lambda row: row["at"] < before, rows))
        return [dict(row) for row in stretch]

    def forget_archived(self, run: ArchivedRun) -> None:
        """Record `run` as archived and remove its entries, in one transaction that removes
        exactly the run's entries or nothing.

        Raises
        ------
        NotRecorded
            When the log holds other entries in the run's range than were archived, or
            cannot be written.
        """
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    removed = self._conn.execute(
                        "DELETE FROM entries WHERE seq BETWEEN ? AND ?",
                        (run.first_seq, run.last_seq),
                    ).rowcount
                    if removed != run.entries:
                        raise NotRecorded(
                            f"entries {run.first_seq}–{run.last_seq} of {self.path} changed "
                            f"while they were archived ({removed}, not {run.entries}); "
                            "nothing was removed"
                        )
                    self._conn.execute(
                        "INSERT INTO archives (first_seq, last_seq, first_prev_hash, last_hash,"
                        " entries, first_at, last_at, file, sha256, archived_at) VALUES"
                        " (:first_seq, :last_seq, :first_prev_hash, :last_hash, :entries,"
                        " :first_at, :last_at, :file, :sha256, :archived_at)",
                        asdict(run),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise NotRecorded(f"the disclosure log {self.path} cannot be written: {exc}") from exc

    def _batches(self) -> Iterator[list[sqlite3.Row]]:
        after = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT * FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, VERIFY_BATCH),
                ).fetchall()
            if not rows:
                return
            yield rows
            after = int(rows[-1]["seq"])


def as_json(entries: list[Disclosure]) -> str:
    """The entries as a JSON array, for a privacy officer's answer or an archive."""
    return json.dumps([asdict(entry) for entry in entries], indent=2)


__all__ = [
    "Action",
    "Anchor",
    "ArchivedRun",
    "Disclosure",
    "DisclosureLog",
    "NotRecorded",
    "as_json",
    "entry_digest",
]
