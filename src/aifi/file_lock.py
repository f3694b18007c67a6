"""A lock file that one process at a time may hold, for work that must not run twice at once
on one host (an archiving round beside a running service), where no database lock serves."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def held_alone(path: Path | str) -> Iterator[bool]:
    """True while this process holds the lock at `path` (made if missing); False at once when
    another holder has it: the caller skips or refuses instead of waiting. The lock goes with
    the block, or with the process if it dies."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
