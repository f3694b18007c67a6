"""Every read of pixels or results leaves exactly one entry, naming the patient pseudonym;
a refused read leaves a refusal and nothing else. On PostgreSQL a read runs in autocommit and
its entry is stored before it answers, on SQLite just after its transaction: the log must read
the same on both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from sqlalchemy import text

from aifi.exchange.db import Database
from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext
from scale.exchange_api import OPERATOR_KEY, backend_settings

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


def _entries(exchange: Any, job_id: str) -> list[tuple[str, str, str, str, str]]:
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    return [
        (e["action"], e["object_type"], e["object_id"], e["outcome"], e["patient_pseudonym"])
        for e in audit
        if e["object_id"].startswith(job_id) and e["action"] in ("read", "search")
    ]


def test_each_read_is_audited_once_and_a_refused_read_as_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    sop_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)
    study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    job = exchange.job(hospital, "product-a", study_uid, instances=1)
    job_id = job["id"]
    assert exchange.upload(hospital, job_id, study[0]).status_code == 201
    claim = exchange.claim(vendor)
    assert claim is not None
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}

    assert exchange.client.get(f"/jobs/{job_id}/inputs/{sop_uid}", headers=lease).status_code == 200
    no_lease = exchange.client.get(f"/jobs/{job_id}/inputs/{sop_uid}", headers=vendor.headers)
    assert no_lease.status_code == 409
    (tmp_path / "out").mkdir()
    sr = tissue_volume(JobContext(job={}, inputs=study, output_dir=tmp_path / "out")).files[0]
    put = exchange.client.put(
        f"/jobs/{job_id}/results/sr.dcm",
        params={"complete": "true"},
        content=sr.path.read_bytes(),
        headers=lease,
    )
    assert put.status_code == 201

    listed = exchange.client.get(
        "/jobs", params={"with_results": "true", "state": "completed"}, headers=hospital.headers
    )
    assert [j["id"] for j in listed.json()] == [job_id]
    got = exchange.client.get(f"/jobs/{job_id}/results/sr.dcm", headers=hospital.headers)
    assert got.status_code == 200 and got.content == sr.path.read_bytes()
    missing = exchange.client.get(f"/jobs/{job_id}/results/other.dcm", headers=hospital.headers)
    assert missing.status_code == 404

    assert sorted(_entries(exchange, job_id)) == sorted(
        [
            ("read", "input", f"{job_id}/{sop_uid}", "success", "PTEST"),
            ("read", "input", f"{job_id}/{sop_uid}", "refused", ""),
            ("search", "result", job_id, "success", "PTEST"),
            ("read", "result", f"{job_id}/sr.dcm", "success", "PTEST"),
            ("read", "result", f"{job_id}/other.dcm", "refused", ""),
        ]
    )
    verified = exchange.client.get("/audit/verify", headers=OPERATOR).json()
    assert verified["ok"], verified


def _transaction_state(database: Database, pid: int) -> str:
    """What PostgreSQL says backend `pid` is doing, asked on a connection of its own."""
    dsn = database.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as other:
        row = other.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert row is not None
    return str(row[0])


def test_on_postgresql_a_read_holds_no_transaction_and_its_connection_goes_back_transactional(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A read costs no BEGIN and COMMIT, and holds no snapshot while it runs; the same pooled
    connection must then run the next change in a transaction again, or a change's statements
    and its audit entry would commit one by one."""
    chosen = backend_settings("postgresql", tmp_path, request.config)
    database = Database(str(chosen.settings.database_url), pool_size=1)
    try:
        with database.reading() as session:
            session.execute(text("SELECT 1"))
            reader = session.connection().connection.dbapi_connection
            assert reader is not None
            pid = reader.info.backend_pid
            assert _transaction_state(database, pid) == "idle"
        with database.session() as session:
            session.execute(text("SELECT 1"))
            writer = session.connection().connection.dbapi_connection
            assert writer is not None and writer.info.backend_pid == pid  # the same connection
            assert _transaction_state(database, pid) == "idle in transaction"
    finally:
        database.dispose()
        chosen.close()
