"""The vault: the only place that maps pseudonyms back to the hospital's identifiers.

It lives in its own file beside the gateway's state so that it can be kept on protected
storage and backed up on its own schedule; nothing in it ever leaves the hospital.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
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
"""


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

    def forget_study(self, original_study_uid: str) -> int:
        """Drop the patient attributes kept for a study whose results are all home and whose
        retention ran out; a later round of the study remembers them again. The UID pairs stay
        (no patient attributes; the pseudonyms can be recomputed from the secret anyway)."""
        with self._lock, self._conn:
            return self._conn.execute(
                "DELETE FROM studies WHERE original_study_uid = ?", (original_study_uid,)
            ).rowcount

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
