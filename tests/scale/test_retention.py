"""Retention: inputs go a set time after their job ends, results a set time after delivery;
a job that has not ended is never touched, and every purge is in the audit log."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import text

from aifi.exchange.blob_keys import input_folder, input_key, result_key
from aifi.exchange.blobs import STALE_UPLOAD_SECONDS, TempBlob
from aifi.exchange.clock import utcnow
from aifi.exchange.errors import BlobStoreUnavailable
from aifi.exchange.retention import Retention
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
        retain_inputs_seconds=HOUR,
        retain_results_seconds=24 * HOUR,
        retain_undelivered_seconds=None,
        retention_sweep_seconds=HOUR,
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

    sent = {
        job["id"]: exchange.client.get(f"/jobs/{job['id']}/inputs", headers=hospital.headers).json()
        for job in (delivered, undelivered, failed)
    }
    retention = exchange.client.app.state.retention
    soon = retention.sweep(now=utcnow() + timedelta(minutes=30))
    assert (soon.inputs, soon.results) == (0, 0), "nothing is past its retention time yet"

    report = retention.sweep(now=utcnow() + timedelta(days=365))
    ended = {delivered["id"], undelivered["id"], failed["id"]}
    assert report.inputs == 4  # 2 + 1 + 1 instances of the three ended jobs
    assert report.results == 1  # only the delivered job's SR; the other is not yet fetched
    assert report.jobs == ended

    for job in (delivered, undelivered, failed):
        blob_keys = [input_key(job["id"], item["sop_instance_uid"]) for item in sent[job["id"]]]
        assert blob_keys and not any(blob_exists(exchange, key) for key in blob_keys)
        # The rows go with the blobs (one per instance, nationally about a billion a year);
        # the job still says what was sent, and when it was purged.
        assert input_keys(exchange, job["id"]) == []
        url = f"/jobs/{job['id']}"
        assert exchange.client.get(f"{url}/inputs", headers=hospital.headers).json() == []
        now = exchange.client.get(url, headers=hospital.headers).json()
        assert now["input_count"] == len(sent[job["id"]]) and now["inputs_purged_at"]
        gone = exchange.client.get(
            f"{url}/inputs/{sent[job['id']][0]['sop_instance_uid']}", headers=hospital.headers
        )
        assert gone.status_code == 404 and "purged at" in gone.json()["detail"]
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
    assert "purged at" in gone.json()["detail"]
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
    recorded = input_keys(exchange, ended["id"])

    report = exchange.client.app.state.retention.sweep(now=utcnow() + timedelta(days=365))
    assert report.jobs == {ended["id"]}
    assert not blob_exists(exchange, orphan)
    assert recorded and not any(blob_exists(exchange, key) for key in recorded)
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


def test_a_job_whose_folder_the_store_keeps_is_neither_audited_nor_marked_and_tried_again(
    exchange_on: ExchangeFactory, make_ct: Any, monkeypatch: Any
) -> None:
    """An object store that refuses to delete one job's inputs (a permission, an object
    lock): the other jobs are purged; that one stays due, is not audited as purged, is
    counted for the alert, and goes at the next sweep once the store lets it."""
    exchange = exchange_on(retain_inputs_seconds=HOUR, retention_sweep_seconds=HOUR)
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    kept, purged = (failed_job(exchange, hospital, vendor, make_ct) for _ in range(2))
    kept_keys = input_keys(exchange, kept["id"])
    blobs = exchange.client.app.state.services.blobs
    delete_under = blobs.delete_under

    def refusing(folder: str) -> int:
        if kept["id"] in folder:
            raise OSError(f"the object store kept 1 of 1 object(s) under {folder!r}")
        return int(delete_under(folder))

    monkeypatch.setattr(blobs, "delete_under", refusing)
    retention = exchange.client.app.state.retention
    later = utcnow() + timedelta(days=365)
    report = retention.sweep(now=later)
    assert report.jobs == {purged["id"]} and report.not_purged == {kept["id"]}
    assert kept_keys and all(blob_exists(exchange, key) for key in kept_keys)
    assert input_keys(exchange, kept["id"]) == kept_keys, "its rows still name its instances"
    failures = exchange.client.app.state.metrics.purge_failures.labels("input")
    assert failures._value.get() == 1

    def purges_of(job_id: str) -> list[str]:
        audit = exchange.client.get(
            "/audit", params={"limit": 5000}, headers=exchange.operator.headers
        ).json()
        return [
            e["detail"]
            for e in audit
            if (e["action"], e["object_type"], e["object_id"]) == ("delete", "input", job_id)
        ]

    assert purges_of(kept["id"]) == [] and len(purges_of(purged["id"])) == 1
    monkeypatch.setattr(blobs, "delete_under", delete_under)
    again = retention.sweep(now=later)
    assert again.jobs == {kept["id"]} and again.not_purged == set()
    assert not any(blob_exists(exchange, key) for key in kept_keys)
    assert len(purges_of(kept["id"])) == 1 and len(purges_of(purged["id"])) == 1


def test_a_store_lost_mid_sweep_leaves_what_was_emptied_marked_and_audited(
    exchange_on: ExchangeFactory, make_ct: Any, monkeypatch: Any
) -> None:
    """The object store becomes unreachable after the sweep emptied one job's folder: the
    sweep stops (every job would meet it), and the job it emptied is marked and audited with
    the blobs it deleted, not left for the next sweep to find empty and report none."""
    exchange = exchange_on(retain_inputs_seconds=HOUR, retention_sweep_seconds=HOUR)
    orgs = set_up_parties(exchange)
    jobs = [failed_job(exchange, orgs["hospital"], orgs["vendor"], make_ct) for _ in range(2)]
    blobs = exchange.client.app.state.services.blobs
    delete_under = blobs.delete_under
    emptied: list[str] = []

    def lost_after_one(folder: str) -> int:
        if emptied:
            raise BlobStoreUnavailable("the exchange's object store is unavailable (purging)")
        emptied.append(folder)
        return int(delete_under(folder))

    monkeypatch.setattr(blobs, "delete_under", lost_after_one)
    retention = exchange.client.app.state.retention
    later = utcnow() + timedelta(days=365)
    with pytest.raises(BlobStoreUnavailable):
        retention.sweep(now=later)
    [first] = [job["id"] for job in jobs if input_folder(job["id"]) == emptied[0]]
    [second] = [job["id"] for job in jobs if job["id"] != first]

    audit = exchange.client.get(
        "/audit", params={"limit": 5000}, headers=exchange.operator.headers
    ).json()
    purges = {
        e["object_id"]: e["detail"]
        for e in audit
        if (e["action"], e["object_type"]) == ("delete", "input")
    }
    assert list(purges) == [first]
    assert "1 blob(s) deleted" in purges[first], purges
    assert input_keys(exchange, first) == [] and input_keys(exchange, second) != []

    monkeypatch.setattr(blobs, "delete_under", delete_under)  # the store back
    assert retention.sweep(now=later).jobs == {second}


def test_two_sweeps_at_once_purge_and_audit_each_job_once(
    exchange_on: ExchangeFactory, make_ct: Any, monkeypatch: Any
) -> None:
    """Two replicas sweeping the same jobs at once: a database restart ends the advisory lock
    of the one sweeping, and another takes it (tests/scale/test_archive_turn_lost.py shows
    that with a real restart; here both are told it is their turn). Both empty the jobs'
    folders, harmlessly; only the sweep that marks a job may audit and count its purge."""
    exchange = exchange_on(retain_inputs_seconds=HOUR, retention_sweep_seconds=HOUR)
    orgs = set_up_parties(exchange)
    jobs = [failed_job(exchange, orgs["hospital"], orgs["vendor"], make_ct) for _ in range(3)]
    services = exchange.client.app.state.services

    @contextmanager
    def always_mine(_key: int) -> Iterator[bool]:
        yield True

    monkeypatch.setattr(services.db, "turn", always_mine)
    both_due = threading.Barrier(2, timeout=30)
    delete_under = services.blobs.delete_under
    first_folder = input_folder(jobs[0]["id"])

    def meeting(folder: str) -> int:
        if folder == first_folder:  # both sweeps have read the same due jobs
            both_due.wait()
        return int(delete_under(folder))

    monkeypatch.setattr(services.blobs, "delete_under", meeting)
    sweeps = [exchange.client.app.state.retention, Retention(
        services.db, services.blobs, services.audit, services.settings
    )]  # fmt: skip
    later = utcnow() + timedelta(days=365)
    reports: list[Any] = [None, None]

    def sweep(n: int) -> None:
        reports[n] = sweeps[n].sweep(now=later)

    threads = [threading.Thread(target=sweep, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert None not in reports, "a sweep failed"
    purged = [job_id for report in reports for job_id in report.jobs]
    assert sorted(purged) == sorted(job["id"] for job in jobs), "each job once, in one sweep"
    assert sum(report.inputs for report in reports) == 3
    audit = exchange.client.get(
        "/audit", params={"limit": 5000}, headers=exchange.operator.headers
    ).json()
    audited = [
        e["object_id"] for e in audit if (e["action"], e["object_type"]) == ("delete", "input")
    ]
    assert sorted(audited) == sorted(job["id"] for job in jobs)
    for job in jobs:
        assert input_keys(exchange, job["id"]) == []


def test_retention_can_be_switched_off(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    exchange = exchange_on(
        retain_inputs_seconds=None,
        retain_results_seconds=None,
        retain_undelivered_seconds=None,
        expire_unfinished_seconds=None,
    )
    orgs = set_up_parties(exchange)
    job = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    finish_job(exchange, orgs["vendor"], exchange.claim(orgs["vendor"]), tmp_path / "w")
    exchange.client.post(f"/jobs/{job['id']}/acknowledge", headers=orgs["hospital"].headers)
    undelivered = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    finish_job(exchange, orgs["vendor"], exchange.claim(orgs["vendor"]), tmp_path / "u")
    waiting = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    later = utcnow() + timedelta(days=3650)
    assert exchange.client.app.state.services.jobs.expire_unfinished(now=later) == 0
    report = exchange.client.app.state.retention.sweep(now=later)
    assert (report.inputs, report.results) == (0, 0)
    assert all(blob_exists(exchange, key) for key in input_keys(exchange, job["id"]))
    for kept in (undelivered, waiting):
        state = exchange.client.get(f"/jobs/{kept['id']}", headers=orgs["hospital"].headers)
        assert state.json()["state"] in ("completed", "requested")
    result = exchange.client.get(
        f"/jobs/{undelivered['id']}/results/sr.dcm", headers=orgs["hospital"].headers
    )
    assert result.status_code == 200


def test_results_never_fetched_go_retain_undelivered_seconds_after_their_job_ended(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    """A gateway taken out of service never acknowledges: its results must not stay for
    ever. They go, audited and counted apart, and the job's listing says they were purged."""
    exchange = exchange_on(
        retain_inputs_seconds=None,
        retain_results_seconds=HOUR,
        retain_undelivered_seconds=48 * HOUR,
        retention_sweep_seconds=HOUR,
    )
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    sr = finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "w")
    fetched = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "f")
    exchange.client.post(
        f"/jobs/{fetched['id']}/acknowledge", headers=hospital.headers
    ).raise_for_status()
    ended = datetime.fromisoformat(
        exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()["ended_at"]
    )
    retention = exchange.client.app.state.retention
    result_url = f"/jobs/{job['id']}/results/sr.dcm"

    early = retention.sweep(now=ended + timedelta(hours=47))
    assert early.jobs == {fetched["id"]}, "only the delivered job's results go after an hour"
    kept = exchange.client.get(result_url, headers=hospital.headers)
    assert kept.status_code == 200 and kept.content == sr

    late = retention.sweep(now=ended + timedelta(hours=49))
    assert (late.results, late.jobs) == (1, {job["id"]})
    assert exchange.client.get(result_url, headers=hospital.headers).status_code == 404
    listed = exchange.client.get(
        "/jobs", params={"acknowledged": "false", "with_results": "true"}, headers=hospital.headers
    ).json()
    [mine] = [j for j in listed if j["id"] == job["id"]]
    [result] = mine["results"]
    assert result["name"] == "sr.dcm" and result["purged_at"] is not None
    assert datetime.fromisoformat(result["purged_at"]) == ended + timedelta(hours=49)

    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers)
    [entry] = [
        e
        for e in audit.json()
        if e["action"] == "delete" and e["object_type"] == "result" and e["object_id"] == job["id"]
    ]
    assert entry["role"] == "system" and "ended, never delivered at" in entry["detail"]
    metrics = exchange.client.get("/metrics").text
    assert 'aifi_exchange_purged_objects_total{kind="undelivered_result"} 1.0' in metrics
    assert 'aifi_exchange_purged_objects_total{kind="result"} 1.0' in metrics

    # Acknowledged afterwards (the gateway came back): nothing is purged or audited twice.
    exchange.client.post(f"/jobs/{job['id']}/acknowledge", headers=hospital.headers)
    again = retention.sweep(now=ended + timedelta(days=365))
    assert again.jobs == set()


def test_a_job_not_ended_in_expire_unfinished_seconds_is_expired_saying_where_it_stopped(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    """Retention takes only ended jobs, so a job no one finishes would hold its inputs for
    ever: it is ended first, in each stage where a job can stop, and then purged."""
    exchange = exchange_on(
        expire_unfinished_seconds=48 * HOUR, retain_inputs_seconds=0, retention_sweep_seconds=HOUR
    )
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    held = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    held_claim = exchange.claim(vendor)
    assert held_claim is not None and held_claim["job"]["id"] == held["id"]
    completed = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "c")
    waiting = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    study = make_ct(slices=2)
    uploading = exchange.job(
        hospital, "product-a", pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    )
    assert exchange.upload(hospital, uploading["id"], study[0]).status_code == 201
    jobs = exchange.client.app.state.services.jobs

    assert jobs.expire_unfinished(now=utcnow() + timedelta(hours=47)) == 0
    later = utcnow() + timedelta(hours=49)
    assert jobs.expire_unfinished(now=later) == 3

    def job_now(job: dict[str, Any]) -> dict[str, Any]:
        return dict(exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json())

    stopped = {
        held["id"]: "its vendor held it without finishing it",
        waiting["id"]: "no vendor claimed it",
        uploading["id"]: "the hospital's upload of its inputs never completed",
    }
    for job_id, where in stopped.items():
        now = job_now({"id": job_id})
        assert now["state"] == "expired"
        assert now["reason"] == f"not ended 2 days after it was created: {where}"
    assert job_now(completed)["state"] == "completed", "an ended job keeps its own end"
    late = exchange.client.post(
        f"/jobs/{held['id']}/complete",
        json={"lease_token": held_claim["lease_token"]},
        headers=vendor.headers,
    )
    assert late.status_code == 409, "the vendor's lease went with the job"
    assert jobs.expire_unfinished(now=later) == 0, "a job is expired once"

    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers)
    expiries = {
        e["object_id"]: e
        for e in audit.json()
        if e["object_type"] == "job" and e["detail"].startswith("expired: not ended")
    }
    assert set(expiries) == set(stopped)
    assert all(e["role"] == "system" and e["patient_pseudonym"] for e in expiries.values())

    # Ended, its inputs now go by the retention time like any other job's.
    recorded = {job_id: input_keys(exchange, job_id) for job_id in stopped}
    report = exchange.client.app.state.retention.sweep(now=later)
    assert set(stopped) <= report.jobs
    for keys in recorded.values():
        assert keys and not any(blob_exists(exchange, key) for key in keys)


def test_the_exchange_expires_unfinished_jobs_on_its_own(
    exchange_on: ExchangeFactory, make_ct: Any
) -> None:
    exchange = exchange_on(expire_unfinished_seconds=0.5, retention_sweep_seconds=0.2)
    orgs = set_up_parties(exchange)
    study = make_ct(slices=2)
    job = exchange.job(
        orgs["hospital"],
        "product-a",
        pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID,
    )
    url = f"/jobs/{job['id']}"
    wait_for(
        lambda: (
            exchange.client.get(url, headers=orgs["hospital"].headers).json()["state"] == "expired"
        ),
        30,
        "the sweeper to expire a job left unfinished",
    )


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


def test_a_sweep_purges_jobs_of_realistic_size_in_one_batch(
    exchange_on: ExchangeFactory, make_ct: Any
) -> None:
    """A sweep takes up to 500 ended jobs at a time, and a CT study has hundreds of instances:
    the rows it purges at once outnumber the bound parameters one statement may carry
    (65,535 in PostgreSQL, 32,766 in SQLite)."""
    exchange = exchange_on(retain_inputs_seconds=0, retention_sweep_seconds=HOUR)
    orgs = set_up_parties(exchange)
    jobs = [failed_job(exchange, orgs["hospital"], orgs["vendor"], make_ct) for _ in range(3)]
    per_job = 25_000  # 75,000 rows in all, as 190 studies of 400 instances would be
    engine = exchange.client.app.state.services.db.engine
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_inputs (job_id, sop_instance_uid, sop_class_uid, series_uid, "
                "size, sha256, blob_key) VALUES (:job, :uid, '1.2', '1.2', 10, '-', :key)"
            ),
            [
                {"job": job["id"], "uid": f"2.25.{n}", "key": input_key(job["id"], f"2.25.{n}")}
                for job in jobs
                for n in range(per_job)
            ],
        )
    report = exchange.client.app.state.retention.sweep(now=utcnow() + timedelta(days=1))
    assert report.jobs == {job["id"] for job in jobs}
    assert report.inputs == 3 * (per_job + 1)
    with engine.connect() as connection:
        left = connection.scalar(text("SELECT COUNT(*) FROM job_inputs"))
    assert left == 0


def test_uploads_a_stopped_replica_left_in_its_spool_are_cleared(
    exchange_on: ExchangeFactory,
) -> None:
    """A replica killed mid-upload leaves the upload's file, which no request will commit:
    the sweep clears it once nothing has written to it for an hour, and leaves files that
    an upload is still writing."""
    exchange = exchange_on(retention_sweep_seconds=HOUR)
    spool = Path(exchange.client.app.state.services.blobs.incoming)
    dead = spool / "killed-mid-upload.part"
    dead.write_bytes(b"pseudonymised bytes" * 100)
    hour_ago = time.time() - STALE_UPLOAD_SECONDS - 60
    os.utime(dead, (hour_ago, hour_ago))
    arriving = spool / "still-arriving.part"
    arriving.write_bytes(b"pseudonymised bytes")
    report = exchange.client.app.state.retention.sweep()
    assert report.stale_uploads == 1
    assert not dead.exists() and arriving.exists()
    assert exchange.client.app.state.retention.sweep().stale_uploads == 0
