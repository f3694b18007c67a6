"""Retention: inputs go a set time after their job ends, results a set time after delivery;
a job that has not ended is never touched, and every purge is in the audit log."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom

from aifi.exchange.blob_keys import input_key, result_key
from aifi.exchange.blobs import TempBlob
from aifi.exchange.clock import utcnow
from scale.conftest import ExchangeFactory, finish_job, lease_headers, set_up_parties
from scale.servers import wait_for

HOUR = 3600.0


def blob_exists(exchange: Any, key: str) -> bool:
    blobs = exchange.client.app.state.services.blobs
    try:
        return blobs.size(key) >= 0
    except Exception:
        return False


def input_keys(exchange: Any, job_id: str) -> list[str]:
    from sqlalchemy import select

    from aifi.exchange.models import JobInput

    services = exchange.client.app.state.services
    with services.db.session() as session:
        return list(session.scalars(select(JobInput.blob_key).where(JobInput.job_id == job_id)))


def failed_job(exchange: Any, hospital: Any, vendor: Any, make_ct: Any) -> dict[str, Any]:
    """A job its vendor claimed and failed: ended, its input still held."""
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    assert claim is not None and claim["job"]["id"] == job["id"]
    exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "no tissue"},
        headers=vendor.headers,
    ).raise_for_status()
    return dict(job)


def test_a_purge_takes_only_ended_jobs_and_is_audited(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    exchange = exchange_on(
        retain_inputs_seconds=HOUR, retain_results_seconds=24 * HOUR, retention_sweep_seconds=HOUR
    )
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]

    # A job in every stage of its life.
    held = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    held_claim = exchange.claim(vendor)
    assert held_claim is not None and held_claim["job"]["id"] == held["id"]
    delivered = exchange.ready_job(hospital, "product-a", make_ct(slices=2))
    delivered_sr = finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "d")
    ack = exchange.client.post(f"/jobs/{delivered['id']}/acknowledge", headers=hospital.headers)
    assert ack.status_code == 200
    undelivered = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    undelivered_sr = finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "u")
    failed = failed_job(exchange, hospital, vendor, make_ct)
    waiting = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    uploading_study = make_ct(slices=2)
    study_uid = pydicom.dcmread(uploading_study[0], stop_before_pixels=True).StudyInstanceUID
    uploading = exchange.job(hospital, "product-a", study_uid)
    assert exchange.upload(hospital, uploading["id"], uploading_study[0]).status_code == 201

    retention = exchange.client.app.state.retention
    soon = retention.sweep(now=utcnow() + timedelta(minutes=30))
    assert (soon.inputs, soon.results) == (0, 0), "nothing is past its retention time yet"

    report = retention.sweep(now=utcnow() + timedelta(days=365))
    ended = {delivered["id"], undelivered["id"], failed["id"]}
    assert report.inputs == 4  # 2 + 1 + 1 instances of the three ended jobs
    assert report.results == 1  # only the delivered job's SR; the other is not yet fetched
    assert report.jobs == ended

    for job in (delivered, undelivered, failed):
        assert not any(blob_exists(exchange, key) for key in input_keys(exchange, job["id"]))
        uid = exchange.client.get(f"/jobs/{job['id']}/inputs", headers=hospital.headers).json()
        gone = exchange.client.get(
            f"/jobs/{job['id']}/inputs/{uid[0]['sop_instance_uid']}", headers=hospital.headers
        )
        assert gone.status_code == 404
    # Jobs that have not ended keep every input, byte for byte.
    for job, headers in (
        (held, lease_headers(vendor, held_claim)),
        (waiting, hospital.headers),
        (uploading, hospital.headers),
    ):
        keys = input_keys(exchange, job["id"])
        assert keys and all(blob_exists(exchange, key) for key in keys)
        for item in exchange.client.get(f"/jobs/{job['id']}/inputs", headers=headers).json():
            body = exchange.client.get(
                f"/jobs/{job['id']}/inputs/{item['sop_instance_uid']}", headers=headers
            )
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == item["sha256"]
    # Results: gone after delivery, kept while the hospital has not fetched them.
    gone = exchange.client.get(f"/jobs/{delivered['id']}/results/sr.dcm", headers=hospital.headers)
    assert gone.status_code == 404 and delivered_sr
    kept = exchange.client.get(
        f"/jobs/{undelivered['id']}/results/sr.dcm", headers=hospital.headers
    )
    assert kept.status_code == 200 and kept.content == undelivered_sr

    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers)
    deletes = [e for e in audit.json() if e["action"] == "delete"]
    assert {(e["object_type"], e["object_id"]) for e in deletes} == {
        ("input", delivered["id"]),
        ("input", undelivered["id"]),
        ("input", failed["id"]),
        ("result", delivered["id"]),
    }
    assert all(e["role"] == "system" and "retention: purged" in e["detail"] for e in deletes)
    assert any("purged 2 input(s)" in e["detail"] for e in deletes)
    verify = exchange.client.get("/audit/verify", headers=exchange.operator.headers).json()
    assert verify["ok"], verify["problems"]

    again = retention.sweep(now=utcnow() + timedelta(days=365))
    assert (again.inputs, again.results) == (0, 0), "a purge is done once"


def left_behind(exchange: Any, key: str) -> str:
    """A blob stored under `key` with no row naming it, as an upload leaves one when its
    replica dies between storing the instance and recording it."""
    blobs = exchange.client.app.state.services.blobs
    folder = getattr(blobs, "incoming", None) or blobs.spool_dir
    path = Path(folder) / "left-behind.part"
    path.write_bytes(b"an instance never recorded")
    blobs.commit(TempBlob(path, path.stat().st_size, "-"), key)
    return key


def test_a_purge_also_takes_what_a_crash_left_in_the_jobs_folder(
    exchange_on: ExchangeFactory, make_ct: Any
) -> None:
    exchange = exchange_on(retain_inputs_seconds=HOUR, retention_sweep_seconds=HOUR)
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    ended = failed_job(exchange, hospital, vendor, make_ct)
    waiting = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    orphan = left_behind(exchange, input_key(ended["id"], "1.2.3"))
    kept = left_behind(exchange, input_key(waiting["id"], "1.2.3"))

    report = exchange.client.app.state.retention.sweep(now=utcnow() + timedelta(days=365))
    assert report.jobs == {ended["id"]}
    assert not blob_exists(exchange, orphan)
    assert not any(blob_exists(exchange, key) for key in input_keys(exchange, ended["id"]))
    assert blob_exists(exchange, kept), "a job that has not ended keeps its folder"
    assert all(blob_exists(exchange, key) for key in input_keys(exchange, waiting["id"]))


def test_a_purge_empties_the_folders_of_ended_jobs_no_row_names_anything_in(
    exchange_on: ExchangeFactory, make_ct: Any
) -> None:
    """A job cancelled before any instance was recorded, and a failed job without results,
    each hold only what a crashed upload left: retention still empties their folders, once,
    and audits it."""
    exchange = exchange_on(
        retain_inputs_seconds=HOUR, retain_results_seconds=HOUR, retention_sweep_seconds=HOUR
    )
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    study = make_ct(slices=1)
    study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    cancelled = exchange.job(hospital, "product-a", study_uid)
    exchange.client.post(
        f"/jobs/{cancelled['id']}/cancel", json={"reason": "sent twice"}, headers=hospital.headers
    ).raise_for_status()
    failed = failed_job(exchange, hospital, vendor, make_ct)
    exchange.client.post(
        f"/jobs/{failed['id']}/acknowledge", headers=hospital.headers
    ).raise_for_status()
    input_orphan = left_behind(exchange, input_key(cancelled["id"], "1.2.3"))
    result_orphan = left_behind(exchange, result_key(failed["id"], "sr.dcm"))

    retention = exchange.client.app.state.retention
    report = retention.sweep(now=utcnow() + timedelta(days=365))
    assert not blob_exists(exchange, input_orphan)
    assert not blob_exists(exchange, result_orphan)
    assert report.jobs == {cancelled["id"], failed["id"]}
    assert (report.inputs, report.results) == (1, 0)  # the failed job's one recorded instance
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers)
    deletes = {
        (e["object_type"], e["object_id"]): e["detail"]
        for e in audit.json()
        if e["action"] == "delete"
    }
    assert set(deletes) == {
        ("input", cancelled["id"]),
        ("input", failed["id"]),
        ("result", failed["id"]),
    }
    assert "purged 0 input(s), 0 bytes (1 blob(s) deleted" in deletes[("input", cancelled["id"])]
    assert "purged 0 result(s), 0 bytes (1 blob(s) deleted" in deletes[("result", failed["id"])]

    again = retention.sweep(now=utcnow() + timedelta(days=365))
    assert again.jobs == set(), "each ended job is swept once"


def test_retention_can_be_switched_off(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    exchange = exchange_on(retain_inputs_seconds=None, retain_results_seconds=None)
    orgs = set_up_parties(exchange)
    job = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    finish_job(exchange, orgs["vendor"], exchange.claim(orgs["vendor"]), tmp_path / "w")
    exchange.client.post(f"/jobs/{job['id']}/acknowledge", headers=orgs["hospital"].headers)
    report = exchange.client.app.state.retention.sweep(now=utcnow() + timedelta(days=3650))
    assert (report.inputs, report.results) == (0, 0)
    assert all(blob_exists(exchange, key) for key in input_keys(exchange, job["id"]))


def test_the_exchange_sweeps_on_its_own(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    exchange = exchange_on(retain_inputs_seconds=0, retention_sweep_seconds=0.2)
    orgs = set_up_parties(exchange)
    job = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    keys = input_keys(exchange, job["id"])
    assert all(blob_exists(exchange, key) for key in keys)
    finish_job(exchange, orgs["vendor"], exchange.claim(orgs["vendor"]), tmp_path / "w")
    purged = 'aifi_exchange_purged_objects_total{kind="input"} 1.0'
    # The sweeper deletes the blob, then records and counts it: wait for the count.
    wait_for(
        lambda: purged in exchange.client.get("/metrics").text,
        30,
        "the retention sweeper to purge an ended job's inputs and count them",
    )
    assert not any(blob_exists(exchange, key) for key in keys)
