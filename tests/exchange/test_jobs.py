"""The job lifecycle through the exchange's HTTP API, as hospitals and vendors use it."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import insert, update

from aifi.exchange import jobs as jobs_module
from aifi.exchange.audit import Actor
from aifi.exchange.clock import utcnow
from aifi.exchange.models import Job, Product
from aifi.exchange.routers import jobs as jobs_router
from scale.exchange_api import OPERATOR_KEY, SUMMARY, sr_for
from scale.servers import wait_for

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


def test_a_job_runs_from_upload_to_result(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=4)
    job = exchange.ready_job(hospital, "product-a", study)
    assert job["state"] == "requested" and job["inputs_complete"] and job["input_count"] == 4

    claim = exchange.claim(vendor)
    assert claim is not None and claim["job"]["id"] == job["id"]
    assert claim["job"]["state"] == "accepted" and claim["job"]["attempts"] == 1
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    beat = exchange.client.post(
        f"/jobs/{job['id']}/heartbeat",
        json={"lease_token": claim["lease_token"]},
        headers=vendor.headers,
    )
    assert beat.status_code == 200 and beat.json()["state"] == "in-progress"

    listed = exchange.client.get(f"/jobs/{job['id']}/inputs", headers=lease).json()
    assert len(listed) == 4
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for item in listed:
        body = exchange.client.get(
            f"/jobs/{job['id']}/inputs/{item['sop_instance_uid']}", headers=lease
        ).content
        assert hashlib.sha256(body).hexdigest() == item["sha256"]
        (downloaded / f"{item['sop_instance_uid']}.dcm").write_bytes(body)
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in study}
    assert {item["sha256"] for item in listed} == originals

    sr = sr_for(sorted(downloaded.iterdir()), tmp_path / "out")
    put = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm", content=sr.read_bytes(), headers=lease
    )
    assert put.status_code == 201, put.text
    assert put.json()["kind"] == "sr-tid1500" and put.json()["air_conformant"] is True
    done = exchange.client.post(
        f"/jobs/{job['id']}/complete",
        json={"lease_token": claim["lease_token"], "summary": SUMMARY},
        headers=vendor.headers,
    )
    assert done.status_code == 200 and done.json()["state"] == "completed"
    assert done.json()["summary"] == SUMMARY

    ended = exchange.client.get(
        "/jobs", params={"state": "completed", "acknowledged": False}, headers=hospital.headers
    ).json()
    assert [j["id"] for j in ended] == [job["id"]]
    result = exchange.client.get(f"/jobs/{job['id']}/results/sr.dcm", headers=hospital.headers)
    assert result.status_code == 200 and result.content == sr.read_bytes()
    ack = exchange.client.post(f"/jobs/{job['id']}/acknowledge", headers=hospital.headers)
    assert ack.status_code == 200 and ack.json()["acknowledged_at"] is not None
    assert (
        exchange.client.get(
            "/jobs", params={"acknowledged": False}, headers=hospital.headers
        ).json()
        == []
    )


def test_every_time_the_api_gives_is_in_utc_whatever_the_database_hands_back(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """SQLite hands times back without a zone, the test PostgreSQL server in its own zone
    (Europe/Amsterdam, see scale.servers): the API says each in UTC, with its offset."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    beat = exchange.client.post(
        f"/jobs/{job['id']}/heartbeat",
        json={"lease_token": claim["lease_token"]},
        headers=vendor.headers,
    ).json()

    def read(path: str, org: Any) -> Any:
        return exchange.client.get(path, headers=org.headers).json()

    read_job = read(f"/jobs/{job['id']}", hospital)
    times = [read_job[k] for k in ("created_at", "ready_at", "claimed_at", "lease_expires_at")]
    times += [beat["lease_expires_at"]]
    times += [o["created_at"] for o in read("/organisations", exchange.operator)]
    times += [s["created_at"] for s in read("/subscriptions", hospital)]
    times += [e["at"] for e in read("/audit", exchange.operator)]
    assert len(times) > 8
    for moment in times:
        assert datetime.fromisoformat(moment).utcoffset() == timedelta(0), moment


def test_same_idempotency_key_gives_the_same_job(exchange: Any, parties: dict[str, Any]) -> None:
    hospital = parties["hospital_a"]
    first = exchange.job(hospital, "product-a", "2.25.1", key="k1")
    body = {"product_id": "product-a", "study_uid": "2.25.1", "idempotency_key": "k1"}
    again = exchange.client.post("/jobs", json=body, headers=hospital.headers)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    clash = exchange.client.post(
        "/jobs", json={**body, "study_uid": "2.25.2"}, headers=hospital.headers
    )
    assert clash.status_code == 409


def test_a_hospital_finds_its_job_by_idempotency_key_without_making_it(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """A gateway whose create had no answer asks whether it made the job: its own job with
    that key, or none; never another hospital's; only hospitals ask."""
    hospital, other = parties["hospital_a"], parties["hospital_b"]
    made = exchange.job(hospital, "product-a", "2.25.1", key="lost-answer")
    exchange.job(hospital, "product-a", "2.25.2", key="another")

    def by_key(party: Any, key: str) -> Any:
        return exchange.client.get("/jobs", params={"idempotency_key": key}, headers=party.headers)

    found = by_key(hospital, "lost-answer")
    assert found.status_code == 200 and [job["id"] for job in found.json()] == [made["id"]]
    assert by_key(hospital, "never-sent").json() == []
    assert by_key(other, "lost-answer").json() == []  # the tenant wall
    vendor = by_key(parties["vendor_a"], "lost-answer")
    assert vendor.status_code == 403 and "only hospitals" in vendor.json()["detail"]
    listed = exchange.client.get("/jobs", headers=hospital.headers).json()
    assert len(listed) == 2  # looking made nothing


def test_a_cancel_of_unopened_jobs_only_leaves_a_job_open_to_vendors_alone(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """A gateway withdrawing what an earlier attempt left asks to cancel only a job still
    taking inputs: one open to vendors is refused (409) and stays as it is; one still taking
    inputs is cancelled with the reason."""
    hospital = parties["hospital_a"]

    def cancel(job_id: str) -> Any:
        body = {"reason": "refused at the hospital", "unopened_only": True}
        return exchange.client.post(f"/jobs/{job_id}/cancel", json=body, headers=hospital.headers)

    opened = exchange.ready_job(hospital, "product-a", make_ct(slices=2))
    refused = cancel(opened["id"])
    assert refused.status_code == 409 and "open to vendors" in refused.json()["detail"]
    still = exchange.client.get(f"/jobs/{opened['id']}", headers=hospital.headers).json()
    assert (still["state"], still["inputs_complete"]) == ("requested", True)
    assert exchange.claim(parties["vendor_a"])["job"]["id"] == opened["id"]

    waiting = exchange.job(hospital, "product-a", "2.25.77", key="taking-inputs", instances=3)
    cancelled = cancel(waiting["id"])
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["reason"] == "refused at the hospital"
    assert cancel(waiting["id"]).status_code == 409  # ended already


def test_a_ready_that_meets_a_cancel_committed_first_does_not_open_the_job(
    exchange: Any, parties: dict[str, Any], make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier try's `ready` arrives late: it reads the job still taking inputs, and the
    gateway's cancel (`unopened_only`) commits before the ready's own update. The cancel
    wins: the ready is refused (409), and the job stays cancelled, never open to vendors."""
    hospital = parties["hospital_a"]
    study = make_ct(slices=2)
    study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    job = exchange.job(hospital, "product-a", study_uid)
    for path in study:
        assert exchange.upload(hospital, job["id"], path).status_code == 201
    services = exchange.client.app.state.services
    as_hospital = Actor(organisation_id=hospital.id, role="hospital")
    transition = jobs_module._transition

    def cancel_first(session: Any, where: Any, values: dict[str, Any], *args: Any) -> Any:
        if "ready_at" in values:  # the ready's update, after its read
            services.jobs.cancel(as_hospital, job["id"], "withdrawn", unopened_only=True)
        return transition(session, where, values, *args)

    monkeypatch.setattr(jobs_module, "_transition", cancel_first)
    ready = exchange.client.post(
        f"/jobs/{job['id']}/ready", json={"instances": 2}, headers=hospital.headers
    )
    assert ready.status_code == 409 and "not opened" in ready.json()["detail"], ready.text
    after = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert (after["state"], after["inputs_complete"]) == ("cancelled", False)
    assert exchange.claim(parties["vendor_a"]) is None


def test_jobs_are_listed_a_page_at_a_time_after_the_last_of_the_page(
    exchange: Any, parties: dict[str, Any]
) -> None:
    hospital = parties["hospital_a"]
    made = [exchange.job(hospital, "product-a", f"2.25.{n}", key=f"p{n}")["id"] for n in range(5)]

    def page(**params: Any) -> list[str]:
        listed = exchange.client.get("/jobs", params=params, headers=hospital.headers)
        assert listed.status_code == 200, listed.text
        return [job["id"] for job in listed.json()]

    first = page(limit=2)
    second = page(limit=2, after=first[-1])
    third = page(limit=2, after=second[-1])
    assert first + second + third == made  # in creation order, none twice, none left out
    assert page(limit=2, after=made[-1]) == []
    # Another hospital's job is no cursor for this one: its existence is not revealed either.
    theirs = exchange.client.get(
        "/jobs", params={"after": made[0]}, headers=parties["hospital_b"].headers
    )
    assert theirs.status_code == 404 and "no job" in theirs.json()["detail"]


def test_creates_racing_with_one_key_make_one_job(exchange: Any, parties: dict[str, Any]) -> None:
    """A gateway retrying a create while the first is still in flight gets the same job."""
    hospital = parties["hospital_a"]
    body = {"product_id": "product-a", "study_uid": "2.25.9", "idempotency_key": "racing"}
    start = threading.Barrier(8)

    def create(_: int) -> tuple[int, str]:
        start.wait()
        answer = exchange.client.post("/jobs", json=body, headers=hospital.headers)
        return answer.status_code, answer.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert len({job_id for _, job_id in answers}) == 1
    listed = exchange.client.get("/jobs", headers=hospital.headers).json()
    assert [job["id"] for job in listed] == [answers[0][1]]
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    created = [e for e in audit if e["action"] == "create" and e["object_type"] == "job"]
    assert [e["object_id"] for e in created] == [answers[0][1]]


def test_a_repeated_create_gets_its_job_after_the_product_was_suspended(
    exchange: Any, parties: dict[str, Any]
) -> None:
    hospital = parties["hospital_a"]
    first = exchange.job(hospital, "product-a", "2.25.10", key="before-suspension")
    with exchange.client.app.state.services.db.session() as session:
        session.execute(update(Product).where(Product.id == "product-a").values(status="suspended"))
    body = {
        "product_id": "product-a",
        "study_uid": "2.25.10",
        "idempotency_key": "before-suspension",
    }
    again = exchange.client.post("/jobs", json=body, headers=hospital.headers)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    new = exchange.client.post(
        "/jobs", json={**body, "idempotency_key": "after-suspension"}, headers=hospital.headers
    )
    assert new.status_code == 403 and "suspended" in new.json()["detail"]


def test_reuploading_an_instance_stores_it_once(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    study = make_ct(slices=2)
    uid = pydicom.dcmread(study[0]).StudyInstanceUID
    job = exchange.job(hospital, "product-a", uid)
    for _ in range(3):
        assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    assert (
        exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()["input_count"]
        == 1
    )
    short = exchange.client.post(
        f"/jobs/{job['id']}/ready", json={"instances": 2}, headers=hospital.headers
    )
    assert short.status_code == 422 and "holds 1 instances" in short.json()["detail"]


def test_stat_jobs_are_claimed_before_routine_ones(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    routine = exchange.ready_job(hospital, "product-a", make_ct(slices=1), priority="routine")
    stat = exchange.ready_job(hospital, "product-a", make_ct(slices=1), priority="stat")
    assert exchange.claim(vendor)["job"]["id"] == stat["id"]
    assert exchange.claim(vendor)["job"]["id"] == routine["id"]
    assert exchange.claim(vendor) is None


def test_an_expired_lease_puts_the_job_back_and_then_ends_it(
    exchange: Any, parties: dict[str, Any], make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    services = exchange.client.app.state.services
    later = [utcnow()]
    monkeypatch.setattr(jobs_module, "utcnow", lambda: later[0])

    tokens = []
    for attempt in range(1, 4):
        claim = exchange.claim(vendor, lease_seconds=30)
        assert claim["job"]["id"] == job["id"] and claim["job"]["attempts"] == attempt
        tokens.append(claim["lease_token"])
        later[0] += timedelta(seconds=31)  # the vendor goes silent past its lease
        services.jobs.expire_leases()
    final = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert final["state"] == "expired"
    assert "lease ran out 3 times" in final["reason"]
    # The exchange's own changes to the job are on record, with the patient they concern.
    audit = exchange.client.get(
        "/audit", params={"limit": 5000}, headers=exchange.operator.headers
    ).json()
    by_exchange = [
        (e["detail"], e["patient_pseudonym"])
        for e in audit
        if e["object_id"] == job["id"] and e["organisation_id"] == "exchange"
    ]
    assert by_exchange == [
        ("offered again: the lease of attempt 1 ran out", "PTEST"),
        ("offered again: the lease of attempt 2 ran out", "PTEST"),
        ("expired: the vendor's lease ran out 3 times without a result", "PTEST"),
    ]
    late = exchange.client.post(
        f"/jobs/{job['id']}/heartbeat", json={"lease_token": tokens[-1]}, headers=vendor.headers
    )
    assert late.status_code == 409


def test_a_heartbeat_renews_the_lease_for_as_long_as_the_worker_asks(
    exchange: Any, parties: dict[str, Any], make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that claimed ten minutes must not be cut to the exchange's default minute at
    its first heartbeat; a heartbeat that names no length (an older client) still gets the
    default; the answer says what was granted."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    default = exchange.client.app.state.services.settings.lease_seconds
    now = utcnow()
    monkeypatch.setattr(jobs_module, "utcnow", lambda: now)
    claim = exchange.claim(vendor, lease_seconds=600)

    def beat(**body: Any) -> Any:
        return exchange.client.post(
            f"/jobs/{job['id']}/heartbeat",
            json={"lease_token": claim["lease_token"], **body},
            headers=vendor.headers,
        )

    def lease_end(answer: Any) -> timedelta:
        return datetime.fromisoformat(answer.json()["lease_expires_at"]) - now

    asked = beat(lease_seconds=600)
    assert asked.status_code == 200, asked.text
    assert lease_end(asked) == timedelta(seconds=600) and asked.json()["lease_seconds"] == 600
    older_client = beat()
    assert older_client.status_code == 200, older_client.text
    assert lease_end(older_client) == timedelta(seconds=default)
    assert older_client.json()["lease_seconds"] == default
    for refused in (0, 4000):  # the claim's bounds
        assert beat(lease_seconds=refused).status_code == 422


def test_a_vendor_failure_reaches_the_hospital_with_its_reason(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "no brain in field of view"},
        headers=vendor.headers,
    )
    assert failed.status_code == 200
    seen = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert seen["state"] == "failed" and seen["reason"] == "no brain in field of view"


def test_a_job_handed_back_is_claimable_at_once_and_never_expires_for_it(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """A worker whose own disk is full hands the job back: the next claim gets it now, not
    after its hour-long lease runs out; the old lease is dead; a hand-back is not a failed
    attempt, so handing back again and again never expires the job; another vendor cannot
    hand it back; the access log says why."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    exchange.product(vendor, "product-a2")
    exchange.subscribe(hospital, "product-a2")
    older = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    handed = exchange.ready_job(hospital, "product-a2", make_ct(slices=1))

    def hand_back(claim: dict[str, Any], by: Any = vendor) -> Any:
        return exchange.client.post(
            f"/jobs/{claim['job']['id']}/release",
            json={"lease_token": claim["lease_token"], "reason": "the worker's disk is full"},
            headers=by.headers,
        )

    for _ in range(4):  # more than max_attempts (3)
        claim = exchange.claim(vendor, product_ids=["product-a2"], lease_seconds=3600)
        assert claim["job"]["id"] == handed["id"] and claim["job"]["attempts"] == 1
        assert hand_back(claim, parties["vendor_b"]).status_code == 404
        released = hand_back(claim)
        assert released.status_code == 200, released.text
        assert released.json()["state"] == "requested" and released.json()["attempts"] == 0
    assert hand_back(claim).status_code == 409
    late = exchange.client.post(
        f"/jobs/{handed['id']}/heartbeat",
        json={"lease_token": claim["lease_token"]},
        headers=vendor.headers,
    )
    assert late.status_code == 409
    # Back in the queue at its head, beside the job that waited meanwhile.
    assert {exchange.claim(vendor)["job"]["id"] for _ in range(2)} == {handed["id"], older["id"]}
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    said = [e["detail"] for e in audit if e["object_id"] == handed["id"]]
    assert said.count("handed back: the worker's disk is full") == 4
    # The operator counts them per product (VendorHandingBack).
    metrics = exchange.client.get("/metrics").text
    assert 'aifi_exchange_handed_back_jobs_total{product="product-a2"} 4.0' in metrics


def test_completing_without_results_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    job = exchange.ready_job(parties["hospital_a"], "product-a", make_ct(slices=1))
    claim = exchange.claim(parties["vendor_a"])
    response = exchange.client.post(
        f"/jobs/{job['id']}/complete",
        json={"lease_token": claim["lease_token"]},
        headers=parties["vendor_a"].headers,
    )
    assert response.status_code == 422 and "no results" in response.json()["detail"]


def test_concurrent_claims_hand_each_job_out_once(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    made = {
        exchange.ready_job(hospital, "product-a", make_ct(slices=1, size=8))["id"]
        for _ in range(12)
    }
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (claim := exchange.claim(vendor)) is not None:
            with lock:
                claimed.append(claim["job"]["id"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(made)


def test_long_poll_wakes_when_a_job_ends(
    exchange: Any, parties: dict[str, Any], make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's end wakes its hospital's poll: with the periodic re-check out of reach, only
    the change's own wake-up (naming the job's hospital) answers before `wait` runs out (a
    poll that runs out lists once more, and would find the job too late)."""
    monkeypatch.setattr(jobs_router, "RECHECK_SECONDS", 60.0)
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    seen: list[Any] = []
    started = threading.Event()

    def hospital_waits() -> None:
        started.set()
        seen.extend(
            exchange.client.get(
                "/jobs", params={"state": ["failed"], "wait": 30}, headers=hospital.headers
            ).json()
        )

    waiter = threading.Thread(target=hospital_waits)
    waiter.start()
    started.wait()
    # Fail the job once the poll waits: a change between its listing and its wait is caught
    # only by the re-check (the notifier makes the common case fast, never correct).
    notifier = exchange.client.app.state.services.notifier
    wait_for(lambda: notifier.watchers(hospital.id) == 1, 30, "the hospital's poll to wait")
    exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "x"},
        headers=vendor.headers,
    )
    waiter.join(timeout=20)
    woken = not waiter.is_alive()
    waiter.join()  # a poll that was not woken ends when its wait runs out
    assert woken, "the poll was not woken by its job's end"
    assert [j["id"] for j in seen] == [job["id"]]


def test_metering_counts_completed_jobs_per_hospital_product_month(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    ids = []
    for index in range(2):
        study = make_ct(slices=2)
        job = exchange.ready_job(hospital, "product-a", study)
        ids.append(job["id"])
        claim = exchange.claim(vendor)
        lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
        sr = sr_for(study, tmp_path / f"sr{index}")
        assert (
            exchange.client.put(
                f"/jobs/{job['id']}/results/sr.dcm", content=sr.read_bytes(), headers=lease
            ).status_code
            == 201
        )
        exchange.client.post(
            f"/jobs/{job['id']}/complete",
            json={"lease_token": claim["lease_token"]},
            headers=vendor.headers,
        )
    # The months the jobs ended in, from the jobs themselves: a run across midnight at a
    # month's end puts them in two.
    months = {
        exchange.client.get(f"/jobs/{id_}", headers=hospital.headers).json()["ended_at"][:7]
        for id_ in ids
    }
    rows = exchange.client.get("/metering", headers=exchange.operator.headers).json()["rows"]
    assert sorted(row["month"] for row in rows) == sorted(months)
    assert {(row["hospital"], row["product"], row["jobs_failed"]) for row in rows} == {
        ("hospital-a", "product-a", 0)
    }
    assert sum(row["jobs_completed"] for row in rows) == 2
    assert all(row["input_bytes"] > 0 for row in rows)
    assert (
        exchange.client.get("/metering", headers=parties["hospital_b"].headers).json()["rows"] == []
    )


def test_metering_takes_the_months_asked_for_whole_and_no_other(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    ended_at = {
        "2025-01-31 23:59:59": "2025-01",
        "2025-02-01 00:00:00": "2025-02",
        "2025-03-31 23:59:59": "2025-03",
        "2025-04-01 00:00:00": "2025-04",
        "2025-12-31 23:59:59": "2025-12",
    }
    services = exchange.client.app.state.services
    for moment in ended_at:
        job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
        claim = exchange.claim(vendor)
        exchange.client.post(
            f"/jobs/{job['id']}/fail",
            json={"lease_token": claim["lease_token"], "reason": "no tissue"},
            headers=vendor.headers,
        ).raise_for_status()
        with services.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job["id"])
                .values(ended_at=datetime.fromisoformat(moment).replace(tzinfo=UTC))
            )

    def months(**params: str) -> list[str]:
        operator = exchange.operator.headers
        response = exchange.client.get("/metering", params=params, headers=operator)
        assert response.status_code == 200, response.text
        return [row["month"] for row in response.json()["rows"]]

    assert months() == sorted(ended_at.values())
    assert months(since="2025-02", until="2025-03") == ["2025-02", "2025-03"]
    assert months(since="2025-04") == ["2025-04", "2025-12"]
    assert months(until="2025-01") == ["2025-01"]
    assert months(since="2025-12", until="2025-12") == ["2025-12"]
    bad = exchange.client.get(
        "/metering", params={"since": "2025-13"}, headers=exchange.operator.headers
    )
    assert bad.status_code == 422


def test_metering_counts_what_the_rows_say_per_hospital_product_and_month(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """The database counts the months; counted here row by row, the figures are the same:
    each state, the bytes of completed jobs only, months' edges in UTC, a month holding
    only cancelled jobs (a row of zeros, so the hospital sees the product was in use), and
    studies sent again (a third of the jobs are of a study an earlier job had, at its
    hospital, ending a little later: one study analysed in a month, or one in each of two)."""
    rng = random.Random(3)
    states = ["completed", "completed", "failed", "expired", "cancelled", "in-progress"]
    jobs: list[dict[str, Any]] = []
    for n in range(150):
        ended = (
            datetime(2026, rng.randrange(1, 13), 1, tzinfo=UTC)
            + rng.choice(
                [timedelta(0), timedelta(microseconds=1), timedelta(days=rng.randrange(28))]
            )
            - rng.choice([timedelta(0), timedelta(microseconds=1)])
        )
        state = rng.choice(states)
        hospital, study = rng.choice(["hospital-a", "hospital-b"]), f"2.25.{n}"
        if n and rng.random() < 0.3:
            earlier = jobs[rng.randrange(n)]
            hospital, study = earlier["hospital_id"], earlier["study_uid"]
            ended = (earlier["ended_at"] or ended) + timedelta(minutes=rng.randrange(1, 90))
        jobs.append(
            {
                "id": f"job-{n}",
                "hospital_id": hospital,
                "product_id": "product-a",
                "vendor_id": "vendor-a",
                "idempotency_key": f"k{n}",
                "study_uid": study,
                "state": state,
                "input_bytes": rng.randrange(1, 10**9),
                "created_at": ended - timedelta(hours=1),
                "ended_at": None if state == "in-progress" else ended,
                "updated_at": ended,
            }
        )
    jobs.append({**jobs[0], "id": "only-cancelled", "idempotency_key": "c", "state": "cancelled",
                 "ended_at": datetime(2027, 3, 3, tzinfo=UTC)})  # fmt: skip
    with exchange.client.app.state.services.db.session() as session:
        session.execute(insert(Job), jobs)
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    studies: dict[tuple[str, str], set[str]] = defaultdict(set)
    for job in jobs:
        if job["ended_at"] is None:
            continue
        row = (job["hospital_id"], job["ended_at"].strftime("%Y-%m"))
        counts = expected[row]
        if job["state"] == "completed":
            counts[0] += 1
            counts[3] += job["input_bytes"]
            studies[row].add(job["study_uid"])
            counts[1] = len(studies[row])
        elif job["state"] in ("failed", "expired"):
            counts[2] += 1
    assert sum(c[1] for c in expected.values()) < sum(c[0] for c in expected.values())
    response = exchange.client.get("/metering", headers=exchange.operator.headers)
    assert response.status_code == 200, response.text
    counted = {
        (row["hospital"], row["month"]): [
            row["jobs_completed"],
            row["studies_completed"],
            row["jobs_failed"],
            row["input_bytes"],
        ]
        for row in response.json()["rows"]
    }
    assert counted == dict(expected)
    assert counted[(jobs[0]["hospital_id"], "2027-03")] == [0, 0, 0, 0]
    mine = exchange.client.get("/metering", headers=parties["hospital_a"].headers).json()["rows"]
    assert {row["hospital"] for row in mine} == {"hospital-a"}


def test_openapi_is_served(exchange: Any) -> None:
    assert exchange.client.get("/docs").status_code == 200
    paths = exchange.client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/claim", "/jobs/{job_id}/inputs/{sop_instance_uid}", "/products"} <= set(
        paths
    )


def test_a_claim_for_some_products_takes_only_their_jobs(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    exchange.product(vendor, "product-a2")
    exchange.subscribe(hospital, "product-a2")
    older = exchange.ready_job(hospital, "product-a2", make_ct(slices=1))
    newer = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    assert exchange.claim(vendor, product_ids=["product-b"]) is None
    claim = exchange.claim(vendor, product_ids=["product-a"])
    assert claim is not None and claim["job"]["id"] == newer["id"]
    rest = exchange.claim(vendor)
    assert rest is not None and rest["job"]["id"] == older["id"]
