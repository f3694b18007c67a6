"""An anchor: one entry of a hash-chained log, by its position and hash, kept off the host.

Both AIFI logs are hash chains (the exchange's access log, the gateway's disclosure log). A
chain shows an entry edited, removed or moved, but not its newest entries cut off, or
rewritten with fresh hashes, by someone who can write the log. Each writer therefore puts
the newest entry's anchor in its journal, which leaves the host for a log collector; a check
given anchors from there finds every entry up to each one as it was written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    """An entry's position in its chain and its hash."""

    seq: int
    entry_hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.entry_hash}"

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """Read `SEQ:HASH`, as the journals and the checks print it.

        Raises
        ------
        ValueError
            Naming what is wrong with `text`.
        """
        seq, colon, digest = text.strip().partition(":")
        if not colon or not seq.isdigit() or int(seq) < 1:
            raise ValueError(f"anchor {text!r}: expected ENTRY:SHA256, ENTRY a number from 1")
        if len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ValueError(f"anchor {text!r}: the hash must be 64 lower-case hex digits")
        return cls(int(seq), digest)
