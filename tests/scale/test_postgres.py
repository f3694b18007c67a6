"""PostgreSQL specifics: migrations on both backends, SKIP LOCKED claims, one audit chain for
many replicas, and a database outage that clients can ride out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from aifi.exchange.app import create_app
from aifi.exchange.audit import Actor, AuditLog, in_chain_order, unlinked_count, verify_chain
from aifi.exchange.db import Database, alembic_config, upgrade_schema
from aifi.exchange.models import Base, Organisation
from aifi.exchange.notify import ChangeNotifier
from aifi.exchange.replica_changes import CHANNEL, ReplicaChanges, change_payload
from aifi.exchange.schemas import OrganisationKind
from aifi.exchange.services import OPERATOR_ID, Services, build_services
from aifi.exchange.settings import ExchangeSettings
from scale.conftest import set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import PostgresServer, start_postgres, wait_for


def schema_drift(db: Database) -> list[Any]:
    with db.engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_migrations_build_the_models_schema_on_sqlite_and_postgresql(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    for url in (f"sqlite:///{tmp_path / 'x.db'}", postgres.create_database("migrate")):
        db = Database(url)
        upgrade_schema(db.engine)
        upgrade_schema(db.engine)  # every start runs it: a second run changes nothing
        assert schema_drift(db) == [], url
        db.dispose()


def test_a_patient_index_built_beforehand_without_holding_writes_is_taken_as_built(
    postgres: PostgresServer,
) -> None:
    """docs/deploy.md: on a large log the operator builds the index CONCURRENTLY before the
    upgrade; the migration then finds it rather than failing or building it again."""
    url = postgres.create_database("prebuilt")
    db = Database(url)
    config = alembic_config(url)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0010")
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_audit_log_patient "
            "ON audit_log (patient_pseudonym, chain_seq)"
        )
    upgrade_schema(db.engine)
    assert schema_drift(db) == []
    db.dispose()


def test_replicas_starting_together_migrate_one_after_the_other(postgres: PostgresServer) -> None:
    url = postgres.create_database("together")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def replica() -> None:
        db = Database(url)
        try:
            start.wait()
            upgrade_schema(db.engine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    db = Database(url)
    assert schema_drift(db) == []
    db.dispose()


def test_replicas_starting_together_on_an_empty_database_share_one_operator(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("empty")
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    started: list[Services] = []

    def replica(number: int) -> None:
        settings = ExchangeSettings(
            data_dir=tmp_path / f"replica{number}", operator_key=OPERATOR_KEY, database_url=url
        )
        try:
            start.wait()
            started.append(build_services(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(started) == 4
    with started[0].db.session() as session:
        operators = session.scalars(
            select(Organisation.id).where(Organisation.kind == OrganisationKind.operator.value)
        ).all()
    assert operators == [OPERATOR_ID]
    for services in started:
        services.db.dispose()
    postgres.drop_database(url)


@pytest.fixture
def pg_exchange(postgres: PostgresServer, tmp_path: Path) -> Any:
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange",
        operator_key=OPERATOR_KEY,
        database_url=postgres.create_database("claims"),
    )
    with TestClient(create_app(settings)) as client:
        yield Exchange(client)
    postgres.drop_database(str(settings.database_url))


def test_a_claim_skips_a_job_another_transaction_holds(
    pg_exchange: Exchange, postgres: PostgresServer, make_ct: Any
) -> None:
    orgs = set_up_parties(pg_exchange)
    first = pg_exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    second = pg_exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    database = str(pg_exchange.client.app.state.services.db.engine.url.database)
    with psycopg.connect(postgres.dsn(database)) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first["id"],))
        claimed: list[Any] = []
        claimer = threading.Thread(target=lambda: claimed.append(pg_exchange.claim(orgs["vendor"])))
        claimer.start()
        claimer.join(timeout=30)
        assert not claimer.is_alive(), "the claim waited on a row lock instead of skipping it"
        assert claimed[0]["job"]["id"] == second["id"]
        other.rollback()
    again = pg_exchange.claim(orgs["vendor"])
    assert again is not None and again["job"]["id"] == first["id"]
    assert pg_exchange.claim(orgs["vendor"]) is None


def test_replicas_append_to_one_audit_chain(postgres: PostgresServer) -> None:
    """Two replicas store entries and link them at the same time: one chain, no fork."""
    url = postgres.create_database("audit")
    migrate = Database(url)
    upgrade_schema(migrate.engine)
    # Two replicas: each its own engine and its own in-process lock, as in two processes.
    replicas = [AuditLog(Database(url)) for _ in range(2)]
    start = threading.Barrier(6)
    stored = threading.Event()
    linked = [0, 0]

    def append(log: AuditLog, who: str) -> None:
        start.wait()
        for n in range(40):
            log.record(Actor(who, "hospital"), "read", "job", f"{who}-{n}")

    def link(number: int) -> None:
        start.wait()
        while True:
            done = stored.is_set()
            linked[number] += replicas[number].chain(limit=7)
            if done and sum(linked) == 160:
                return

    appenders = [
        threading.Thread(target=append, args=(replicas[i % 2], f"org{i}")) for i in range(4)
    ]
    linkers = [threading.Thread(target=link, args=(i,), daemon=True) for i in range(2)]
    for thread in appenders + linkers:
        thread.start()
    for thread in appenders:
        thread.join(timeout=60)
    stored.set()
    for thread in linkers:
        thread.join(timeout=60)
    with migrate.session() as session:
        entries = list(session.scalars(in_chain_order()))
        problems = verify_chain(entries)
        assert unlinked_count(session) == 0
    assert len(entries) == 160 and sum(linked) == 160
    assert problems == []
    assert len({e.prev_hash for e in entries}) == 160, "two entries share a predecessor"
    assert [e.chain_seq for e in entries] == list(range(1, 161))
    migrate.dispose()


def test_a_database_outage_answers_503_and_the_exchange_recovers(tmp_path: Path) -> None:
    own = start_postgres()  # this test stops its database: it gets one of its own
    try:
        settings = ExchangeSettings(
            data_dir=tmp_path / "exchange",
            operator_key=OPERATOR_KEY,
            database_url=own.create_database("outage"),
        )
        with TestClient(create_app(settings)) as client:
            exchange = Exchange(client)
            hospital = exchange.org("hospital-a", "hospital")
            own.stop()
            down = client.get("/jobs", headers=hospital.headers)
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert "database is unavailable" in down.json()["detail"]
            scraped = client.get("/metrics").text
            assert "aifi_exchange_database_up 0.0" in scraped
            assert 'aifi_exchange_errors_total{kind="unavailable"} 1.0' in scraped
            own.start()
            up = client.get("/jobs", headers=hospital.headers)
            assert up.status_code == 200 and up.json() == []
    finally:
        own.destroy()


#: What `announce` sends when another replica made a job of vendor-a's product-a claimable.
ANOTHER_REPLICAS_CHANGE = "another-replica claimable vendor-a product-a"


def _announce_from_another_replica(postgres: PostgresServer, url: str) -> None:
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, ANOTHER_REPLICAS_CHANGE))


@contextlib.asynccontextmanager
async def _listening(url: str, notifier: ChangeNotifier) -> AsyncIterator[None]:
    """A replica's listener, started; entered once it listens (it then wakes every waiter)."""
    notifier.bind(asyncio.get_running_loop())
    # Waiting before the listener starts: started first, it may listen (and wake the waiters
    # there are) before this waiter is registered, and the wake is missed (seen on a busy host).
    listening = await _registered(notifier.wait(60))
    listener = ReplicaChanges(url, notifier)
    listener.start()
    try:
        await asyncio.wait_for(listening, 30)
        yield
    finally:
        listener.stop()


async def _registered(waiter: Awaitable[None]) -> asyncio.Task[None]:
    """`waiter` as a task, registered with the notifier before anything is sent."""
    task = asyncio.ensure_future(waiter)
    await asyncio.sleep(0)
    return task


def test_a_failure_while_hearing_a_change_does_not_leave_the_replica_deaf(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("deaf")

    class Flaky(ChangeNotifier):
        """Fails on the first change it is told of, as a bug in handling one would."""

        failed = False

        def notify(self, **change: Any) -> None:
            if change.get("vendor_id") and not self.failed:
                self.failed = True
                raise RuntimeError("a bug while handling a change")
            super().notify(**change)

    async def scenario() -> None:
        notifier = Flaky()
        async with _listening(url, notifier):
            waiting = await _registered(notifier.wait_claimable(60, "vendor-a"))
            _announce_from_another_replica(postgres, url)
            # The listener survives the failure and listens again, waking waiters to look.
            await asyncio.wait_for(waiting, 30)
            assert notifier.failed

    asyncio.run(scenario())
    postgres.drop_database(url)


def _socket_from(local_port: int, server_port: int) -> socket.socket:
    """This process's TCP connection from `local_port` to `server_port` on loopback (a
    duplicate, to be closed)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            opened = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue  # not a socket
        tcp = opened.family == socket.AF_INET and opened.type == socket.SOCK_STREAM
        try:
            if tcp and (opened.getsockname()[1], opened.getpeername()[1]) == (
                local_port,
                server_port,
            ):
                return opened
        except OSError:
            pass  # not connected
        opened.close()
    raise AssertionError(f"no connection from port {local_port} to {server_port}")


def _listener_port(postgres: PostgresServer, database: str) -> int:
    """The client port of the session listening on the database (other connections of this
    process, a pool earlier tests left, go to the same server port)."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        [(port,)] = admin.execute(
            "SELECT client_port FROM pg_stat_activity WHERE datname = %s AND query = %s",
            (database, f"LISTEN {CHANNEL}"),
        ).fetchall()
    return int(port)


def test_the_listening_connection_notices_a_silent_loss(postgres: PostgresServer) -> None:
    """It only reads: a connection lost without a word (an address moved by a failover, a
    firewall dropping an idle flow) must not leave the replica deaf for hours. TCP keepalives
    probe it after 30 s idle, every 10 s, three times."""
    url = postgres.create_database("keepalive")

    async def scenario() -> None:
        async with _listening(url, ChangeNotifier()):
            local = _listener_port(postgres, url.rsplit("/", 1)[1])
            with _socket_from(local, postgres.port) as connection:
                assert connection.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                tcp = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                probes = [connection.getsockopt(socket.IPPROTO_TCP, option) for option in tcp]
                assert probes == [30, 10, 3]

    asyncio.run(scenario())
    postgres.drop_database(url)


def test_a_replica_hears_job_changes_committed_by_another(postgres: PostgresServer) -> None:
    """A vendor long-polling one replica is woken by a job another replica made ready."""
    url = postgres.create_database("listen")
    db = Database(url)
    upgrade_schema(db.engine)

    async def scenario() -> None:
        notifier = ChangeNotifier()
        async with _listening(url, notifier):
            waiting = await _registered(notifier.wait(60))
            other_vendor = await _registered(notifier.wait_claimable(60, "vendor-b"))
            claim = await _registered(notifier.wait_claimable(60, "vendor-a"))
            _announce_from_another_replica(postgres, url)
            await asyncio.wait_for(asyncio.gather(waiting, claim), 30)
            assert not other_vendor.done()
            other_vendor.cancel()

    asyncio.run(scenario())
    db.dispose()
    postgres.drop_database(url)


def test_another_replicas_change_wakes_only_the_organisations_it_touched(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("touched")

    async def scenario() -> None:
        notifier = ChangeNotifier()
        async with _listening(url, notifier):
            own = await _registered(notifier.wait(60, "hospital-a"))
            other = await _registered(notifier.wait(60, "hospital-b"))
            operator = await _registered(notifier.wait(60))
            # hospital-a's job of vendor-a ended on another replica.
            with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as peer:
                ended = change_payload(
                    "another-replica", False, "vendor-a", "product-a", ("hospital-a", "vendor-a")
                )
                peer.execute("SELECT pg_notify(%s, %s)", (CHANNEL, ended))
            await asyncio.wait_for(asyncio.gather(own, operator), 30)
            await asyncio.sleep(0)
            assert not other.done()
            # A replica of the earlier release names no organisations: everyone looks.
            _announce_from_another_replica(postgres, url)
            await asyncio.wait_for(other, 30)

    asyncio.run(scenario())
    postgres.drop_database(url)


def test_a_replica_whose_listening_connection_is_cut_listens_again(
    postgres: PostgresServer,
) -> None:
    """The listener sleeps on its connection's socket; a connection the server ends (a
    restart, an operator's pg_terminate_backend) wakes it, and it listens on a new one."""
    url = postgres.create_database("cut")
    admin_dsn = postgres.dsn(url.rsplit("/", 1)[1])

    def listening_backends() -> list[int]:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE query = %s AND datname = current_database()",
                (f"LISTEN {CHANNEL}",),
            ).fetchall()
        return [row[0] for row in rows]

    async def scenario() -> None:
        notifier = ChangeNotifier()
        async with _listening(url, notifier):
            [first] = listening_backends()
            # Listening again wakes every waiter to look: that is what this one waits for.
            relistened = await _registered(notifier.wait_claimable(60))
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            await asyncio.wait_for(relistened, 30)
            [second] = listening_backends()
            assert second != first
            # And the new connection hears changes.
            claim = await _registered(notifier.wait_claimable(60, "vendor-a"))
            _announce_from_another_replica(postgres, url)
            await asyncio.wait_for(claim, 30)
        # Stopping closes its connection (the server ends the backend soon after).
        wait_for(lambda: listening_backends() == [], 30, "the listener's backend to end")

    asyncio.run(scenario())
    postgres.drop_database(url)


def test_a_busy_replica_keeps_its_connections_open(postgres: PostgresServer) -> None:
    """More sessions at once than a replica has worker threads reuse pooled connections:
    none is opened and closed per request (which costs PostgreSQL a new server process)."""
    url = postgres.create_database("pool")
    settings = ExchangeSettings(database_url=url)
    db = Database(url, settings.resolved_pool_size())
    opened: list[int] = []
    event.listen(db.engine, "connect", lambda *_args: opened.append(1))
    workers = 30  # above the replica's 20 worker threads, below the pool's 40 connections
    # A pool too small to hold every session at once breaks the barrier instead of hanging.
    together = threading.Barrier(workers, timeout=30)
    failures: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(20):
                together.wait()  # every round, all sessions are open at the same time
                with db.session() as session:
                    session.execute(select(1)).scalar()
                    together.wait()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)
            together.abort()

    threads = [threading.Thread(target=requests) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    db.dispose()
    assert not failures, failures[0]
    assert len(opened) == workers  # one each, kept for all twenty rounds


def test_pooled_connections_the_server_closed_are_replaced_before_use(
    postgres: PostgresServer,
) -> None:
    """Connections the server ended while they sat in the pool (a restart, an operator's
    `pg_terminate_backend`) cost no request an error: each is swapped for a fresh one when
    it is taken from the pool."""
    url = postgres.create_database("closed")
    db = Database(url, 3)
    opened: list[int] = []
    event.listen(db.engine, "connect", lambda *_args: opened.append(1))

    def backends_at_once() -> set[int]:
        # Three sessions open together hold three pooled connections.
        with db.session() as a, db.session() as b, db.session() as c:
            return {s.execute(select(func.pg_backend_pid())).scalar_one() for s in (a, b, c)}

    first = backends_at_once()
    assert len(first) == 3 and backends_at_once() == first, "the pool keeps its connections"
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as admin:
        for pid in first:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def ended() -> bool:
            # pg_terminate_backend only signals: the server processes go a moment later.
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(first),)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_for(ended, 30, "the terminated server processes to go", 0.02)
    second = backends_at_once()
    db.dispose()
    postgres.drop_database(url)
    assert len(second) == 3 and not second & first
    assert len(opened) == 6
