"""A gateway's state as an earlier version left it, for the tests of its upgrade at start."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def as_left_by_older_version(path: Path, *statements: str) -> None:
    """Take from the (closed) state at `path` what an earlier version did not have yet:
    `statements` such as `ALTER TABLE … DROP COLUMN …` or `DROP INDEX …`, run in order and
    committed together."""
    db = sqlite3.connect(path)
    try:
        with db:
            for statement in statements:
                db.execute(statement)
    finally:
        db.close()
