"""The shortcuts that let a small job go through in fewer requests, and what they refuse.

A job that declares its instance count opens by itself; a claim lists the inputs; the last
result completes the job; a hospital lists ended jobs with their results and acknowledges
them together.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient
from sqlalchemy import event

from aifi.exchange.app import create_app
from aifi.exchange.services import build_services
from aifi.exchange.settings import ExchangeSettings
from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext
from scale.exchange_api import Exchange


def _study_uid(study: list[Path]) -> str:
    return str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _declared_job(exchange: Any, hospital: Any, study: list[Path], instances: int) -> Any:
    return exchange.job(hospital, "product-a", _study_uid(study), instances=instances)


def _result_of(study: list[Path], folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    return tissue_volume(JobContext(job={}, inputs=study, output_dir=folder))


def test_a_declared_job_opens_with_its_last_instance_and_takes_no_more(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=3)
    job = _declared_job(exchange, hospital, study[:2], instances=2)
    assert job["instances"] == 2 and not job["inputs_complete"]

    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    assert exchange.claim(vendor) is None  # one of two: not open yet
    assert exchange.upload(hospital, job["id"], study[1]).status_code == 201
    opened = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert opened["inputs_complete"] and opened["ready_at"] is not None
    assert opened["input_count"] == 2

    extra = exchange.upload(hospital, job["id"], study[2])
    assert extra.status_code == 409 and "no longer takes inputs" in extra.json()["detail"]
    claim = exchange.claim(vendor)
    assert claim is not None and claim["job"]["id"] == job["id"]
    assert claim["job"]["input_count"] == 2


def test_an_instance_beyond_the_declared_count_is_refused_and_loses_nothing(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    study = make_ct(slices=3)
    job = _declared_job(exchange, hospital, study, instances=3)
    # A hospital that declared 3 but sends an instance twice and then two new ones: the
    # repeat is stored once, the third distinct one opens the job.
    for path in (study[0], study[0], study[1]):
        assert exchange.upload(hospital, job["id"], path).status_code == 201
    held = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert held["input_count"] == 2 and not held["inputs_complete"]
    assert exchange.upload(hospital, job["id"], study[2]).status_code == 201

    other = make_ct(slices=2)
    small = exchange.job(hospital, "product-a", _study_uid(other), instances=1, key="small")
    assert exchange.upload(hospital, small["id"], other[0]).status_code == 201
    beyond = exchange.upload(hospital, small["id"], other[1])
    assert beyond.status_code == 409
    listed = exchange.client.get(f"/jobs/{small['id']}/inputs", headers=hospital.headers).json()
    assert [item["sop_instance_uid"] for item in listed] == [_sop_uid(other[0])]


def test_a_repeated_create_may_change_the_count_until_the_job_opens(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    study = make_ct(slices=3)
    job = _declared_job(exchange, hospital, study, instances=2)
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    again = _declared_job(exchange, hospital, study, instances=3)  # an instance came late
    assert again["id"] == job["id"] and again["instances"] == 3
    for path in study[1:]:
        assert exchange.upload(hospital, job["id"], path).status_code == 201
    body = {
        "product_id": "product-a",
        "study_uid": _study_uid(study),
        "patient_pseudonym": "PTEST",
        "idempotency_key": f"{_study_uid(study)}:product-a",
        "instances": 4,
    }
    late = exchange.client.post("/jobs", json=body, headers=hospital.headers)
    assert late.status_code == 409 and "already opened with 3" in late.json()["detail"]
    below = exchange.job(hospital, "product-a", "2.25.77", key="below", instances=1)
    assert below["instances"] == 1


def test_the_last_result_completes_the_job_and_a_refused_one_does_not(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=2)
    job = _declared_job(exchange, hospital, study, instances=2)
    for path in study:
        assert exchange.upload(hospital, job["id"], path).status_code == 201
    claim = exchange.claim(vendor)
    assert claim is not None
    assert {item["sop_instance_uid"] for item in claim["inputs"]} == {_sop_uid(p) for p in study}
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    result = _result_of(study, tmp_path / "out")

    refused = exchange.client.put(
        f"/jobs/{job['id']}/results/echo.dcm",
        params={"complete": "true"},
        content=study[0].read_bytes(),
        headers=lease,
    )
    assert refused.status_code == 422
    still = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert still["state"] == "accepted" and still["ended_at"] is None

    sr = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        content=result.files[0].path.read_bytes(),
        headers=lease,
    )
    assert sr.status_code == 201
    summary = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        params={"complete": "true"},
        content=json.dumps(result.summary).encode(),
        headers={"Content-Type": "application/json", **lease},
    )
    assert summary.status_code == 201, summary.text
    done = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert done["state"] == "completed" and done["summary"] == result.summary
    late = exchange.client.put(
        f"/jobs/{job['id']}/results/late.dcm",
        params={"complete": "true"},
        content=result.files[0].path.read_bytes(),
        headers=lease,
    )
    assert late.status_code == 409
    names = [
        r["name"]
        for r in exchange.client.get(f"/jobs/{job['id']}/results", headers=hospital.headers).json()
    ]
    assert names == ["sr.dcm", "summary.json"]


def test_hospitals_list_ended_jobs_with_results_and_acknowledge_them_together(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    ids = []
    for number in range(2):
        study = make_ct(slices=1)
        job = _declared_job(exchange, hospital, study, instances=1)
        assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
        claim = exchange.claim(vendor)
        assert claim is not None and claim["job"]["id"] == job["id"]
        sr = _result_of(study, tmp_path / f"out{number}").files[0].path
        put = exchange.client.put(
            f"/jobs/{job['id']}/results/sr.dcm",
            params={"complete": "true"},
            content=sr.read_bytes(),
            headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
        )
        assert put.status_code == 201
        ids.append(job["id"])
    waiting = _declared_job(exchange, hospital, make_ct(slices=1), instances=1)

    params = {"state": "completed", "acknowledged": "false", "with_results": "true"}
    listed = exchange.client.get("/jobs", params=params, headers=hospital.headers).json()
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert all([r["name"] for r in j["results"]] == ["sr.dcm"] for j in listed)
    plain = exchange.client.get("/jobs", params={"state": "completed"}, headers=hospital.headers)
    assert all(j["results"] is None for j in plain.json())
    refused = exchange.client.get("/jobs", params=params, headers=vendor.headers)
    assert refused.status_code == 403

    mixed = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": [*ids, waiting["id"]]}, headers=hospital.headers
    )
    assert mixed.status_code == 409 and waiting["id"] in mixed.json()["detail"]
    after = exchange.client.get("/jobs", params=params, headers=hospital.headers).json()
    assert len(after) == 2  # all or none: nothing was acknowledged
    walled = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": ids}, headers=parties["hospital_b"].headers
    )
    assert walled.status_code == 404

    acked = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": ids}, headers=hospital.headers
    )
    assert acked.status_code == 200
    first = {j["id"]: j["acknowledged_at"] for j in acked.json()}
    assert set(first) == set(ids) and all(first.values())
    again = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": ids}, headers=hospital.headers
    )
    assert {j["id"]: j["acknowledged_at"] for j in again.json()} == first
    assert exchange.client.get("/jobs", params=params, headers=hospital.headers).json() == []


def test_a_large_result_is_checked_before_its_transaction_and_completes_the_job(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """Above 1 MiB the lease is checked before the bytes are read and the result before the
    transaction that records it; the outcome is the same as for a small one."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = _declared_job(exchange, hospital, study, instances=1)
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    claim = exchange.claim(vendor)
    assert claim is not None
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    report = pydicom.dcmread(_result_of(study, tmp_path / "out").files[0].path)
    report.private_block(0x0011, "AIFI TEST", create=True).add_new(0x01, "OB", b"\0" * (3 << 20))
    large = tmp_path / "large-sr.dcm"
    report.save_as(large)
    assert large.stat().st_size > 3 << 20

    foreign = pydicom.dcmread(large)
    foreign.StudyInstanceUID = "2.25.1234"
    refused = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        params={"complete": "true"},
        content=_bytes_of(foreign, tmp_path / "foreign.dcm"),
        headers=lease,
    )
    assert refused.status_code == 422 and "own-study" in refused.json()["detail"]
    held = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert held["state"] == "accepted"

    stored = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        params={"complete": "true"},
        content=large.read_bytes(),
        headers=lease,
    )
    assert stored.status_code == 201, stored.text
    done = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert done["state"] == "completed"
    fetched = exchange.client.get(f"/jobs/{job['id']}/results/sr.dcm", headers=hospital.headers)
    assert fetched.content == large.read_bytes()


def test_a_large_upload_goes_to_the_blob_store_while_its_thread_holds_no_connection(
    settings: ExchangeSettings, make_ct: Any, tmp_path: Path
) -> None:
    """A large instance or result may take a while to reach the object store: its upload
    holds no database connection meanwhile (a pool of 40 would otherwise run dry), while a
    small one is stored inside its transaction, where that costs nothing."""
    services = build_services(settings)
    holders: set[int] = set()
    held_while_storing: dict[str, bool] = {}
    commit = services.blobs.commit

    def checked_out(_dbapi: Any, record: Any, _proxy: Any) -> None:
        record.info["thread"] = threading.get_ident()
        holders.add(threading.get_ident())

    def checked_in(_dbapi: Any, record: Any) -> None:
        holders.discard(record.info.pop("thread", None))

    def noting_commit(temp: Any, key: str) -> None:
        held_while_storing[key.split("/")[0] + ("-large" if temp.size > 1 << 20 else "")] = (
            threading.get_ident() in holders
        )
        commit(temp, key)

    event.listen(services.db.engine, "checkout", checked_out)
    event.listen(services.db.engine, "checkin", checked_in)
    services.blobs.commit = noting_commit  # type: ignore[method-assign]
    with TestClient(create_app(settings, services=services)) as client:
        exchange = Exchange(client)
        hospital = exchange.org("hospital-a", "hospital")
        vendor = exchange.org("vendor-a", "vendor")
        exchange.product(vendor, "product-a")
        exchange.subscribe(hospital, "product-a")
        study = make_ct(slices=2, size=1024)
        assert study[0].stat().st_size > 1 << 20
        job = _declared_job(exchange, hospital, study, instances=2)
        assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
        small = pydicom.dcmread(study[1])
        small.PixelData = b"\0" * 128
        small.Rows, small.Columns = 8, 8
        small_path = tmp_path / "small.dcm"
        small.save_as(small_path)
        assert exchange.upload(hospital, job["id"], small_path).status_code == 201
        claim = exchange.claim(vendor)
        assert claim is not None
        lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
        report = pydicom.dcmread(_result_of(study, tmp_path / "out").files[0].path)
        report.private_block(0x0011, "AIFI TEST", create=True).add_new(
            0x01, "OB", b"\0" * (2 << 20)
        )
        stored = client.put(
            f"/jobs/{job['id']}/results/sr.dcm",
            params={"complete": "true"},
            content=_bytes_of(report, tmp_path / "large-sr.dcm"),
            headers=lease,
        )
        assert stored.status_code == 201, stored.text
    assert held_while_storing == {
        "inputs-large": False,
        "inputs": True,
        "results-large": False,
    }


def _bytes_of(dataset: Any, path: Path) -> bytes:
    dataset.save_as(path)
    return path.read_bytes()


def test_a_claim_that_starts_at_once_puts_the_job_in_progress(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = _declared_job(exchange, hospital, study, instances=1)
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    claim = exchange.claim(vendor, start=True)
    assert claim is not None and claim["job"]["state"] == "in-progress"
    seen = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert seen["state"] == "in-progress" and seen["claimed_at"] is not None
    beat = exchange.client.post(
        f"/jobs/{job['id']}/heartbeat",
        json={"lease_token": claim["lease_token"]},
        headers=vendor.headers,
    )
    assert beat.status_code == 200 and beat.json()["state"] == "in-progress"


def test_instances_uploaded_at_once_open_the_job_exactly_when_the_last_is_stored(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """Uploads of one job that overlap still count each other: the job opens, with the full
    count, however their transactions interleave (on PostgreSQL they run side by side)."""
    hospital = parties["hospital_a"]
    for round_number in range(3):
        study = make_ct(slices=8)
        job = exchange.job(
            hospital, "product-a", _study_uid(study), instances=8, key=f"at-once-{round_number}"
        )
        start = threading.Barrier(len(study))

        def upload(path: Path, job_id: str = job["id"], start: Any = start) -> int:
            start.wait()
            return int(exchange.upload(hospital, job_id, path).status_code)

        with ThreadPoolExecutor(len(study)) as pool:
            statuses = list(pool.map(upload, study))
        assert statuses == [201] * len(study)
        seen = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert seen["input_count"] == 8
        assert seen["inputs_complete"], "every instance is stored, yet the job did not open"


@dataclass
class _Overlap:
    """Two uploads of one job, the first held in its blob store until the second answered."""

    first: Any
    second: Any
    second_answered_while_first_stored: bool
    keys: list[str]
    blobs: Any
    job: dict[str, Any]


def _second_upload_while_first_stores(
    settings: ExchangeSettings, make_ct: Any, instances: int
) -> _Overlap:
    services = build_services(settings)
    first_storing = threading.Event()
    second_answered = threading.Event()
    overlapped: list[bool] = []
    keys: list[str] = []
    commit = services.blobs.commit

    def slow_first_commit(temp: Any, key: str) -> None:
        keys.append(key)
        if not first_storing.is_set():
            first_storing.set()
            overlapped.append(second_answered.wait(timeout=20))
        commit(temp, key)

    services.blobs.commit = slow_first_commit  # type: ignore[method-assign]
    with TestClient(create_app(settings, services=services)) as client:
        exchange = Exchange(client)
        hospital = exchange.org("hospital-a", "hospital")
        exchange.product(exchange.org("vendor-a", "vendor"), "product-a")
        exchange.subscribe(hospital, "product-a")
        study = make_ct(slices=2)
        job = _declared_job(exchange, hospital, study, instances=instances)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(exchange.upload, hospital, job["id"], study[0])
            assert first_storing.wait(timeout=20)
            second = exchange.upload(hospital, job["id"], study[1])
            second_answered.set()
            first_answer = first.result()
        seen = client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    return _Overlap(first_answer, second, overlapped == [True], keys, services.blobs, seen)


def test_an_upload_sending_its_file_holds_up_no_other_upload_of_the_job(
    settings: ExchangeSettings, make_ct: Any
) -> None:
    """A study's instances are stored side by side: only recording an instance in the job's
    counts takes turns, not sending it to the blob store (on S3 a PUT per instance)."""
    uploads = _second_upload_while_first_stores(settings, make_ct, instances=2)
    assert uploads.first.status_code == 201
    assert uploads.second.status_code == 201
    assert uploads.second_answered_while_first_stored, (
        "the second upload waited for the first to be stored"
    )
    assert (uploads.job["input_count"], uploads.job["inputs_complete"]) == (2, True)


def test_an_instance_refused_at_its_turn_leaves_no_file_behind(
    settings: ExchangeSettings, make_ct: Any
) -> None:
    """The job opened with another instance while this one was being stored: the upload is
    refused, and the file it stored goes with it (no job lists it, so nothing would ever
    purge it)."""
    uploads = _second_upload_while_first_stores(settings, make_ct, instances=1)
    assert uploads.second_answered_while_first_stored
    assert uploads.second.status_code == 201
    refused = uploads.first
    assert refused.status_code == 409, refused.text
    assert "no longer takes inputs" in refused.json()["detail"]
    late_key, other_key = uploads.keys
    assert uploads.blobs.size(other_key) > 0
    with pytest.raises((FileNotFoundError, ClientError)):
        uploads.blobs.size(late_key)
    assert (uploads.job["input_count"], uploads.job["inputs_complete"]) == (1, True)
