"""Nothing the exchange keeps about a job names the hospital's own study or patient: not in
any column of its database (an idempotency key once carried the hospital's Study Instance
UID), nor in any file of its blob store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest

from aifi.phantoms import write_study
from support.national import National, started_gateway
from support.peers import storescu

pytestmark = pytest.mark.peer

IDENTITY = {"patient_id": "HOSP-0042", "patient_name": "Jansen^Anna", "accession_number": "ACC777"}


def test_the_exchange_keeps_no_identifier_of_the_hospital_s(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=4, size="small", identity=IDENTITY)
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    identifiers = {
        str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
        *(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files),
        *IDENTITY.values(), "Jansen",
    }  # fmt: skip
    with started_gateway(tmp_path, national) as gateway:
        storescu(files, gateway.port)
        assert gateway.wait_until(
            lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=120
        ), gateway.jobs()
    data = national.exchange.app.state.services.settings.data_dir
    database = sqlite3.connect(data / "exchange.db")
    try:
        dump = "\n".join(database.iterdump())
    finally:
        database.close()
    assert "idempotency_key" in dump and 'INSERT INTO "jobs"' in dump
    assert {name for name in identifiers if name in dump} == set()
    stored = [path for path in (data / "blobs").rglob("*") if path.is_file()]
    assert stored, "the job's inputs and results are in the blob store"
    for path in stored:
        content = path.read_bytes()
        assert {name for name in identifiers if name.encode() in content} == set(), path
