"""Keyed, consistent pseudonyms: one hospital secret, HMAC-SHA256, no lookup table needed.

The same input always yields the same pseudonym under one secret (so a patient's second study
joins the first at the vendor), and a different one under another hospital's secret (so two
hospitals' pseudonyms cannot be linked). Only the gateway's vault can map back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from aifi.durable import fsync_path, make_folders, write_atomically

#: Largest integer a `2.25.` UID may carry while staying within the 64-character UID limit.
_UID_ROOT = "2.25."
_UID_BITS = 128

#: Under "Modified Dates" every date of one patient shifts by the same number of days, at most
#: this many backwards, so intervals survive but the real dates do not.
MAX_DATE_SHIFT_DAYS = 3650


class PseudonymKey:
    """A hospital's secret and the pseudonyms derived from it.

    Each kind of value (UID, patient id, date shift, …) is hashed under its own label, so a
    pseudonym of one kind can never collide with, or reveal, a pseudonym of another.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a pseudonymisation secret must be at least 16 bytes long")
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> PseudonymKey:
        """Read a secret written by :func:`create_secret_file` (hex text) or raw bytes."""
        raw = path.read_bytes().strip()
        try:
            return cls(bytes.fromhex(raw.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            return cls(raw)

    def digest(self, label: str, value: str) -> bytes:
        """The HMAC-SHA256 of `value` under this secret and a label naming what it is."""
        return hmac.new(self._secret, f"{label}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A `2.25.<integer>` UID (at most 44 characters) that stands for `original`."""
        number = int.from_bytes(self.digest("uid", original.strip("\x00 "))[:16], "big")
        return f"{_UID_ROOT}{number}"

    def text(self, label: str, original: str, length: int = 16) -> str:
        """An upper-case base-32 pseudonym of `length` characters (safe for LO, SH and PN)."""
        import base64

        encoded = base64.b32encode(self.digest(label, original)).decode("ascii").rstrip("=")
        return encoded[:length]

    def patient_id(self, original: str) -> str:
        return "P" + self.text("patient-id", original, 15)

    def accession(self, original: str) -> str:
        return "A" + self.text("accession", original, 15)

    def date_shift_days(self, patient_id: str) -> int:
        """The per-patient number of days that every date of this patient moves back."""
        value = int.from_bytes(self.digest("date-shift", patient_id)[:8], "big")
        return 1 + value % MAX_DATE_SHIFT_DAYS


def create_secret_file(path: Path) -> None:
    """Write a new 256-bit secret as hex, readable by its owner only from its first byte, and
    durable when this returns: its bytes, its name and the folders made for it are on the
    disk. A power cut just after must not take back a secret the gateway has begun to
    pseudonymise with: every pseudonym made under it would be lost with it.

    Raises
    ------
    FileExistsError
        When `path` holds a secret already: a new one would give every patient new
        pseudonyms (see docs/pseudonymisation.md, "Rotation").
    """
    if path.exists():
        raise FileExistsError(f"{path} holds a pseudonymisation secret already")
    made = make_folders(path.parent)
    # A temporary file is made 0600, so the secret is never readable by others on the way.
    write_atomically(path, lambda out: out.write(f"{secrets.token_hex(32)}\n".encode()), fsync=True)
    for folder in made:
        fsync_path(folder.parent)
