"""A blob the database holds and the store does not: purged by retention as it was read,
replaced by a newer copy as it was read, or lost (a store restored to an earlier moment). Only
a loss pages the operator (`BlobsMissing`); the others are said for what they are."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import text

from aifi.exchange.clock import utcnow
from aifi.exchange.jobs import INPUTS_LOST_REASON as LOST
from aifi.exchange.models import Job
from aifi.governance import aggregates
from aifi.http import ExchangeHTTPError, UnexpectedAnswer, blob_gone, checked
from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext
from scale.exchange_api import OPERATOR_KEY
from scale.servers import wait_for


def blob_missing_counted(exchange: Any) -> float:
    metrics = exchange.client.get("/metrics").text
    line = 'aifi_exchange_errors_total{kind="blob_missing"} '
    return sum(
        float(row.removeprefix(line)) for row in metrics.splitlines() if row.startswith(line)
    )


def _completed_with_result(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> dict[str, Any]:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    (tmp_path / "out").mkdir()
    sr = tissue_volume(JobContext(job={}, inputs=study, output_dir=tmp_path / "out")).files[0]
    put = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        params={"complete": "true"},
        content=sr.path.read_bytes(),
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert put.status_code == 201, put.text
    return job


def _result_gone(exchange: Any, job_id: str, how: str) -> None:
    """The completed job's result gone: `purged` by retention a month on, or `missing` from
    the store."""
    if how == "purged":
        report = exchange.client.app.state.retention.sweep(now=utcnow() + timedelta(days=31))
        assert report.results == 1
        return
    services = exchange.client.app.state.services
    with services.db.session() as session:
        [key] = session.execute(
            text("SELECT blob_key FROM job_results WHERE job_id = :id"), {"id": job_id}
        ).scalars()
    services.blobs.delete(key)


@pytest.mark.parametrize("acknowledged", [False, True], ids=["unacknowledged", "acknowledged"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_result_the_undelivered_sweep_is_purging_is_no_alert_even_if_acknowledged_meanwhile(
    exchange: Any,
    parties: dict[str, Any],
    make_ct: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    acknowledged: bool,
) -> None:
    """The real sweep (`_UNDELIVERED`) deletes a never-acknowledged job's result blob; before
    it marks the job swept, the hospital reads the result (having acknowledged the job just
    then, or not). Retention took the blob: said so, and nobody is paged, whatever the job's
    acknowledgement says by then."""
    hospital = parties["hospital_a"]
    job = _completed_with_result(exchange, parties, make_ct, tmp_path)
    services = exchange.client.app.state.services
    with services.db.session() as session:  # the job ended 31 days ago, never acknowledged
        row = session.get(Job, job["id"])
        row.ended_at = row.ended_at - timedelta(days=31)
    retention = exchange.client.app.state.retention
    original = retention._mark
    seen: dict[str, Any] = {}

    def mark(kind: Any, emptied: list[Any], now: Any) -> Any:
        if emptied and kind.label == "undelivered_result" and "got" not in seen:
            # Between the sweep's delete and its mark: the hospital acknowledges, then reads.
            if acknowledged:
                ack = exchange.client.post(
                    f"/jobs/{job['id']}/acknowledge", headers=hospital.headers
                )
                assert ack.status_code == 200, ack.text
            seen["got"] = exchange.client.get(
                f"/jobs/{job['id']}/results/sr.dcm", headers=hospital.headers
            )
        return original(kind, emptied, now)

    monkeypatch.setattr(retention, "_mark", mark)
    report = retention.sweep()
    assert report.results == 1  # retention did purge it
    got = seen["got"]
    assert got.status_code == 404
    assert got.json()["detail"].endswith("is no longer held (retention)"), got.json()["detail"]
    assert blob_missing_counted(exchange) == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_an_input_read_while_its_hospital_sends_it_again_is_no_alert(
    exchange: Any,
    parties: dict[str, Any],
    make_ct: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hospital reads an input of its job while its gateway (or a retry) uploads the same
    instance again: the upload replaces the row and deletes the old blob after it commits
    (`Transfers._recording`). The read found the old row, whose blob is gone: nothing was lost,
    the caller is told to read it again, and nobody is paged."""
    from aifi.exchange.routers import data as data_module

    hospital = parties["hospital_a"]
    study = make_ct(slices=2)
    study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    sop_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)
    job = exchange.job(hospital, "product-a", study_uid, instances=2)
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    fetched = data_module._fetched
    raced: list[int] = []

    def sent_again_first(services: Any, key: str, *args: Any) -> Any:
        if not raced:  # the second upload of the instance commits between row and blob
            raced.append(exchange.upload(hospital, job["id"], study[0]).status_code)
        return fetched(services, key, *args)

    monkeypatch.setattr(data_module, "_fetched", sent_again_first)
    got = exchange.client.get(f"/jobs/{job['id']}/inputs/{sop_uid}", headers=hospital.headers)
    assert raced == [201]
    assert got.status_code == 404
    assert got.json()["detail"] == (
        f"job {job['id']}'s input {sop_uid} was replaced as it was read; read it again"
    )
    assert blob_missing_counted(exchange) == 0
    again = exchange.client.get(f"/jobs/{job['id']}/inputs/{sop_uid}", headers=hospital.headers)
    assert again.status_code == 200 and again.content == study[0].read_bytes()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_fresh_exchange_exports_the_blob_missing_series_at_zero(exchange: Any) -> None:
    """BlobsMissing is `increase(...{kind="blob_missing"}[10m]) > 0`. increase() cannot see a
    series' first value: unless the series is exported at 0 from the replica's start, the
    first missing blob a replica meets (1 where there was no series) never fires the page."""
    metrics = exchange.client.get("/metrics").text
    assert 'aifi_exchange_errors_total{kind="blob_missing"} 0.0' in metrics


@pytest.mark.parametrize("lost", ["purged", "missing"])
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # local_path: files only
def test_the_web_key_image_of_a_seg_no_longer_in_the_store_is_no_500(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path, lost: str
) -> None:
    """The web page's key image (`/ui/jobs/{id}/key-image.png`) of a job whose SEG was purged
    by retention (its row stays, marked purged) or is missing from the store: there is none
    to draw (404), not a server error on every view of the job's page. The row's kind is set
    by hand, as a SEG-making product (brain volumetry) would have it."""
    from aifi.web.pages import _render_key_image
    from aifi.web.session import WebUser

    job = _completed_with_result(exchange, parties, make_ct, tmp_path)
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(
            text("UPDATE job_results SET kind = 'seg' WHERE job_id = :id"), {"id": job["id"]}
        )
    _result_gone(exchange, job["id"], lost)
    user = WebUser("radiologist", "R", "clinician", "hospital-a", "hospital")
    assert _render_key_image(services, user, job["id"]) is None


@pytest.mark.parametrize("gone", ["purged", "missing"])
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_gateway_takes_a_result_gone_for_good_as_gone(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path, gone: str
) -> None:
    """The exchange's own answers for a result purged by retention (its row marked between a
    gateway's listing and its download) or missing from the store are what the gateway reads
    as gone for good (`aifi.http.blob_gone`), so that it ends the job rather than asking
    again; one replaced as it was read, or a proxy's page, is not."""
    hospital = parties["hospital_a"]
    job = _completed_with_result(exchange, parties, make_ct, tmp_path)
    _result_gone(exchange, job["id"], gone)
    got = exchange.client.get(f"/jobs/{job['id']}/results/sr.dcm", headers=hospital.headers)
    answer = httpx.Response(got.status_code, content=got.content, headers=dict(got.headers))
    with pytest.raises(ExchangeHTTPError) as caught:
        checked(answer, "GET", f"/jobs/{job['id']}/results/sr.dcm")
    assert blob_gone(caught.value), caught.value.detail
    replaced = f"job {job['id']}'s result 'sr.dcm' was replaced as it was read; read it again"
    assert not blob_gone(ExchangeHTTPError(404, replaced, "GET", "/"))
    assert not blob_gone(UnexpectedAnswer(404, caught.value.detail, "GET", "/"))


def _inputs_lost(exchange: Any, job_id: str) -> None:
    """The job's inputs gone from the store, their rows kept (restored to an earlier moment)."""
    services = exchange.client.app.state.services
    with services.db.session() as session:
        keys = session.scalars(
            text("SELECT blob_key FROM job_inputs WHERE job_id = :id"), {"id": job_id}
        ).all()
    for key in keys:
        services.blobs.delete(key)


def _failure_counted(exchange: Any) -> tuple[int, int]:
    """product-a's failed and ended jobs at hospital-a, as evaluation counts them."""
    services = exchange.client.app.state.services
    with services.db.session() as session:
        [row] = [
            t
            for t in aggregates.tallies(session)
            if (t.product_id, t.hospital_id) == ("product-a", "hospital-a")
        ]
    return row.failed, row.ended


def _job_updates(exchange: Any, job_id: str) -> list[tuple[str, str]]:
    """Who changed the job, and how, as the access log has it."""
    audit = exchange.client.get(
        "/audit", params={"limit": 5000}, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    ).json()
    return [
        (e["organisation_id"], e["detail"])
        for e in audit
        if (e["object_type"], e["object_id"], e["action"]) == ("job", job_id, "update")
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_lost_input_marks_its_open_job_on_record_and_not_an_ended_one(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """The worker's read of an input of the job it holds finds it lost: the job is marked, by
    the exchange, on record. The product's own failure of another job, whose inputs a
    hospital's read finds lost only after it ended, stays the product's: that job ended for
    what it was, and is not marked."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    failed = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    [item] = claim["inputs"]
    read = f"/jobs/{failed['id']}/inputs/{item['sop_instance_uid']}"
    assert exchange.client.get(read, headers=lease).status_code == 200
    said = exchange.client.post(
        f"/jobs/{failed['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "the model crashed"},
        headers=vendor.headers,
    )
    assert said.status_code == 200, said.text
    assert _failure_counted(exchange) == (1, 1)
    _inputs_lost(exchange, failed["id"])
    assert exchange.client.get(read, headers=hospital.headers).status_code == 404
    listed = exchange.client.get(f"/jobs/{failed['id']}", headers=hospital.headers).json()
    assert listed["state"] == "failed" and listed["inputs_lost_at"] is None
    assert _failure_counted(exchange) == (1, 1)  # still the product's failure

    held = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    assert claim["job"]["id"] == held["id"]
    _inputs_lost(exchange, held["id"])
    [item] = claim["inputs"]
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    read = f"/jobs/{held['id']}/inputs/{item['sop_instance_uid']}"
    assert exchange.client.get(read, headers=lease).status_code == 404
    assert exchange.client.get(read, headers=lease).status_code == 404  # marked once
    listed = exchange.client.get(f"/jobs/{held['id']}", headers=hospital.headers).json()
    assert listed["inputs_lost_at"] is not None
    assert [u for u in _job_updates(exchange, held["id"]) if u[0] == "exchange"] == [
        ("exchange", f"inputs lost: its input {item['sop_instance_uid']} is missing from the "
         "blob store"),
    ]  # fmt: skip
    said = exchange.client.post(
        f"/jobs/{held['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "input missing"},
        headers=vendor.headers,
    )
    assert said.status_code == 200, said.text
    assert _failure_counted(exchange) == (1, 1)  # the exchange's doing, not the product's


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_input_lost_before_its_job_opened_is_sent_again_and_marks_nothing(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """The job still takes inputs when a read finds one lost: the hospital's gateway can send
    it again (it does, when the exchange holds a job unopened with inputs missing), and the
    job then runs whole. It is not marked: a failure of it is the product's."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=2)
    header = pydicom.dcmread(study[0], stop_before_pixels=True)
    job = exchange.job(hospital, "product-a", str(header.StudyInstanceUID), instances=2)
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
    _inputs_lost(exchange, job["id"])
    read = f"/jobs/{job['id']}/inputs/{header.SOPInstanceUID}"
    assert exchange.client.get(read, headers=hospital.headers).status_code == 404
    assert exchange.upload(hospital, job["id"], study[0]).status_code == 201  # sent again
    assert exchange.upload(hospital, job["id"], study[1]).status_code == 201  # opens it
    claim = exchange.claim(vendor)
    assert claim["job"]["id"] == job["id"]
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    assert exchange.client.get(read, headers=lease).status_code == 200
    listed = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert listed["inputs_lost_at"] is None


@pytest.mark.parametrize("how", ["handed back", "lease ran out", "read in the queue"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_job_whose_input_the_store_lost_is_never_queued_again(
    exchange: Any, parties: dict[str, Any], make_ct: Any, how: str
) -> None:
    """A job marked for an input the store lost cannot be run: queued again, every worker
    would claim it only to fail on it while the study waits. Its worker hands it back (taking
    the missing input for its own trouble), its lease runs out, or it waits in the queue when
    its hospital's read finds the input missing: it ends there, saying why, and its
    hospital's gateway sends the study again at once. It is not the product's failure."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    services = exchange.client.app.state.services
    [uid] = [i["sop_instance_uid"] for i in exchange.client.get(
        f"/jobs/{job['id']}/inputs", headers=hospital.headers).json()]  # fmt: skip
    read = f"/jobs/{job['id']}/inputs/{uid}"
    _inputs_lost(exchange, job["id"])
    if how == "read in the queue":
        assert exchange.client.get(read, headers=hospital.headers).status_code == 404
    else:
        claim = exchange.claim(vendor)
        assert claim is not None and claim["job"]["id"] == job["id"]
        lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
        assert exchange.client.get(read, headers=lease).status_code == 404  # marks it
        if how == "handed back":
            released = exchange.client.post(
                f"/jobs/{job['id']}/release",
                json={"lease_token": claim["lease_token"], "reason": "cannot read the input"},
                headers=vendor.headers,
            )
            assert released.status_code == 200, released.text
            assert released.json()["state"] == "failed"
        else:
            with services.db.session() as session:
                session.get(Job, job["id"]).lease_expires_at = utcnow() - timedelta(seconds=1)
            assert services.jobs.expire_leases() == 1
    listed = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert listed["state"] == ("expired" if how == "lease ran out" else "failed")
    assert listed["inputs_lost_at"] is not None
    assert "missing from the exchange's blob store" in listed["reason"]
    assert exchange.claim(vendor) is None  # not offered again
    assert _failure_counted(exchange) == (0, 0)  # the exchange's doing, not the product's
    ended_by = {
        "handed back": ("vendor-a", f"failed: handed back (cannot read the input); {LOST}"),
        "lease ran out": ("exchange", f"expired: the vendor's lease ran out; {LOST}"),
        "read in the queue": ("exchange", f"failed: {LOST}"),
    }
    assert _job_updates(exchange, job["id"])[-1] == ended_by[how]
    assert listed["reason"] == ended_by[how][1].split(": ", 1)[1].removeprefix(
        "handed back (cannot read the input); "
    )


def _waiting_on_a_row_lock(services: Any) -> int:
    """PostgreSQL sessions waiting on a lock (another transaction's row), as the server says."""
    with services.db.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        )


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_hand_back_that_waits_on_the_mark_sees_it_and_ends_the_job(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """The worker hands the job back while a read (its hospital's, or the worker's own other
    thread) marks it for a lost input, and the hand-back waits on the mark's row lock. Once
    the mark commits, the hand-back sees it: the job fails, saying why, and is not queued
    again; the worker's lease was live, so it is not refused."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor)
    assert claim is not None and claim["job"]["id"] == job["id"]
    services = exchange.client.app.state.services
    answers: dict[str, Any] = {}

    def hand_back() -> None:
        answers["release"] = exchange.client.post(
            f"/jobs/{job['id']}/release",
            json={"lease_token": claim["lease_token"], "reason": "no GPU free"},
            headers=vendor.headers,
        )

    worker = threading.Thread(target=hand_back)
    with services.db.session() as session:  # the mark, as a read that finds the input lost
        assert services.transfers._mark_inputs_lost(session, job["id"], "input x") is None
        worker.start()
        wait_for(lambda: _waiting_on_a_row_lock(services) == 1, 30, "the hand-back to wait")
    worker.join(30)
    assert not worker.is_alive()
    released = answers["release"]
    assert released.status_code == 200, released.text
    assert (released.json()["state"], released.json()["reason"]) == ("failed", LOST)
    assert exchange.claim(vendor) is None
