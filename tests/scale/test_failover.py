"""docs/deploy.md's failover, done: a primary with a synchronous hot standby, the exchange's
database URL naming both (`target_session_attrs=read-write` picks the primary), the primary
lost at once and the standby promoted. The exchange answers 503 meanwhile and then carries on
on the new primary; no job it had acknowledged is lost; and the connection that hears other
replicas' changes finds the new primary too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.replica_changes import ReplicaChanges
from aifi.exchange.settings import ExchangeSettings
from scale.conftest import finish_job, set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import PG_USER, PostgresServer, start_postgres, wait_for

pytestmark = pytest.mark.peer


@pytest.fixture
def pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A durable primary and its synchronous standby: a commit returns once both hold it."""
    primary = start_postgres(durable=True)
    standby = None
    try:
        standby = primary.base_backup(standby=True)
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
        wait_for(lambda: _synchronous(primary), 60, "the standby to stream synchronously")
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def _synchronous(primary: PostgresServer) -> bool:
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        return (row.fetchone() or (0,))[0] == 1


def _both(primary: PostgresServer, standby: PostgresServer, database: str) -> str:
    return (
        f"postgresql+psycopg://{PG_USER}@/{database}?host=127.0.0.1:{primary.port}"
        f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
    )


def _answers(exchange: Exchange, headers: dict[str, str]) -> bool:
    return bool(exchange.client.get("/jobs", headers=headers).status_code == 200)


def test_the_exchange_fails_over_to_the_promoted_standby(
    pair: tuple[PostgresServer, PostgresServer], make_ct: Any, tmp_path: Path
) -> None:
    primary, standby = pair
    primary.create_database("exchange")
    url = _both(primary, standby, "exchange_1")
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, database_url=url
    )
    with TestClient(create_app(settings)) as client:
        exchange = Exchange(client)
        orgs = set_up_parties(exchange)
        hospital, vendor = orgs["hospital"], orgs["vendor"]
        waiting = [exchange.ready_job(hospital, "product-a", make_ct(slices=1)) for _ in range(2)]
        done = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
        # Jobs are claimed oldest first: the two waiting ones go before `done`.
        claims = [exchange.claim(vendor) for _ in range(3)]
        finish_job(exchange, vendor, claims[2], tmp_path / "done")

        primary.crash()
        assert client.get("/jobs", headers=hospital.headers).status_code == 503
        standby.promote()
        wait_for(lambda: _answers(exchange, hospital.headers), 60, "the exchange to fail over")

        jobs = {job["id"]: job for job in client.get("/jobs", headers=hospital.headers).json()}
        assert jobs[done["id"]]["state"] == "completed"
        assert {jobs[job["id"]]["state"] for job in waiting} == {"accepted"}  # claimed
        # And it writes on the new primary: the waiting jobs are finished there.
        for n, claim in enumerate(claims[:2]):
            finish_job(exchange, vendor, claim, tmp_path / f"after{n}")
        states = {job["state"] for job in client.get("/jobs", headers=hospital.headers).json()}
        assert states == {"completed"}


def test_replicas_hear_each_other_through_the_new_primary(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pair
    primary.create_database("exchange")
    heard = threading.Event()

    class Notifier:
        def notify(self, **_: Any) -> None:
            heard.set()

    listening = ReplicaChanges(_both(primary, standby, "exchange_1"), Notifier())  # type: ignore[arg-type]
    listening.start()
    try:
        assert heard.wait(30), "the listener did not connect to the primary"
        primary.crash()
        standby.promote()
        heard.clear()
        # Listening again, it wakes its waiters to look: it reached the new primary.
        assert heard.wait(60), "the listener did not find the new primary"
    finally:
        listening.stop()
