"""A blob store or a database that runs out of space: the uploader gets a clear 507, and
nothing that was already accepted is lost. Each sits on a real tmpfs, so the disk really
fills: SQLite's file, or a PostgreSQL tablespace holding the exchange's every table."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydicom
import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.audit import SYSTEM, AuditLog, check_chain
from aifi.exchange.audit_archive import AuditArchiver, archives
from aifi.exchange.blobs import open_blob_store
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database, upgrade_schema
from aifi.exchange.errors import StorageFull
from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.products import tissue_volume
from aifi.vendor import VendorClient, Worker
from aifi.vendor import worker as worker_module
from scale.conftest import set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import PostgresServer, wait_for
from support.peers import fill, small_disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "tiny") as folder:
        yield folder


def test_a_full_blob_store_refuses_with_507_and_keeps_what_it_had(
    tiny_disk: Path, tmp_path: Path, make_ct: Any
) -> None:
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange",  # the database is elsewhere: only blobs are short
        operator_key=OPERATOR_KEY,
        blob_url=f"file://{tiny_disk}",
    )
    with TestClient(create_app(settings)) as client:
        exchange = Exchange(client)
        orgs = set_up_parties(exchange)
        hospital = orgs["hospital"]
        study = make_ct(slices=12, size=200)  # about 80 KB each: ~1 MB in all
        study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
        job = exchange.job(hospital, "product-a", study_uid)
        # Fill the disk up to the last 100 KB, then send the study.
        (tiny_disk / "ballast").write_bytes(b"\0" * (2 * 1024 * 1024 - 100 * 1024 - 65536))

        accepted: list[Path] = []
        refusal = None
        for path in study:
            answer = exchange.upload(hospital, job["id"], path)
            if answer.status_code != 201:
                refusal = answer
                break
            accepted.append(path)
        assert refusal is not None, "a 2 MiB disk cannot hold the study"
        assert refusal.status_code == 507
        assert "blob store is full" in refusal.json()["detail"]
        assert list((tiny_disk / ".incoming").iterdir()) == [], "no half-written upload left"

        seen = client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert seen["input_count"] == len(accepted)
        for path in accepted:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            body = client.get(f"/jobs/{job['id']}/inputs/{uid}", headers=hospital.headers)
            assert body.status_code == 200
            assert (
                hashlib.sha256(body.content).digest() == hashlib.sha256(path.read_bytes()).digest()
            )
        metrics = client.get("/metrics").text
        assert 'aifi_exchange_errors_total{kind="storage_full"} 1.0' in metrics
        # The exchange's own trouble, not a refusal of the hospital: not in its access log.
        audit = client.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers)
        assert [e for e in audit.json() if e["outcome"] == "refused"] == []

        # Space freed: the same upload now succeeds (the uploader's retry is all it takes).
        (tiny_disk / "ballast").unlink()
        assert exchange.upload(hospital, job["id"], study[len(accepted)]).status_code == 201


def test_an_audit_archive_that_finds_the_store_full_moves_nothing(
    tiny_disk: Path, tmp_path: Path
) -> None:
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, blob_url=f"file://{tiny_disk}"
    )
    db = Database(settings.resolved_database_url())
    upgrade_schema(db.engine)
    log = AuditLog(db)
    for number in range(2000):  # incompressible details: the archive needs a few hundred KB
        log.record(SYSTEM, "read", "job", f"job-{number}", detail=secrets.token_hex(100))
    log.chain()
    blobs = open_blob_store(settings.resolved_blob_url())
    ballast = fill(tiny_disk)
    archiver = AuditArchiver(db, blobs, log, settings)

    with pytest.raises(StorageFull, match="no room to write an audit archive"):
        archiver.archive_before(utcnow())
    assert check_chain(db).entries == 2000, "every entry still in the table"
    assert archives(db) == []
    assert list(blobs.incoming.iterdir()) == [], "no half-written archive left"

    ballast.unlink()
    (archive,) = archiver.archive_before(utcnow())
    assert archive.entries == 1999  # the newest linked entry stays
    db.dispose()


def test_a_database_with_no_room_refuses_with_507_and_keeps_what_it_had(tmp_path: Path) -> None:
    """The exchange's SQLite file on a real 8 MiB disk that fills."""
    with small_disk(tmp_path / "db", "8m") as disk:
        settings = ExchangeSettings(
            data_dir=disk / "exchange",  # the blobs are elsewhere: only the database is short
            operator_key=OPERATOR_KEY,
            blob_url=f"file://{tmp_path / 'blobs'}",
        )
        refuses_with_507_and_keeps_what_it_had(settings, disk)


def refuses_with_507_and_keeps_what_it_had(settings: ExchangeSettings, disk: Path) -> None:
    """With `disk`, which holds the exchange's database, full: jobs are opened until one finds
    no room and is refused with 507 (counted as storage_full, which pages), not the 503 of a
    database that is merely unavailable; every job answered 201, the one opened before among
    them, is there and the refused one is not half there; with room again the same request
    succeeds."""
    with TestClient(create_app(settings)) as client:
        exchange = Exchange(client)
        hospital = set_up_parties(exchange)["hospital"]
        accepted = [exchange.job(hospital, "product-a", "1.2.826.0.1.3680043.8.498.1")["id"]]
        ballast = fill(disk)
        # A job costs a few hundred bytes: SQLite's journal finds no room at once, PostgreSQL
        # fills the tables' last free pages first, until one of them must grow.
        for number in range(2, 1000):
            body = {
                "product_id": "product-a",
                "study_uid": f"1.2.826.0.1.3680043.8.498.{number}",
                "patient_pseudonym": "PTEST",
                "idempotency_key": f"after-the-disk-filled-{number}",
            }
            refused = client.post("/jobs", json=body, headers=hospital.headers)
            if refused.status_code != 201:
                break
            accepted.append(refused.json()["id"])
        assert refused.status_code == 507, refused.text
        assert "database has no room to write" in refused.json()["detail"]
        assert 'aifi_exchange_errors_total{kind="storage_full"} 1.0' in client.get("/metrics").text
        ballast.unlink()
        listed = client.get("/jobs?limit=1000", headers=hospital.headers).json()
        assert sorted(job["id"] for job in listed) == sorted(accepted)
        again = client.post("/jobs", json=body, headers=hospital.headers)
        assert again.status_code == 201, again.text
        listed = client.get("/jobs?limit=1000", headers=hospital.headers).json()
        assert sorted(job["id"] for job in listed) == sorted([*accepted, again.json()["id"]])


@contextmanager
def database_on_a_small_disk(postgres: PostgresServer, disk: Path) -> Iterator[str]:
    """A new PostgreSQL database whose tables and indexes all live on `disk` (a tablespace
    there; the server's own files and its WAL stay on its data disk); yields its URL."""
    folder = disk / "tablespace"
    folder.mkdir(mode=0o700)
    if postgres.as_user:
        shutil.chown(folder, "postgres", "postgres")
    name = f"on_a_small_disk_{secrets.token_hex(4)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
        conn.execute(f"CREATE DATABASE {name} TABLESPACE {name}")
    try:
        yield postgres.url(name)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"DROP TABLESPACE IF EXISTS {name}")


@pytest.fixture
def disk_for_postgres() -> Iterator[Path]:
    """A real 32 MiB disk mounted under /tmp, not in the test's own folder: the server runs
    as `postgres`, which may not enter the folders above a test's."""
    mount_point = Path(tempfile.mkdtemp(prefix="aifi-pg-disk-"))
    try:
        with small_disk(mount_point, "32m") as disk:
            yield disk
    finally:
        mount_point.rmdir()


def test_a_postgresql_database_with_no_room_refuses_with_507_and_keeps_what_it_had(
    postgres: PostgresServer, disk_for_postgres: Path, tmp_path: Path
) -> None:
    """PostgreSQL's tables on a real 32 MiB disk that fills: the write that must grow a table
    gets the server's disk_full (SQLSTATE 53100)."""
    with database_on_a_small_disk(postgres, disk_for_postgres) as database_url:
        settings = ExchangeSettings(
            data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, database_url=database_url
        )
        refuses_with_507_and_keeps_what_it_had(settings, disk_for_postgres)


def test_a_result_the_full_store_refuses_is_kept_and_handed_in_once_there_is_room(
    tiny_disk: Path, tmp_path: Path, make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vendor's result finds the exchange's blob store full (507). The worker keeps it and
    tries again, its heartbeats going on, rather than let the lease run out and the study be
    analysed again (and the attempt counted): once the operator frees room, the job completes
    on its first attempt."""
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, blob_url=f"file://{tiny_disk}"
    )
    with ExchangeThread(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        exchange = Exchange(http)  # an httpx client, as a TestClient is
        orgs = set_up_parties(exchange)
        job = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
        ballast = fill(tiny_disk)
        vendor = VendorClient(server.url, orgs["vendor"].key)
        # The exchange asks for a minute (Retry-After: 60); this test does not wait that long.
        monkeypatch.setattr(worker_module, "STORAGE_LONGEST_PAUSE", 1.0)
        worker = Worker(
            vendor, tissue_volume.run, product_ids=["product-a"], lease_seconds=30, workdir=tmp_path
        )
        done: list[str | None] = []
        thread = threading.Thread(target=lambda: done.append(worker.run_once(wait_seconds=10)))
        thread.start()

        def refused_for_room() -> float:
            found = re.search(
                r'errors_total\{kind="storage_full"\} (\S+)', http.get("/metrics").text
            )
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: refused_for_room() >= 1, 60, "the result to find the store full")
        ballast.unlink()
        thread.join(timeout=120)
        vendor.close()
        assert done == [job["id"]]
        seen = http.get(f"/jobs/{job['id']}", headers=orgs["hospital"].headers).json()
        assert seen["state"] == "completed" and seen["attempts"] == 1, seen
