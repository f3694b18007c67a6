"""A blob store that runs out of space: the uploader gets a clear 507, and nothing that was
already accepted is lost. The store sits on a real 2 MiB tmpfs, so the disk really fills."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from aifi.exchange.settings import ExchangeSettings
from scale.conftest import set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
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
    """The exchange's SQLite file on a real 8 MiB disk that fills: a write is refused with
    507 (counted as storage_full, which pages), not the 503 of a database that is merely
    unavailable; what was stored stays, and once there is room the same request succeeds."""
    with small_disk(tmp_path / "db", "8m") as disk:
        settings = ExchangeSettings(
            data_dir=disk / "exchange",  # the blobs are elsewhere: only the database is short
            operator_key=OPERATOR_KEY,
            blob_url=f"file://{tmp_path / 'blobs'}",
        )
        with TestClient(create_app(settings)) as client:
            exchange = Exchange(client)
            hospital = set_up_parties(exchange)["hospital"]
            before = exchange.job(hospital, "product-a", "1.2.826.0.1.3680043.8.498.1")
            ballast = fill(disk)
            body = {
                "product_id": "product-a",
                "study_uid": "1.2.826.0.1.3680043.8.498.2",
                "patient_pseudonym": "PTEST",
                "idempotency_key": "after-the-disk-filled",
            }
            refused = client.post("/jobs", json=body, headers=hospital.headers)
            assert refused.status_code == 507, refused.text
            assert "database has no room to write" in refused.json()["detail"]
            assert (
                'aifi_exchange_errors_total{kind="storage_full"} 1.0' in client.get("/metrics").text
            )
            ballast.unlink()
            again = client.post("/jobs", json=body, headers=hospital.headers)
            assert again.status_code == 201, again.text
            listed = client.get("/jobs", headers=hospital.headers).json()
            assert sorted(job["id"] for job in listed) == sorted([before["id"], again.json()["id"]])
