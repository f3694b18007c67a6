"""Counts of the gateway's rows, kept by SQLite triggers in the same transaction as the rows.

The exporter reports jobs, studies, deliveries and notices by state at every scrape. Counted
from the rows, a scrape grows with the gateway's history: with a million studies (a few
years of a large hospital's work) it took 1.5–1.8 s, most of it reading rows that settled
long ago (benchmarks/gateway_scrape.py). A trigger
adds and takes away one as each row is written, so the count is read in one lookup and can
never disagree with the rows it counts: both commit, or neither does.

The triggers are named after a digest of their own text. When what is counted changes (a new
tally, another definition of an outcome), the gateway's next start drops them, installs the
new ones and counts every row once, in one transaction.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

#: The row of `tallies` that names the triggers' version.
VERSION = "version"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tallies (
    name TEXT NOT NULL,      -- what is counted: a Tally's name, or 'version'
    key TEXT NOT NULL,       -- a state, or another grouping of the rows
    value REAL NOT NULL,
    PRIMARY KEY (name, key)
);
"""


@dataclass(frozen=True)
class Tally:
    """One count of a table's rows, grouped by `key` and adding up `amount` per row.

    `key` and `amount` are SQL expressions over a row written as `{row}` (NEW, OLD, or the
    table itself when counting from scratch).
    """

    name: str
    table: str
    key: str
    amount: str = "1"

    def key_of(self, row: str) -> str:
        return self.key.format(row=row)

    def amount_of(self, row: str) -> str:
        return self.amount.format(row=row)


def _add(tally: Tally, row: str, sign: str) -> str:
    return (
        f"INSERT INTO tallies (name, key, value) VALUES "
        f"('{tally.name}', {tally.key_of(row)}, {sign}({tally.amount_of(row)})) "
        "ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value;"
    )


def _triggers(tally: Tally) -> list[str]:
    prefix = f"tally_{tally.name}"
    changed = (
        f"{tally.key_of('OLD')} IS NOT {tally.key_of('NEW')} "
        f"OR {tally.amount_of('OLD')} IS NOT {tally.amount_of('NEW')}"
    )
    return [
        f"CREATE TRIGGER {prefix}_insert AFTER INSERT ON {tally.table} "
        f"BEGIN {_add(tally, 'NEW', '+')} END",
        f"CREATE TRIGGER {prefix}_delete AFTER DELETE ON {tally.table} "
        f"BEGIN {_add(tally, 'OLD', '-')} END",
        f"CREATE TRIGGER {prefix}_update AFTER UPDATE ON {tally.table} WHEN {changed} "
        f"BEGIN {_add(tally, 'OLD', '-')} {_add(tally, 'NEW', '+')} END",
    ]


def version(tallies: Sequence[Tally]) -> str:
    """A digest of the triggers' text: a change to any tally changes it."""
    text = "\n".join(statement for tally in tallies for statement in _triggers(tally))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def install(db: sqlite3.Connection, tallies: Sequence[Tally]) -> bool:
    """Make the triggers those of `tallies`, counting every row afresh if they were not.

    Call inside a write transaction, so that no row is written between the count and the
    triggers that keep it. Returns whether the rows were counted (a first start, or changed
    tallies); an up-to-date database costs one lookup.
    """
    wanted = version(tallies)
    current = db.execute("SELECT key FROM tallies WHERE name = ?", (VERSION,)).fetchone()
    if current is not None and current[0] == wanted:
        return False
    for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tally\\_%' "
        "ESCAPE '\\'"
    ).fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    db.execute("DELETE FROM tallies")
    for tally in tallies:
        for statement in _triggers(tally):
            db.execute(statement)
        refresh(db, tally)
    db.execute("INSERT INTO tallies (name, key, value) VALUES (?, ?, 0)", (VERSION, wanted))
    return True


def _counted(tally: Tally) -> str:
    """The tally counted from its rows: key, value."""
    return (
        f"SELECT {tally.key_of('t')}, SUM({tally.amount_of('t')}) FROM {tally.table} t "
        f"GROUP BY {tally.key_of('t')}"
    )


def refresh(db: sqlite3.Connection, tally: Tally) -> None:
    """Count one tally afresh from its rows (inside a write transaction)."""
    db.execute("DELETE FROM tallies WHERE name = ?", (tally.name,))
    db.execute(
        f"INSERT INTO tallies (name, key, value) SELECT '{tally.name}', * FROM ({_counted(tally)})"
    )


def recount(db: sqlite3.Connection, tally: Tally) -> dict[str, float]:
    """The tally counted from the rows, as the triggers should have it: for checks."""
    return {str(key): float(value) for key, value in db.execute(_counted(tally))}
