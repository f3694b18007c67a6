"""The vault: the only place that maps pseudonyms back to the hospital's identifiers.

It lives in its own file beside the gateway's state so that it can be kept on protected
storage and backed up on its own schedule; nothing in it ever leaves the hospital.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS uids (
    pseudonym TEXT PRIMARY KEY,
    original TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    pseudonym_study_uid TEXT PRIMARY KEY,
    original_study_uid TEXT NOT NULL,
    patient_pseudonym TEXT NOT NULL,
    original_attributes TEXT NOT NULL  -- JSON: PatientName, PatientID, AccessionNumber, ...
);
-- Which studies need each pair: a UID can belong to more than one (a Frame of Reference
-- shared by two studies of one session), and its pair goes when the last of them is purged.
CREATE TABLE IF NOT EXISTS uid_studies (
    original_study_uid TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    PRIMARY KEY (original_study_uid, pseudonym)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_uid_studies_pseudonym ON uid_studies (pseudonym);
-- The secret every pseudonym here was made under, by its fingerprint (`secret_fingerprint`),
-- newest last: a rotation adds a row, the rows before it tell when the pseudonyms changed.
CREATE TABLE IF NOT EXISTS keyed_with (
    fingerprint TEXT NOT NULL,
    since TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Keying:
    """What a vault says of the secret its pseudonyms were made under: the fingerprint it
    recorded, and one (pseudonym, original) UID pair of its own, which shows the secret of a
    vault from a release that did not record it (each pseudonym is `key.uid(original)`)."""

    fingerprint: str | None = None
    sample: tuple[str, str] | None = None


def read_keying(connection: sqlite3.Connection) -> Keying:
    """What the vault on `connection` says of its secret. A vault from a release that did not
    record the fingerprint lacks its table: it says nothing of it then."""
    try:
        recorded = connection.execute(
            "SELECT fingerprint FROM keyed_with ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        recorded = None
    pair = connection.execute("SELECT pseudonym, original FROM uids LIMIT 1").fetchone()
    return Keying(
        str(recorded[0]) if recorded else None,
        (str(pair[0]), str(pair[1])) if pair else None,
    )


@dataclass(frozen=True)
class Forgotten:
    """What the vault dropped for a purged study."""

    studies: int
    uids: int


class Vault:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def keying(self) -> Keying:
        """What the vault says of the secret its pseudonyms are made under (`Keying`)."""
        with self._lock:
            return read_keying(self._conn)

    def key_with(self, fingerprint: str) -> None:
        """Record that the pseudonyms from now on are made under the secret `fingerprint`."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO keyed_with (fingerprint, since) VALUES (?, ?)",
                (fingerprint, datetime.now(UTC).isoformat(timespec="seconds")),
            )

    def remember(
        self,
        uid_map: Mapping[str, str],
        *,
        original_study_uid: str,
        pseudonym_study_uid: str,
        patient_pseudonym: str,
        original_attributes: Mapping[str, str],
    ) -> None:
        """Keep what is needed to re-identify results of this study (idempotent)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO uids (pseudonym, original) VALUES (?, ?)",
                [(pseudo, original) for original, pseudo in uid_map.items()],
            )
            self._conn.executemany(
                "INSERT OR IGNORE INTO uid_studies (original_study_uid, pseudonym) VALUES (?, ?)",
                [(original_study_uid, pseudo) for pseudo in uid_map.values()],
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?)",
                (
                    pseudonym_study_uid,
                    original_study_uid,
                    patient_pseudonym,
                    json.dumps(dict(original_attributes), sort_keys=True),
                ),
            )

    def original_uid(self, pseudonym: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT original FROM uids WHERE pseudonym = ?", (pseudonym,)
            ).fetchone()
        return row[0] if row else None

    def original_uids(self, pseudonyms: set[str]) -> dict[str, str]:
        if not pseudonyms:
            return {}
        found: dict[str, str] = {}
        items = sorted(pseudonyms)
        with self._lock:
            for start in range(0, len(items), 500):
                batch = items[start : start + 500]
                marks = ",".join("?" * len(batch))
                for pseudo, original in self._conn.execute(
                    f"SELECT pseudonym, original FROM uids WHERE pseudonym IN ({marks})", batch
                ):
                    found[pseudo] = original
        return found

    def forget_study(self, original_study_uid: str) -> Forgotten:
        """Drop what was kept to re-identify a study whose results are all home and whose
        retention ran out: its patient attributes, and its UID pairs that no other study
        needs. Kept, they would grow the vault by every instance the hospital ever sent. A
        later round of the study remembers them again (its pseudonyms are the same).

        Pairs remembered by a gateway before it recorded which study needs them name no
        study, and stay.
        """
        with self._lock, self._conn:
            studies = self._conn.execute(
                "DELETE FROM studies WHERE original_study_uid = ?", (original_study_uid,)
            ).rowcount
            uids = self._conn.execute(
                "DELETE FROM uids WHERE pseudonym IN "
                "(SELECT pseudonym FROM uid_studies WHERE original_study_uid = :study) "
                "AND NOT EXISTS (SELECT 1 FROM uid_studies other "
                "WHERE other.pseudonym = uids.pseudonym AND other.original_study_uid != :study)",
                {"study": original_study_uid},
            ).rowcount
            self._conn.execute(
                "DELETE FROM uid_studies WHERE original_study_uid = ?", (original_study_uid,)
            )
        return Forgotten(studies, uids)

    def pseudonym_of(self, original_study_uid: str) -> str | None:
        """The pseudonym the hospital's study was last sent under; None when the vault no
        longer knows the study (its retention ran out)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT pseudonym_study_uid FROM studies WHERE original_study_uid = ? "
                "ORDER BY rowid DESC LIMIT 1",
                (original_study_uid,),
            ).fetchone()
        return str(row[0]) if row else None

    def study(self, pseudonym_study_uid: str) -> tuple[str, dict[str, str]] | None:
        """The original Study Instance UID and patient attributes behind a pseudonymised study."""
        with self._lock:
            row = self._conn.execute(
                "SELECT original_study_uid, original_attributes FROM studies "
                "WHERE pseudonym_study_uid = ?",
                (pseudonym_study_uid,),
            ).fetchone()
        if row is None:
            return None
        return row[0], json.loads(row[1])
