"""A database URL that leads, during a switchover, to a PostgreSQL server that cannot write.

For a while the name in AIFI_DATABASE_URL can lead to a server in recovery: the demoted primary
come back as a standby while DNS or the floating address still names it, or a multi-host URL
without `target_session_attrs=read-write`. Every write there fails with SQLSTATE 25006
(read_only_sql_transaction), and so does every read, which stores its access-log entry. The
exchange answers 503 with Retry-After, as for a database that is down: the gateway and the
vendor SDK retry, and nothing is lost. Here the database is made read-only for new sessions
and the pool's sessions are ended, as a failover ends them.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.settings import ExchangeSettings
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import PostgresServer


def _writable(postgres: PostgresServer, name: str, writable: bool) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        if writable:
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        else:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def test_a_server_that_cannot_write_is_a_503_to_retry_and_loses_nothing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("read_only")
    name = url.rsplit("/", 1)[1]
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, database_url=url
    )
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            exchange = Exchange(client)
            hospital = exchange.org("hospital-a", "hospital")
            vendor = exchange.org("vendor-a", "vendor")
            exchange.product(vendor, "product-a")

            _writable(postgres, name, False)
            read = client.get("/jobs", headers=hospital.headers)
            write = client.post(
                "/subscriptions", json={"product_id": "product-a"}, headers=hospital.headers
            )
            for answer in (read, write):
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "1"
                assert answer.json()["detail"] == (
                    "the exchange's database is unavailable; retry shortly"
                )
            metrics = client.get("/metrics").text
            assert 'aifi_exchange_errors_total{kind="unavailable"} 2.0' in metrics
            assert 'aifi_exchange_errors_total{kind="server"}' not in metrics

            # The switchover done: the same requests, retried, work.
            _writable(postgres, name, True)
            assert client.get("/jobs", headers=hospital.headers).status_code == 200
            again = client.post(
                "/subscriptions", json={"product_id": "product-a"}, headers=hospital.headers
            )
            assert again.status_code == 201, again.text
    finally:
        _writable(postgres, name, True)
        postgres.drop_database(url)
