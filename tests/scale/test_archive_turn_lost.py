"""Two replicas archiving the access log at once, after PostgreSQL restarted mid-round.

A round's turn is a session advisory lock on one pooled connection, its work done on others.
A restart (or failover, or an operator's pg_terminate_backend) ends the lock's session while
the pool quietly swaps every other connection for a fresh one, so the replica archiving goes
on unaware that its turn is gone, and the next replica to try takes the lock and archives
too. Whichever records first, no entry may be lost or doubled, every recorded file must hold
what its record says, and no file may be left that no record names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from aifi.exchange.audit import Actor, AuditLog
from aifi.exchange.audit_archive import (
    ArchiveRefused,
    AuditArchiver,
    archives,
    read_archive,
    verify_archives,
)
from aifi.exchange.blobs import LocalBlobStore, TempBlob
from aifi.exchange.db import Database, upgrade_schema
from aifi.exchange.models import AuditEntry
from aifi.exchange.settings import ExchangeSettings
from scale.servers import PostgresServer, start_postgres

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


class PausingStore(LocalBlobStore):
    """A replica's view of the shared blob store that stops once it has written an archive
    file, until the test lets it record."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written = threading.Event()
        self.go = threading.Event()

    def commit(self, temp: TempBlob, key: str) -> None:
        super().commit(temp, key)
        if key.startswith("audit/"):
            self.written.set()
            assert self.go.wait(60)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()  # restarted below: a server of this test's own
    try:
        yield server
    finally:
        server.destroy()


@pytest.mark.parametrize("first_to_record", ["longer run", "shorter run"])
def test_two_rounds_after_a_restart_lose_and_double_nothing(
    own_postgres: PostgresServer, tmp_path: Path, first_to_record: str
) -> None:
    url = own_postgres.create_database("archive_turn")
    one, two = Database(url), Database(url)  # two replicas
    try:
        upgrade_schema(one.engine)
        log = AuditLog(one)
        for number in range(30):
            log.record(Actor("hospital-a", "hospital"), "read", "job", f"job-{number}")
        with one.session() as session:  # entry n stored at minute n
            session.execute(
                text("UPDATE audit_log SET at = :epoch + id * interval '1 minute'"),
                {"epoch": EPOCH},
            )
        assert log.chain() == 30
        settings = ExchangeSettings(data_dir=tmp_path / "x", database_url=url)
        stores = [PausingStore(tmp_path / "blobs"), PausingStore(tmp_path / "blobs")]
        archivers = [
            AuditArchiver(one, stores[0], log, settings),
            AuditArchiver(two, stores[1], AuditLog(two), settings),
        ]
        outcome: dict[int, Any] = {}

        def archive(replica: int, minutes: float) -> None:
            try:
                outcome[replica] = archivers[replica].archive_before(
                    EPOCH + timedelta(minutes=minutes)
                )
            except Exception as exc:  # noqa: BLE001 - looked at below
                outcome[replica] = exc

        # The first replica's round (entries 1-20) has written its file when PostgreSQL
        # restarts; the second's (a later sweep, or `aifi audit archive --before` with an
        # earlier date: entries 1-10) finds the lock free on the restarted server.
        rounds = [
            threading.Thread(target=archive, args=(0, 20.5)),
            threading.Thread(target=archive, args=(1, 10.5)),
        ]
        rounds[0].start()
        assert stores[0].written.wait(60)
        own_postgres.restart()
        rounds[1].start()
        assert stores[1].written.wait(60), f"the second round did not archive: {outcome}"
        order = [0, 1] if first_to_record == "longer run" else [1, 0]
        for replica in order:
            stores[replica].go.set()
            rounds[replica].join(60)

        first, second = order
        recorded = outcome[first]
        assert isinstance(recorded, list) and len(recorded) == 1, outcome
        assert isinstance(outcome[second], ArchiveRefused | Exception), outcome
        with one.session() as session:
            in_table = list(
                session.scalars(select(AuditEntry.chain_seq).where(AuditEntry.chain_seq <= 30))
            )
        in_files = [
            entry.chain_seq
            for archive in archives(one)
            for entry in read_archive(stores[0], archive.blob_key)
        ]
        assert sorted(in_table + in_files) == list(range(1, 31)), "lost or doubled entries"
        check = verify_archives(one, stores[0])
        assert check.ok, check.problems
        named = {archive.blob_key for archive in archives(one)}
        assert set(stores[0].keys_under("audit/")) == named, "a file no record names"
        # What the refused round left in the table is archived by the next.
        if first_to_record == "shorter run":
            (later,) = archivers[0].archive_before(EPOCH + timedelta(minutes=20.5))
            assert (later.first_seq, later.last_seq) == (11, 20)
    finally:
        one.dispose()
        two.dispose()
