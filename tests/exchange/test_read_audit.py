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
from exchange.test_blob_gone import blob_missing_counted
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


@pytest.mark.parametrize("size", [16, 1024], ids=["small", "large"])
def test_a_blob_gone_before_it_is_read_is_a_404_on_record_as_refused(
    exchange: Any,
    parties: dict[str, Any],
    make_ct: Any,
    size: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The row is found but its blob is gone, lost with a store restored to an earlier moment
    (the job is not due for retention): the caller gets 404 saying so, the log does not say
    the pixels were read, and the operator hears of it (`BlobsMissing`)."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1, size=size)
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    [item] = claim["inputs"]
    services = exchange.client.app.state.services
    with services.db.session() as session:
        [key] = session.execute(
            text("SELECT blob_key FROM job_inputs WHERE job_id = :id"), {"id": job["id"]}
        ).scalars()
    services.blobs.delete(key)
    got = exchange.client.get(
        f"/jobs/{job['id']}/inputs/{item['sop_instance_uid']}",
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert got.status_code == 404
    assert got.json()["detail"] == (
        f"job {job['id']}'s input {item['sop_instance_uid']} is missing from the exchange's "
        "blob store; the exchange's operator is alerted"
    )
    reads = [e for e in _entries(exchange, job["id"]) if e[:2] == ("read", "input")]
    assert [outcome for _action, _kind, _id, outcome, _p in reads] == ["refused"]
    assert blob_missing_counted(exchange) == 1
    [said] = [r for r in caplog.records if "missing from the blob store" in r.getMessage()]
    assert said.levelname == "ERROR" and job["id"] in said.getMessage()
    # The job cannot be run: its hospital and its vendor see that the exchange lost it, and
    # the product's failure of it will not count against the product.
    for party in (hospital, vendor):
        listed = exchange.client.get(f"/jobs/{job['id']}", headers=party.headers).json()
        assert listed["inputs_lost_at"] is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)  # files
def test_a_large_file_taken_while_it_is_sent_still_arrives_whole(
    exchange: Any, parties: dict[str, Any], make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large input in the local store, deleted (retention, a newer copy) once its download
    began: the download, which opened it, sends it whole."""
    from aifi.exchange.routers import data as data_module

    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1, size=1024)
    assert study[0].stat().st_size > data_module.INLINE_BYTES
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    [item] = claim["inputs"]
    fetched = data_module._fetched

    def then_deleted(services: Any, key: str, *args: Any) -> Any:
        blob = fetched(services, key, *args)
        services.blobs.delete(key)
        return blob

    monkeypatch.setattr(data_module, "_fetched", then_deleted)
    got = exchange.client.get(
        f"/jobs/{job['id']}/inputs/{item['sop_instance_uid']}",
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert got.status_code == 200
    assert got.content == study[0].read_bytes()
    assert got.headers["content-length"] == str(len(got.content))
