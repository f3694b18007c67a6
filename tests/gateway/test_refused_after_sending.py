"""A job refused after some of its instances reached the exchange (by an earlier attempt that
broke off, or by this one before the exchange refused an instance): the exchange's job, not
yet opened to vendors, is cancelled rather than left to expire there, and what it holds is
on the gateway's disclosure log, as every instance that left the hospital must be.

The gateway is driven as its sender and results threads drive it, against a real exchange
and vendor worker; the exchange's refusal is its own, of bytes changed on the way.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from aifi.products import tissue_volume
from aifi.vendor import VendorClient
from support.hospital import (
    PRODUCT,
    Hospital,
    acknowledgements_lost,
    refuses,
)
from support.national import OPERATOR_KEY, VENDOR, national_path

pytestmark = pytest.mark.peer


def garbled_on_the_way(hospital: Hospital, sop_uid: str) -> None:
    """From now on the upload of `sop_uid` reaches the exchange as bytes that are not DICOM
    (a proxy that mangles bodies, say): the exchange refuses it (422)."""
    passing = hospital.network.handle_request

    def garbles(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and sop_uid in request.url.path:
            request.read()
            framing = {"content-length", "transfer-encoding"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in framing}
            request = httpx.Request("PUT", request.url, headers=headers, content=b"garbled" * 40)
        return passing(request)

    hospital.network.handle_request = garbles  # type: ignore[method-assign]


def only_mr_from_now_on(hospital: Hospital) -> None:
    """The vendor publishes a version of the product that takes MR only, and the gateway
    sees it: the study's CT series are accepted no more."""
    mr_only = tissue_volume.manifest(VENDOR)
    mr_only.update(version="2.0.0", accepts={**mr_only["accepts"], "modalities": ["MR"]})
    VendorClient(hospital.national.exchange.url, hospital.national.vendor_key).register_product(
        mr_only
    )
    hospital.gateway.client.product(PRODUCT, max_age=0)


def exchange_job(hospital: Hospital, exchange_job_id: str) -> dict[str, Any]:
    with hospital.national.api() as api:
        return dict(api.get(f"/jobs/{exchange_job_id}").json())


def nothing_left_to_bring_home(hospital: Hospital) -> None:
    """The results thread's poll finds nothing of the job: it was acknowledged."""
    assert hospital.gateway.client.ended_jobs(wait=0) == []


def test_an_instance_the_exchange_refuses_cancels_what_earlier_attempts_sent(
    hospital: Hospital,
) -> None:
    """The first try sent some instances and broke off; on the retry the exchange refuses
    the one it broke off at. The job is refused with the exchange's reason; the exchange's job,
    holding the others, is cancelled, not left `requested` for a week; the instances it holds
    are on the disclosure log."""
    opened = hospital.part_sent_then_broken_off()
    held = opened["input_count"]
    assert 0 < held < len(hospital.files) and hospital.disclosed() == []
    garbled_on_the_way(hospital, next(iter(hospital.pseudonyms(hospital.files[0]))))
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]

    [job] = hospital.jobs()
    assert job["state"] == "refused", job["reason"]
    assert job["reason"].startswith("the exchange refused the job: "), job["reason"]
    ended = exchange_job(hospital, opened["id"])
    assert ended["state"] == "cancelled", ended
    assert held <= ended["input_count"] < len(hospital.files)  # the retry sent more
    # The exchange is told why in the gateway's own words; the exchange's detail stays here.
    assert ended["reason"] == "the exchange refused the job", ended["reason"]
    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}: {ended['input_count']} instance(s)" in disclosed
    assert "ended (cancelled) before any vendor took it" in disclosed
    nothing_left_to_bring_home(hospital)


def test_a_job_the_exchange_ended_before_it_opened_has_what_it_held_on_record(
    hospital: Hospital,
) -> None:
    """The operator cancelled the exchange's job between the broken-off first try and the
    retry: the job is refused with the exchange's reason, and the instances the exchange
    held are on the disclosure log; the ended job is acknowledged."""
    opened = hospital.part_sent_then_broken_off()
    with hospital.national.api(OPERATOR_KEY) as operator:
        operator.post(
            f"/jobs/{opened['id']}/cancel", json={"reason": "maintenance of the product"}
        ).raise_for_status()
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]

    [job] = hospital.jobs()
    assert job["state"] == "refused", job["reason"]
    assert "maintenance of the product" in job["reason"]
    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}: {opened['input_count']} instance(s)" in disclosed
    nothing_left_to_bring_home(hospital)


def test_a_refused_job_whose_cancellation_was_not_acknowledged_is_acknowledged_later(
    hospital: Hospital,
) -> None:
    """The acknowledgement of the cancelled job did not get through: the results thread finds
    the job among the ended ones, acknowledges it and keeps the refusal as it was."""
    opened = hospital.part_sent_then_broken_off()
    garbled_on_the_way(hospital, next(iter(hospital.pseudonyms(hospital.files[0]))))
    passing = hospital.network.handle_request
    acknowledgements_lost(hospital)
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]
    hospital.network.handle_request = passing  # type: ignore[method-assign]
    [refused] = hospital.jobs()
    assert refused["state"] == "refused"

    [ended] = hospital.gateway.client.ended_jobs(wait=0)
    assert ended["id"] == opened["id"] and ended["state"] == "cancelled"
    assert hospital.gateway.collect(ended)  # acknowledged with the poll's others
    assert hospital.jobs() == [refused]


def test_a_job_an_earlier_attempt_opened_stands_when_the_retry_cannot_send_it(
    hospital: Hospital,
) -> None:
    """The first try opened the exchange's job with every instance, but its disclosure could
    not be written (the log's disk full). Before the retry the vendor published a version of
    the product that takes MR only, so the retry finds nothing to send. The job stands as it
    opened: on record and submitted, its results to come home; nothing is cancelled."""
    job, opened = hospital.opened_unrecorded()
    only_mr_from_now_on(hospital)
    assert hospital.send_due(time.time() + 600) == [job["id"]]

    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    assert job["reason"].startswith("opened by an earlier attempt; this one could not send it")
    assert "no series of the study is accepted" in job["reason"]
    assert exchange_job(hospital, opened["id"])["state"] != "cancelled"
    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}: {len(hospital.files)} instance(s)" in disclosed


def test_a_job_whose_creation_had_no_answer_is_found_by_its_key_and_cancelled(
    hospital: Hospital,
) -> None:
    """The request that made the exchange's job lost its answer, so the gateway does not know
    the job's id. Before the retry the product's new version takes none of the study's
    series: the job is refused, and the exchange's job, found by the job's key, cancelled
    rather than left there empty for a week."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    hospital.gateway.client.product(PRODUCT)
    hospital.network.lose_creation_answers = True
    assert hospital.send_due() == [job["id"]]
    hospital.network.lose_creation_answers = False
    [job] = hospital.jobs()
    assert job["may_be_open"] and job["exchange_job_id"] is None, job
    [made] = hospital.exchange_jobs()
    only_mr_from_now_on(hospital)
    passing = hospital.network.handle_request
    acknowledgements_lost(hospital)
    assert hospital.send_due(time.time() + 600) == [job["id"]]
    hospital.network.handle_request = passing  # type: ignore[method-assign]

    [job] = hospital.jobs()
    assert job["state"] == "refused" and "no series" in job["reason"], job["reason"]
    assert job["exchange_job_id"] == made["id"]  # known now, to the results thread too
    ended = exchange_job(hospital, made["id"])
    assert ended["state"] == "cancelled" and ended["input_count"] == 0
    assert hospital.disclosed() == []  # nothing of the study went
    [listed] = hospital.gateway.client.ended_jobs(wait=0)
    assert listed["id"] == made["id"] and hospital.gateway.collect(listed)


def test_a_job_an_older_version_refused_has_what_it_left_put_on_record_when_it_ends(
    hospital: Hospital,
) -> None:
    """An older version refused a part-sent job and left its exchange job taking inputs,
    its instances off the record. When the exchange ends that job, bringing it home puts
    them on record, once however often it comes, and keeps the refusal."""
    opened = hospital.part_sent_then_broken_off()
    [job] = hospital.jobs()
    reason = "the exchange refused the job: as an older version refused it"
    hospital.gateway.state.update_job(job["id"], state="refused", reason=reason)
    with hospital.national.api(OPERATOR_KEY) as operator:
        operator.post(
            f"/jobs/{opened['id']}/cancel", json={"reason": "unfinished for seven days"}
        ).raise_for_status()

    [ended] = hospital.gateway.client.ended_jobs(wait=0)
    assert hospital.gateway.collect(ended) and hospital.gateway.collect(ended)

    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}: {opened['input_count']} instance(s)" in disclosed
    assert reason in disclosed
    [job] = hospital.jobs()
    assert (job["state"], job["reason"]) == ("refused", reason)


def test_a_refusal_whose_state_write_failed_is_put_on_record_once(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange's job was cancelled and its instances put on record, and then the
    gateway's own state could not take the refusal (the database locked). The retry settles
    the same job again: the refusal stands, and the log has one entry for it, not two."""
    opened = hospital.part_sent_then_broken_off()
    garbled_on_the_way(hospital, next(iter(hospital.pseudonyms(hospital.files[0]))))
    [job] = hospital.jobs()
    state = hospital.gateway.state

    def locked_for_refusals(job_id: int, reason: str, *args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as locked:
        locked.setattr(state, "refuse", locked_for_refusals)
        assert hospital.send_due(time.time() + 600) == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "pending", job["reason"]
    assert "unexpectedly: OperationalError: database is locked" in job["reason"]
    assert exchange_job(hospital, opened["id"])["state"] == "cancelled"

    assert hospital.send_due(time.time() + 600) == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "refused", job["reason"]
    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}:" in disclosed


@pytest.mark.parametrize("product_fails", [False, True], ids=["completed", "failed"])
def test_a_job_an_older_version_refused_after_it_opened_comes_home_on_record(
    tmp_path: Path, product_fails: bool
) -> None:
    """An older version refused a job whose earlier attempt had opened the exchange's job to
    vendors, unrecorded (the log full). The product ran it: bringing it home puts it on
    record as sent to the product, before anything of it comes home, and it ends as the
    exchange's job ended."""
    with national_path(tmp_path, product=refuses if product_fails else tissue_volume.run) as n:
        hospital = Hospital(n, tmp_path)
        try:
            job, opened = hospital.opened_unrecorded()
            reason = "no series of the study is accepted, as an older version refused it"
            hospital.gateway.state.update_job(job["id"], state="refused", reason=reason)
            deadline = time.monotonic() + 60
            while not (ended := hospital.gateway.client.ended_jobs(wait=1)):
                assert time.monotonic() < deadline, "the vendor did not end the job"
            [listed] = ended
            assert hospital.gateway.collect(listed)

            [job] = hospital.jobs()
            assert job["state"] == ("ended" if product_fails else "delivered"), job["reason"]
            entries = hospital.gateway.disclosures.entries()
            assert entries[0].action == "disclosed"
            assert entries[0].recipient.startswith(PRODUCT), entries[0].recipient
            assert f"exchange job {opened['id']}: {len(hospital.files)} instance(s)" in (
                entries[0].detail
            )
            came_home = [] if product_fails else ["reidentified", "delivered"]
            assert [e.action for e in entries[1:]] == came_home
        finally:
            hospital.close()


def test_a_job_that_opens_while_it_is_being_withdrawn_stands_as_it_opened(
    hospital: Hospital,
) -> None:
    """The exchange refuses an instance, and the gateway withdraws the job; just before its
    cancel arrives, the exchange's job opens to vendors (an earlier try's request finished
    late, here a `ready` for what it holds). The cancel is refused, so no vendor loses a job
    it may have taken; the job stands as it opened, on record as sent to the product."""
    opened = hospital.part_sent_then_broken_off()
    garbled_on_the_way(hospital, next(iter(hospital.pseudonyms(hospital.files[0]))))
    passing = hospital.network.handle_request

    def opens_first(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            held = exchange_job(hospital, opened["id"])["input_count"]
            with hospital.national.api() as api:
                api.post(f"/jobs/{opened['id']}/ready", json={"instances": held}).raise_for_status()
        return passing(request)

    hospital.network.handle_request = opens_first  # type: ignore[method-assign]
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]

    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    assert "this one could not send it: the exchange refused the job" in job["reason"]
    ended = exchange_job(hospital, opened["id"])
    assert ended["inputs_complete"] and ended["state"] != "cancelled", ended
    [disclosed] = hospital.disclosed()
    assert f"exchange job {opened['id']}: {ended['input_count']} instance(s)" in disclosed
    assert "the exchange refused the job" in disclosed


def test_a_job_whose_sending_fails_unexpectedly_holds_up_no_job_behind_it(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending one job meets a fault the gateway did not expect (here its disclosure step
    raises): that job waits for its retry, with the fault as its reason, and the job behind
    it in the same pass is sent. Before, the fault ended the pass, and every pass after began
    with the same job."""
    (tmp_path / "other").mkdir()
    for file in hospital.files[:3]:  # three instances of another study, of another patient
        other = pydicom.dcmread(file)
        other.StudyInstanceUID, other.PatientID = f"{other.StudyInstanceUID}.7", "OTHER-7"
        other.save_as(tmp_path / "other" / file.name)
    hospital.receive(*hospital.files[3:], *sorted((tmp_path / "other").iterdir()))
    assert hospital.route() == 2
    first, second = hospital.jobs()
    patient_of = hospital.gateway._patient_of

    def faulty_for_the_first(pseudonym_study_uid: str, study_uid: str) -> tuple[str, str]:
        if study_uid == first["study_uid"]:
            raise KeyError("a fault in the gateway")
        return patient_of(pseudonym_study_uid, study_uid)

    monkeypatch.setattr(hospital.gateway, "_patient_of", faulty_for_the_first)
    assert hospital.send_due() == [first["id"], second["id"]]

    first, second = hospital.jobs()
    assert second["state"] == "submitted", second["reason"]
    assert first["state"] == "pending"
    assert "sending failed unexpectedly: KeyError" in first["reason"]
    monkeypatch.undo()
    assert hospital.send_due(time.time() + 600) == [first["id"]]
    assert [job["state"] for job in hospital.jobs()] == ["submitted", "submitted"]
