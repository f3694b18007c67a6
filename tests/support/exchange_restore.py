"""An exchange on its embedded SQLite database put back from a backup: everything made after
the backup is gone from it, as after a restore of production to an earlier moment."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from aifi.exchange.app import Extension
from aifi.exchange.server import ExchangeThread


def _database(exchange: ExchangeThread) -> Path:
    return exchange.services.settings.data_dir / "exchange.db"


def backed_up(exchange: ExchangeThread, backup: Path) -> Path:
    """A consistent copy of the exchange's database as it is now, as a backup takes one."""
    with sqlite3.connect(_database(exchange)) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    return backup


def restored(
    exchange: ExchangeThread, backup: Path, extensions: Sequence[Extension] = ()
) -> ExchangeThread:
    """`exchange` stopped, its database put back from `backup`, and started again on the
    same address (its callers reconnect as to a restarted replica); the new server."""
    settings = exchange.services.settings
    exchange.stop()
    database = _database(exchange)
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    shutil.copy(backup, database)
    return ExchangeThread(settings, port=exchange.port, extensions=extensions).start()
