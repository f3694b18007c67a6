"""docs/deploy.md's restore drill, done: PostgreSQL copied to a scratch server by a base
backup, one replica started on it beside the same object store, the audit chain verified and
the results read back against their SHA-256; and a store older than the database answers 404
for an object it lost, never another object's bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aifi.exchange.app import create_app
from aifi.exchange.models import JobInput, JobResult
from aifi.exchange.settings import ExchangeSettings
from scale.conftest import finish_job, set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import PostgresServer, S3Server, start_postgres

pytestmark = pytest.mark.peer
#: Long enough that the held job's lease outlives the backup and the drill's start.
LEASE = 600.0


@pytest.fixture
def primary() -> Iterator[PostgresServer]:
    """A cluster of this test's own: the base backup copies all of it."""
    server = start_postgres()
    yield server
    server.destroy()


def _blob_key(services: Any, table: type[JobInput] | type[JobResult], job_id: str) -> str:
    with services.db.session() as session:
        return str(session.scalars(select(table.blob_key).where(table.job_id == job_id)).one())


def _exchange(settings: ExchangeSettings) -> Iterator[Exchange]:
    with TestClient(create_app(settings)) as client:
        yield Exchange(client)


def test_the_restore_drill(
    primary: PostgresServer, s3: S3Server, make_ct: Any, tmp_path: Path
) -> None:
    database = primary.create_database("exchange")
    blob_url = s3.blob_url(spool=str(tmp_path / "spool"))
    production = ExchangeSettings(
        data_dir=tmp_path / "production",
        operator_key=OPERATOR_KEY,
        database_url=database,
        blob_url=blob_url,
        lease_seconds=LEASE,
    )
    digests: dict[str, str] = {}
    for exchange in _exchange(production):
        orgs = set_up_parties(exchange)
        hospital, vendor = orgs["hospital"], orgs["vendor"]
        for n in range(3):
            job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
            sr = finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / f"job{n}")
            digests[job["id"]] = hashlib.sha256(sr).hexdigest()
        # A job under way, its one input over the size the API streams (1024² CT, 2 MiB).
        [large] = make_ct(slices=1, size=1024)
        exchange.ready_job(hospital, "product-a", [large])
        held = exchange.claim(vendor)
        assert held is not None
        [held_input] = held["inputs"]

    scratch = primary.base_backup()
    try:
        # The drill's replica keeps everything: it must not purge what production still holds.
        drill = ExchangeSettings(
            data_dir=tmp_path / "drill",
            operator_key=OPERATOR_KEY,
            database_url=scratch.url(database.rsplit("/", 1)[1]),
            blob_url=blob_url,
            retain_inputs_seconds=None,
            retain_results_seconds=None,
            retain_undelivered_seconds=None,
            expire_unfinished_seconds=None,
            lease_seconds=LEASE,
        )
        for exchange in _exchange(drill):
            verify = exchange.client.get("/audit/verify", headers=exchange.operator.headers)
            assert verify.status_code == 200 and verify.json()["ok"], verify.text
            for job_id, digest in digests.items():
                result = exchange.client.get(
                    f"/jobs/{job_id}/results/sr.dcm", headers=hospital.headers
                )
                assert result.status_code == 200, result.text
                assert hashlib.sha256(result.content).hexdigest() == digest

            # A store restored from an older copy than the database lacks this object.
            lost = next(iter(digests))
            services = exchange.client.app.state.services
            services.blobs.delete(_blob_key(services, JobResult, lost))
            missing = exchange.client.get(f"/jobs/{lost}/results/sr.dcm", headers=hospital.headers)
            assert missing.status_code == 404, missing.text
            assert "missing from the exchange's blob store" in missing.json()["detail"]

            # The same for a large object, which is streamed: the answer is 404 before any byte.
            where = f"/jobs/{held['job']['id']}/inputs/{held_input['sop_instance_uid']}"
            lease = {**vendor.headers, "X-Lease-Token": held["lease_token"]}
            streamed = exchange.client.get(where, headers=lease)
            assert streamed.status_code == 200 and streamed.content == large.read_bytes()
            services.blobs.delete(_blob_key(services, JobInput, held["job"]["id"]))
            gone = exchange.client.get(where, headers=lease)
            assert gone.status_code == 404, gone.text
    finally:
        scratch.destroy()
