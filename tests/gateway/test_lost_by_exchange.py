"""An exchange restored to an earlier moment has lost the jobs made after it, and the inputs
that arrived after it: the gateway asks about the jobs it sent a while ago, and sends again
what the exchange lost. Each study still comes home once, as one result in the PACS."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from sqlalchemy import select

from aifi.exchange.models import JobInput, JobResult
from aifi.gateway import service as service_module
from aifi.gateway.backup import back_up
from aifi.gateway.config import load_config
from aifi.gateway.exchange_client import CancelReason, GatewayClient
from aifi.gateway.job_list import job_statuses
from aifi.gateway.lost_jobs import ASK_AFTER_SECONDS, ASK_EVERY_SECONDS, LISTED_JOB
from aifi.gateway.metrics import gateway_registry
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.gateway.service import INPUTS_LOST_BY_EXCHANGE, LOST_BY_EXCHANGE, NO_RESULT_BECAUSE
from aifi.gateway.state import GatewayState
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.results.delivery import Delivery
from aifi.vendor import JobContext, ProductResult
from aifi.web import mount
from support.exchange_restore import backed_up, restored
from support.hospital import PRODUCT, Hospital
from support.national import OPERATOR_KEY, National, national_path, samples, started_gateway
from support.peers import OrthancPeer, free_port, start_orthanc, storescu
from support.restore import bring_home, lose_the_disk, until_ended
from support.restore import restored as restored_gateway

pytestmark = pytest.mark.peer


def restore_exchange(national: National, backup: Path) -> None:
    """The national path's exchange put back from `backup` (`support.exchange_restore`)."""
    national.exchange = restored(national.exchange, backup, extensions=[mount])


@pytest.fixture
def restartable(national: National) -> Iterator[National]:
    """The national path, whose exchange a test may restore; the exchange it ends with is
    stopped at the end."""
    yield national
    national.exchange.stop()


def _after_first(
    hospital: Hospital, matches: Callable[[httpx.Request], bool], then: Callable[[], object]
) -> None:
    """Before the first request `matches` leaves the gateway, `then` is done."""
    passing = hospital.network.handle_request
    done = threading.Event()

    def watched(request: httpx.Request) -> httpx.Response:
        if matches(request) and not done.is_set():
            done.set()
            then()
        return passing(request)

    hospital.network.handle_request = watched  # type: ignore[method-assign]


def test_a_job_the_exchange_no_longer_knows_is_sent_again_and_comes_home_once(
    restartable: National, hospital: Hospital, tmp_path: Path
) -> None:
    national = restartable
    backup = backed_up(national.exchange, tmp_path / "exchange-backup.db")
    hospital.receive(*hospital.files, hospital.late)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    lost, first_sent = (hospital.jobs()[0][key] for key in ("exchange_job_id", "submitted_at"))
    restore_exchange(national, backup)
    assert hospital.exchange_jobs() == []

    # Not asked about while it may still be read.
    assert hospital.gateway.ask_about_submitted() == []
    assert hospital.jobs()[0]["state"] == "submitted"
    later = time.time() + ASK_AFTER_SECONDS
    assert hospital.gateway.ask_about_submitted(now=later) == [job["id"]]
    [again] = hospital.jobs()
    assert again["state"] == "pending" and again["exchange_job_id"] is None
    assert lost in again["reason"] and "no longer knows" in again["reason"]
    assert hospital.gateway.ask_about_submitted(now=later) == []  # taken back: not asked

    assert hospital.send_due() == [job["id"]]
    [sent] = hospital.jobs()
    assert sent["state"] == "submitted" and sent["exchange_job_id"] != lost
    assert sent["submitted_at"] == first_sent  # waited for since it was first sent
    [remote] = hospital.exchange_jobs()
    assert remote["id"] == sent["exchange_job_id"]
    assert hospital.inputs(remote["id"]) == hospital.pseudonyms(*hospital.files, hospital.late)
    bring_home(hospital, remote["id"])
    [home] = hospital.jobs()
    assert home["state"] == "delivered", home["reason"]
    assert home["results_delivered"] >= 1
    assert len(national.pacs().get("/instances")) == home["results_delivered"]  # type: ignore[arg-type]
    # Disclosed twice, as it was sent twice: once to the job the exchange lost.
    assert [lost in entry for entry in hospital.disclosed()] == [True, False]


def test_a_job_whose_inputs_the_exchange_lost_takes_the_rest(
    restartable: National, hospital: Hospital, tmp_path: Path
) -> None:
    national = restartable
    backup = tmp_path / "exchange-backup.db"
    _after_first(
        hospital,
        lambda request: request.method == "PUT" and "/inputs/" in request.url.path,
        lambda: backed_up(national.exchange, backup),  # the job made, none of its inputs yet
    )
    hospital.receive(*hospital.files, hospital.late)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    opened = str(hospital.jobs()[0]["exchange_job_id"])
    restore_exchange(national, backup)
    [held] = hospital.exchange_jobs()
    assert held["id"] == opened and not held["inputs_complete"]

    later = time.time() + ASK_AFTER_SECONDS
    assert hospital.gateway.ask_about_submitted(now=later) == [job["id"]]
    [again] = hospital.jobs()
    assert again["state"] == "pending" and again["exchange_job_id"] == opened
    assert "inputs sent again" in again["reason"]

    assert hospital.send_due() == [job["id"]]
    [remote] = hospital.exchange_jobs()  # the same job, no other
    assert remote["id"] == opened and remote["inputs_complete"]
    assert hospital.inputs(opened) == hospital.pseudonyms(*hospital.files, hospital.late)
    bring_home(hospital, opened)
    assert hospital.jobs()[0]["state"] == "delivered"


def test_jobs_the_exchange_holds_are_left_to_the_listing(
    national: National, hospital: Hospital
) -> None:
    hospital.receive(*hospital.files, hospital.late)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    exchange_id = str(hospital.jobs()[0]["exchange_job_id"])
    later = time.time() + ASK_AFTER_SECONDS
    assert hospital.gateway.ask_about_submitted(now=later) == []  # under way, or ended
    until_ended(hospital, exchange_id)
    assert hospital.gateway.ask_about_submitted(now=later + ASK_EVERY_SECONDS) == []
    [held] = hospital.jobs()
    assert held["state"] == "submitted" and held["exchange_job_id"] == exchange_id
    bring_home(hospital, exchange_id)
    assert hospital.jobs()[0]["state"] == "delivered"


def test_a_running_gateway_sends_again_what_a_restored_exchange_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asked about at once, and every half second: the test need not wait minutes.
    monkeypatch.setattr("aifi.gateway.service.ASK_AFTER_SECONDS", 0.0)
    monkeypatch.setattr("aifi.gateway.lost_jobs.ASK_EVERY_SECONDS", 0.5)
    release = threading.Event()

    def held_back(context: JobContext) -> ProductResult:
        """The reference product, reading until the test lets it finish."""
        assert release.wait(60)
        return tissue_volume.run(context)

    write_study("ct-head", tmp_path / "study", seed=6, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    with national_path(tmp_path / "national", product=held_back) as national:
        try:
            backup = backed_up(national.exchange, tmp_path / "exchange-backup.db")
            with started_gateway(tmp_path / "hospital", national, metrics_port=0) as gateway:
                storescu(files, gateway.port)
                assert gateway.wait_until(
                    lambda: [job["state"] for job in gateway.jobs()] == ["submitted"], 60
                ), gateway.jobs()
                lost = gateway.jobs()[0]["exchange_job_id"]
                restore_exchange(national, backup)
                release.set()  # the product's result for the lost job finds no job to take it
                assert gateway.wait_until(
                    lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], 120
                ), gateway.jobs()
                [job] = gateway.jobs()
                assert gateway.metrics is not None
                counted = samples(httpx.get(gateway.metrics.url, timeout=60).text)
            lost_by_exchange = {
                labels[0][1]: value
                for (name, labels), value in counted.items()
                if name == "aifi_gateway_jobs_lost_by_exchange_total"
            }
            assert lost_by_exchange == {
                "sent_again": 1.0,
                "inputs_sent_again": 0.0,
                "delivered_from_copy": 0.0,
                "ended": 0.0,
                "covered": 0.0,
                "images_sent_again": 0.0,
                "images_lost_ended": 0.0,
                "results_sent_again": 0.0,
                "results_lost_ended": 0.0,
            }
            with national.api() as api:
                [remote] = api.get("/jobs").json()
            assert remote["id"] == job["exchange_job_id"] != lost
            assert remote["acknowledged_at"] is not None
            assert job["results_delivered"] >= 1
            assert len(national.pacs().get("/instances")) == job["results_delivered"]  # type: ignore[arg-type]
        finally:
            national.exchange.stop()


def _pacs_instances(pacs: OrthancPeer) -> int:
    return len(pacs.get("/instances"))  # type: ignore[arg-type]


def test_rounds_the_exchange_lost_are_not_sent_twice_with_the_same_instances(
    restartable: National, hospital: Hospital, tmp_path: Path
) -> None:
    """Round 1 went with the study's first instances, round 2 (a late instance) with all of
    them; the exchange loses both. Sent again, round 1 takes the study as it is now, the late
    instance too: round 2 would be the same instances, and is skipped, not run twice."""
    national = restartable
    backup = backed_up(national.exchange, tmp_path / "exchange-backup.db")
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [first] = hospital.jobs()
    assert hospital.send_due() == [first["id"]]
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    _, second = hospital.jobs()
    assert hospital.send_due() == [second["id"]]
    restore_exchange(national, backup)

    later = time.time() + ASK_AFTER_SECONDS
    assert hospital.gateway.ask_about_submitted(now=later) == [first["id"], second["id"]]
    assert hospital.send_due() == [first["id"], second["id"]]
    [remote] = hospital.exchange_jobs()
    assert hospital.inputs(remote["id"]) == hospital.pseudonyms(*hospital.files, hospital.late)
    sent, skipped = hospital.jobs()
    assert sent["state"] == "submitted" and sent["exchange_job_id"] == remote["id"]
    assert skipped["state"] == "skipped" and f"job {first['id']}" in skipped["reason"]


def test_with_another_hospitals_key_nothing_is_sent_again(
    national: National, hospital: Hospital, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys mixed up between two hospitals: every job of this one is unknown to the other's
    key (the tenant wall answers 404). Nothing is taken for lost, nor sent under the other
    hospital's account."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    with national.api(OPERATOR_KEY) as operator:
        made = operator.post(
            "/organisations", json={"id": "hospital-2", "name": "hospital-2", "kind": "hospital"}
        )
        made.raise_for_status()
        other_key = str(made.json()["api_key"])
    with national.api(other_key) as other:
        other.post("/subscriptions", json={"product_id": PRODUCT}).raise_for_status()
    hospital.gateway.client = GatewayClient(
        national.exchange.url, other_key, transport=hospital.network, retries=0
    )
    assert hospital.gateway.ask_about_submitted(now=time.time() + ASK_AFTER_SECONDS) == []
    assert hospital.send_due() == []
    with national.api(other_key) as other:
        assert other.get("/jobs").json() == []
    assert hospital.jobs()[0]["state"] == "submitted"
    assert "the API key belongs to hospital-2 (hospital), not to hospital 'hospital-1'" in (
        caplog.text
    )


#: An exchange job adopted (`aifi gateway-unknown-jobs --adopt`) that the exchange forgot.
LOST = "00000000-0000-4000-8000-000000000000"


def _with_ris(hospital: Hospital, port: int) -> None:
    """The hospital's gateway reopened with its RIS (HL7) on `port`."""
    hospital.close()
    config = yaml.safe_load(hospital.path.read_text())
    config["notifications"] = {"hl7": {"host": "127.0.0.1", "port": port, "processing_id": "T"}}
    hospital.path.write_text(yaml.safe_dump(config))
    hospital.gateway = hospital.open()


def _adopted_and_lost(
    hospital: Hospital, own: str, *, priority: str | None = None, own_ended: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study sent, its job then `own` (ended without a result, or delivered; at
    `own_ended`, now by default), and a job of the same study and product adopted (run at
    `priority`), which the exchange lost, asked about: the study's own job and the adopted
    one, as they stand then."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]  # the vault knows the study from here
    ended_at = time.time() if own_ended is None else own_ended
    hospital.gateway.state.update_job(int(job["id"]), state=own, ended_at=ended_at)
    adopted = hospital.gateway.state.adopt(
        LOST, job["study_uid"], PRODUCT, priority, made_at=time.time() - 3600
    )
    assert hospital.gateway.ask_about_submitted(now=time.time() + ASK_AFTER_SECONDS) == []
    return job, hospital.gateway.state.job(int(adopted["id"]))


def _lost_counted(hospital: Hospital, outcome: str) -> float | None:
    registry = gateway_registry(
        hospital.gateway.state, lost_by_exchange=hospital.gateway._submitted_watch.outcomes
    )
    return registry.get_sample_value(
        "aifi_gateway_jobs_lost_by_exchange_total", {"outcome": outcome}
    )


def test_an_adopted_job_the_exchange_lost_ends_saying_so(
    national: National, hospital: Hospital
) -> None:
    """An adopted job has no round of the study to send again, and the study's own job ended
    without a result: it ends, saying the exchange lost it and that the study is to be sent
    again."""
    _job, ended = _adopted_and_lost(hospital, "ended")
    assert ended["state"] == "ended", ended
    assert f"no longer knows its job {LOST}" in ended["reason"]
    assert "send the study again from the PACS" in ended["reason"]
    assert _lost_counted(hospital, "ended") == 1.0  # GatewayLostJobEnded
    assert _lost_counted(hospital, "sent_again") == 0.0


def test_an_adopted_job_the_exchange_lost_beside_a_delivered_one_ends_quietly(
    national: National, hospital: Hospital
) -> None:
    """The study's own job for the same product was delivered: its result is in the PACS, so
    nobody is told to send the study again, neither the hospital's engineer (no ticket) nor
    the radiologist (no notice)."""
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        job, ended = _adopted_and_lost(hospital, "delivered")
        assert hospital.gateway.notices_queued() == 0
    assert ended["state"] == "ended", ended
    assert ended["reason"].endswith(f"adopted, its study's job {job['id']} stands for it")
    assert _lost_counted(hospital, "covered") == 1.0
    assert _lost_counted(hospital, "ended") == 0.0


def test_an_adopted_job_the_exchange_lost_tells_the_ris_no_result_will_come(
    national: National, hospital: Hospital
) -> None:
    """The radiologist waiting for the adopted job's finding hears that none is coming, and
    why, under the patient's own identity: the notice is queued with the job's end, once."""
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        job, ended = _adopted_and_lost(hospital, "ended")
        assert ended["state"] == "ended"
        assert hospital.gateway.notices_queued() == 1
        # Nothing is left at the exchange to acknowledge: `aifi gateway-jobs` waits for
        # the notice alone.
        assert _waiting_for(hospital, int(ended["id"])) == "its notice"
        # Asked again, the ended job is not asked about, nor its notice queued again.
        later = time.time() + ASK_AFTER_SECONDS + ASK_EVERY_SECONDS
        assert hospital.gateway.ask_about_submitted(now=later) == []
        assert hospital.gateway.notices_queued() == 1
        hospital.gateway.notices.send_due(urgent=False)
        received = listener.received.get(timeout=10)
        assert listener.errors.empty()  # a valid ORU^R01
    assert hospital.gateway.notices_queued() == 0
    assert _waiting_for(hospital, int(ended["id"])) == ""
    sent = pydicom.dcmread(hospital.files[0], stop_before_pixels=True)
    fields = {segment[:3]: segment.split("|") for segment in received.text.split("\r")}
    assert str(sent.PatientID) in fields["PID"][3]
    assert fields["OBR"][3].startswith(LOST) and fields["OBR"][25] == "X"
    assert fields["OBR"][18] == str(sent.AccessionNumber)
    assert fields["OBX"][5] == f"No AI result: {LOST_BY_EXCHANGE}"
    assert hospital.gateway.key.uid(job["study_uid"]) not in received.text


def test_a_stat_adopted_job_the_exchange_lost_is_told_on_the_stat_lane_and_disclosed(
    national: National, hospital: Hospital
) -> None:
    """Run STAT, its notice goes on the STAT lane (never behind routine ones) as a STAT
    message, and the identity it carries to the RIS is on record, as every notice's is."""
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        _job, ended = _adopted_and_lost(hospital, "ended", priority="stat")
        [row] = hospital.gateway.state.queued_notices_of(int(ended["id"]))
        assert row["urgent"] == 1 and row["kind"] == "no-result"
        hospital.gateway.notices.send_due(urgent=False)
        assert listener.received.empty()  # not on the routine lane
        hospital.gateway.notices.send_due(urgent=True)
        received = listener.received.get(timeout=10)
    fields = {segment[:3]: segment.split("|") for segment in received.text.split("\r")}
    assert fields["TQ1"][9] == "S"
    outcomes = hospital.gateway.state.notification_outcomes(int(ended["id"]))
    assert outcomes["hl7"]["ok"] and outcomes["hl7"]["stat"]
    notified = [e for e in hospital.gateway.disclosures.entries() if e.action == "notified"]
    assert [(e.recipient, LOST in e.detail) for e in notified] == [("hl7 notice", True)]


def test_the_vault_keeps_the_study_for_a_lost_jobs_notice(
    national: National, hospital: Hospital
) -> None:
    """The study's own job ended long ago, past `retain_hours`: the adopted job ended now
    starts its retention again, so the sweep leaves the vault entry the queued notice needs."""
    long_ago = time.time() - 3 * hospital.gateway.config.retain_hours * 3600
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        job, ended = _adopted_and_lost(hospital, "ended", own_ended=long_ago)
        assert hospital.gateway.purge_expired() == 0
        assert hospital.gateway.vault.pseudonym_of(job["study_uid"]) is not None
        hospital.gateway.notices.send_due(urgent=False)
        assert listener.received.get(timeout=10)
    assert hospital.gateway.notices_queued() == 0


def _waiting_for(hospital: Hospital, job_id: int) -> str:
    """What `aifi gateway-jobs` says the job waits for."""
    [status] = [
        s
        for s in job_statuses(hospital.gateway.config.workdir / "state.db", everything=True)
        if s.id == job_id
    ]
    return status.waiting_for


def _results_lost(national: National, monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """The exchange's object store loses the results of each of the first `times` jobs whose
    results are asked for, just before the gateway first asks (a store restored to a moment
    before they were stored): they can never be fetched. The exchange jobs whose results were
    lost, as they go."""
    services = national.exchange.app.state.services
    read = services.transfers.result_blob
    lost: list[str] = []

    def lost_as_first_asked_for(actor: Any, job_id: str, name: str, *args: Any) -> Any:
        if job_id not in lost and len(lost) < times:
            with services.db.session() as session:
                keys = list(
                    session.scalars(select(JobResult.blob_key).where(JobResult.job_id == job_id))
                )
            for key in keys:
                services.blobs.delete(key)
            lost.append(job_id)
        return read(actor, job_id, name, *args)

    monkeypatch.setattr(services.transfers, "result_blob", lost_as_first_asked_for)
    return lost


@contextmanager
def _routed_with_results_lost(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, times: int = 1
) -> Iterator[tuple[Hl7Listener, list[str]]]:
    """The hospital's gateway with its RIS, the study received and routed, and the exchange's
    store set to lose the results of the first `times` jobs (`_results_lost`): the RIS, and
    the exchange jobs whose results were lost, as they go."""
    lost = _results_lost(national, monkeypatch, times=times)
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        hospital.receive(*hospital.files)
        assert hospital.route() == 1
        yield listener, lost


def _blob_missing_counted(national: National) -> str:
    """The exchange's count of blobs found missing from its store (`BlobMissing`), as its
    /metrics says it."""
    metrics = httpx.get(f"{national.exchange.url}/metrics", timeout=30).text
    [line] = [m for m in metrics.splitlines() if m.startswith("aifi_exchange_errors_total")
              and 'kind="blob_missing"' in m]  # fmt: skip
    return line.rsplit(" ", 1)[1]


def test_a_result_the_exchanges_store_lost_is_made_again_and_comes_home(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange's store lost the product's result before the gateway fetched it: the
    gateway sends the study again by itself, from its spool, as a new exchange job, and the
    product's result reaches the PACS, a little late, with no notice that none will come. The
    job whose result was lost is acknowledged saying so (the operator counts it), and listed
    again (its acknowledgement lost) it is known, not met as a job of nobody's."""
    with _routed_with_results_lost(national, hospital, monkeypatch) as (listener, lost):
        [job] = hospital.jobs()
        assert hospital.send_due() == [job["id"]]
        first = str(hospital.gateway.state.job(int(job["id"]))["exchange_job_id"])
        listed = until_ended(hospital, first)
        assert listed["state"] == "completed"
        assert hospital.gateway.collect(listed)
        assert lost == [first]
        [again] = hospital.jobs()
        assert again["state"] == "pending" and again["exchange_job_id"] is None, again
        assert again["reason"].startswith("sent again: the exchange's store lost the product's")
        assert (again["replaced_exchange_job_id"], again["replaced_for"]) == (first, "results")
        assert hospital.gateway.notices_queued() == 0
        assert _lost_counted(hospital, "results_sent_again") == 1.0
        hospital.gateway.acknowledge([first])
        assert hospital.gateway.client.job(first)["delivery"] == "lost"
        assert hospital.gateway.collect(listed)  # listed again: known as the job sent again
        assert hospital.gateway.unknown_jobs_left() == 0
        assert hospital.send_due() == [again["id"]]
        sent = str(hospital.gateway.state.job(int(again["id"]))["exchange_job_id"])
        assert sent != first
        assert "No AI result" not in _home_with_its_notice(hospital, listener, sent)
        [home] = hospital.jobs()
        assert home["state"] == "delivered", home["reason"]
        assert len(national.pacs().get("/instances")) == home["results_delivered"] >= 1  # type: ignore[arg-type]
        hospital.gateway.notices.send_due(urgent=False)
        hospital.gateway.notices.send_due(urgent=True)
        assert listener.received.empty()
    assert _blob_missing_counted(national) == "1.0"  # asked once, not at every back-off
    metrics = httpx.get(f"{national.exchange.url}/metrics", timeout=30).text
    assert (
        f'aifi_exchange_undelivered_results_total{{product="{PRODUCT}",reason="lost"}} 1.0'
        in metrics
    )


@pytest.mark.parametrize("covered", [False, True], ids=["alone", "covered"])
def test_a_result_the_exchanges_store_lost_twice_ends_its_job_once_and_tells_the_ris(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, covered: bool
) -> None:
    """Made again, the product's result was lost again: the gateway sends the study no third
    time. The job ends saying so (not asked for again at every back-off, each time paging the
    national operator), and the radiologist hears that the exchange lost the product's
    results and that the study is to be sent again; unless another job of the study for the
    product (here one adopted) brings its result."""
    with _routed_with_results_lost(national, hospital, monkeypatch, times=2) as (listener, lost):
        [job] = hospital.jobs()
        for _ in range(2):
            assert hospital.send_due() == [job["id"]]
            exchange_id = str(hospital.gateway.state.job(int(job["id"]))["exchange_job_id"])
            listed = until_ended(hospital, exchange_id)
            if covered and len(lost) == 1:
                hospital.gateway.state.adopt(
                    "adopted", job["study_uid"], PRODUCT, None, time.time()
                )
            hospital.gateway.collect(listed)
        assert len(lost) == 2
        ended = hospital.gateway.state.job(int(job["id"]))
        assert (ended["state"], ended["delivery"]) == ("ended", "lost"), ended
        assert "is missing from the exchange's blob store" in ended["reason"]  # the operator's
        if covered:
            assert hospital.gateway.notices_queued() == 0
            assert (
                _lost_counted(hospital, "covered"),
                _lost_counted(hospital, "results_lost_ended"),
            ) == (1.0, 0.0)
        else:
            _lost_told(hospital, listener, NO_RESULT_BECAUSE[Delivery.lost], "results")
    assert _lost_counted(hospital, "results_sent_again") == 1.0
    assert _blob_missing_counted(national) == "2.0"  # once for each job


def test_a_job_sent_again_for_a_lost_result_that_the_exchange_refuses_tells_the_ris(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent again for a result the exchange's store lost, the study cannot go: the product
    was suspended meanwhile. The job is refused, and with the refusal the radiologist hears
    that no result will come because the exchange lost the product's results."""
    with _routed_with_results_lost(national, hospital, monkeypatch) as (listener, _lost):
        [job] = hospital.jobs()
        assert hospital.send_due() == [job["id"]]
        first = str(hospital.gateway.state.job(int(job["id"]))["exchange_job_id"])
        assert hospital.gateway.collect(until_ended(hospital, first))
        _suspend(national)
        assert hospital.send_due() == [job["id"]]
        [refused] = hospital.jobs()
        assert refused["state"] == "refused", refused
        _lost_told(hospital, listener, NO_RESULT_BECAUSE[Delivery.lost], "results")


def _suspend(national: National) -> None:
    """The product suspended by the national operator."""
    with national.api(OPERATOR_KEY) as operator:
        suspended = operator.post(
            f"/products/{PRODUCT}/admission", json={"action": "suspend", "note": "review"}
        )
        assert suspended.status_code == 200, suspended.text


def _images_lost(national: National, monkeypatch: pytest.MonkeyPatch, times: int) -> dict[str, str]:
    """The exchange's object store loses an image of the study of each of the first `times`
    jobs, just before the vendor's worker first asks for one (a store restored to an earlier
    moment): the worker fails each such job, naming the image. The image lost, by exchange
    job, as they go."""
    services = national.exchange.app.state.services
    read = services.transfers.input_blob
    lost: dict[str, str] = {}

    def lost_as_first_asked_for(actor: Any, job_id: str, sop_uid: str, *args: Any) -> Any:
        if job_id not in lost and len(lost) < times:
            with services.db.session() as session:
                key = session.scalar(
                    select(JobInput.blob_key).where(
                        JobInput.job_id == job_id, JobInput.sop_instance_uid == sop_uid
                    )
                )
            assert key is not None
            services.blobs.delete(key)
            lost[job_id] = sop_uid
        return read(actor, job_id, sop_uid, *args)

    monkeypatch.setattr(services.transfers, "input_blob", lost_as_first_asked_for)
    return lost


@contextmanager
def _sent_with_images_lost(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, times: int = 1
) -> Iterator[tuple[Hl7Listener, dict[str, str]]]:
    """The hospital's gateway with its RIS, the study received and routed, and the exchange's
    store set to lose images of the first `times` jobs (`_images_lost`): the RIS, and the
    images lost by exchange job as they go."""
    lost = _images_lost(national, monkeypatch, times=times)
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        hospital.receive(*hospital.files)
        assert hospital.route() == 1
        yield listener, lost


def _failed_for_lost_image(hospital: Hospital, lost: dict[str, str]) -> dict[str, Any]:
    """The study's job, sent, as the exchange lists it once its worker failed it for the
    image its store lost."""
    [job] = [j for j in hospital.jobs() if j["state"] == "pending"]
    assert hospital.send_due() == [job["id"]]
    return _failed_for_lost_image_sent(hospital, lost, int(job["id"]))


def _failed_for_lost_image_sent(
    hospital: Hospital, lost: dict[str, str], job_id: int
) -> dict[str, Any]:
    """`_failed_for_lost_image`, for the study's job sent already."""
    exchange_id = hospital.gateway.state.job(job_id)["exchange_job_id"]
    listed = until_ended(hospital, exchange_id)
    assert listed["state"] == "failed" and listed["inputs_lost_at"] is not None
    said = f"{lost[exchange_id]} is missing from the exchange's blob store"
    assert said in listed["reason"]
    return listed


def test_a_job_whose_image_the_exchanges_store_lost_is_sent_again_and_comes_home(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange lost an image of the study before the product read it: the gateway sends
    the study again by itself, from its spool, as a new exchange job, and the product's result
    reaches the PACS, a little late, with no notice that none will come. The failed job is
    acknowledged; listed again (its acknowledgement lost), it is known, not met as a job
    of nobody's."""
    with _sent_with_images_lost(national, hospital, monkeypatch) as (listener, lost):
        listed = _failed_for_lost_image(hospital, lost)
        assert hospital.gateway.collect(listed)
        [again] = hospital.jobs()
        assert again["state"] == "pending" and again["exchange_job_id"] is None
        assert again["reason"].startswith("sent again: the exchange lost images of its study")
        assert hospital.gateway.notices_queued() == 0
        assert _lost_counted(hospital, "images_sent_again") == 1.0
        assert hospital.gateway.collect(listed)  # listed again: known as the job sent again
        assert hospital.gateway.unknown_jobs_left() == 0
        assert hospital.send_due() == [again["id"]]
        sent = hospital.gateway.state.job(int(again["id"]))["exchange_job_id"]
        assert sent != listed["id"]
        assert hospital.inputs(sent) == hospital.pseudonyms(*hospital.files)
        hospital.gateway.collect(until_ended(hospital, sent))  # its notice then waits
        [home] = hospital.jobs()
        assert home["state"] == "delivered", home["reason"]
        assert len(national.pacs().get("/instances")) == home["results_delivered"] >= 1  # type: ignore[arg-type]
        assert hospital.gateway.notices_queued() == 1  # the result's, on its lane
        hospital.gateway.notices.send_due(urgent=False)
        hospital.gateway.notices.send_due(urgent=True)
        received = listener.received.get(timeout=10)  # the result's notice, not a no-result
        assert hospital.gateway.notices_queued() == 0
    assert "No AI result" not in received.text
    assert listener.received.empty()
    hospital.gateway.acknowledge([listed["id"]])
    assert hospital.gateway.client.job(listed["id"])["acknowledged_at"] is not None


@pytest.mark.parametrize("covered", [False, True], ids=["alone", "covered"])
def test_a_job_whose_image_the_exchanges_store_lost_twice_tells_the_ris_the_exchange_lost_it(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, covered: bool
) -> None:
    """Sent again, the study's images were lost again: the gateway sends it no third time.
    The radiologist hears that the exchange lost the study's images, not that the product
    could not analyse the study, and that the study is to be sent again; unless another job
    of the study for the product (here one adopted) brings its result."""
    with _sent_with_images_lost(national, hospital, monkeypatch, times=2) as (listener, lost):
        assert hospital.gateway.collect(_failed_for_lost_image(hospital, lost))
        listed = _failed_for_lost_image(hospital, lost)
        [job] = hospital.jobs()
        if covered:
            hospital.gateway.state.adopt("adopted", job["study_uid"], PRODUCT, None, time.time())
        hospital.gateway.collect(listed)
        if covered:
            assert hospital.gateway.notices_queued() == 0
            assert (
                _lost_counted(hospital, "covered"),
                _lost_counted(hospital, "images_lost_ended"),
            ) == (1.0, 0.0)
        else:
            _lost_images_told(hospital, listener)
    ended = hospital.gateway.state.job(int(job["id"]))
    assert ended["state"] == "ended"
    assert "is missing from the exchange's blob store" in ended["reason"]  # the operator's list
    assert _lost_counted(hospital, "images_sent_again") == 1.0


def _lost_images_told(hospital: Hospital, listener: Hl7Listener) -> None:
    """The RIS hears, once, that no result will come because the exchange lost the study's
    images, and that the study is to be sent again from the PACS."""
    _lost_told(hospital, listener, INPUTS_LOST_BY_EXCHANGE, "images")


def _lost_told(hospital: Hospital, listener: Hl7Listener, reason: str, lost: str) -> None:
    """The RIS hears, once, that no result will come for the `reason` given, as a valid ORU;
    counted as `<lost>_lost_ended`, which pages (GatewayLostJobEnded)."""
    assert hospital.gateway.notices_queued() == 1
    hospital.gateway.notices.send_due(urgent=False)
    received = listener.received.get(timeout=10)
    assert listener.errors.empty()  # a valid ORU^R01
    fields = {segment[:3]: segment.split("|") for segment in received.text.split("\r")}
    assert (fields["OBR"][25], fields["OBX"][5]) == ("X", f"No AI result: {reason}")
    assert _lost_counted(hospital, f"{lost}_lost_ended") == 1.0
    assert listener.received.empty()


@pytest.mark.parametrize("covered", [False, True], ids=["alone", "covered"])
def test_a_job_whose_images_are_gone_from_the_spool_too_is_not_sent_again_and_the_ris_is_told(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, covered: bool
) -> None:
    """The exchange lost images of the study, and the gateway's spool no longer holds them
    (a restore without it, its volume not mounted): sent again, the job would wait for them.
    It ends, and the radiologist hears why; unless another job of the study for the product
    (here one adopted) brings its result, when sending the study again would make no job."""
    with _sent_with_images_lost(national, hospital, monkeypatch) as (listener, lost):
        listed = _failed_for_lost_image(hospital, lost)
        [job] = hospital.jobs()
        (hospital.gateway.spool / job["study_uid"] / f"{_first_sop(hospital)}.dcm").unlink()
        if covered:
            hospital.gateway.state.adopt("adopted", job["study_uid"], PRODUCT, None, time.time())
        hospital.gateway.collect(listed)
        ended = hospital.gateway.state.job(int(job["id"]))
        assert ended["state"] == "ended", ended
        if covered:
            assert hospital.gateway.notices_queued() == 0
            assert _lost_counted(hospital, "covered") == 1.0
            assert _lost_counted(hospital, "images_lost_ended") == 0.0
        else:
            _lost_images_told(hospital, listener)
    assert _lost_counted(hospital, "images_sent_again") == 0.0


def test_a_job_sent_again_for_lost_images_that_the_exchange_refuses_tells_the_ris(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent again for images the exchange lost, the study cannot go: the product was
    suspended meanwhile. The job is refused, and with the refusal the radiologist hears that
    no result will come, and why."""
    with _sent_with_images_lost(national, hospital, monkeypatch) as (listener, lost):
        assert hospital.gateway.collect(_failed_for_lost_image(hospital, lost))
        _suspend(national)
        [again] = hospital.jobs()
        assert hospital.send_due() == [again["id"]]
        [refused] = hospital.jobs()
        assert refused["state"] == "refused", refused
        _lost_images_told(hospital, listener)


def _first_sop(hospital: Hospital) -> str:
    return str(pydicom.dcmread(hospital.files[0], stop_before_pixels=True).SOPInstanceUID)


def test_a_job_key_sent_again_for_lost_images_and_started_over_stays_one_of_its_own(
    tmp_path: Path,
) -> None:
    """A job started over (`:again1`) whose exchange job then failed for lost images goes
    under its round's key and `:lost`, a key it never had; started over after that,
    `:lost:again1`. The job is never sent again for lost images twice."""
    state = GatewayState(tmp_path / "state.db")
    now = time.time()
    with state.transaction() as db:
        made = db.execute(
            "INSERT INTO jobs (study_uid, round, product_id, idempotency_key, state, "
            "exchange_job_id, study_last_at, created_at, submitted_at) "
            "VALUES ('1.2.3', 1, 'p', '2.25.9:p:1:again1', 'submitted', 'X', ?, ?, ?)",
            (now, now, now),
        )
        job_id = int(made.lastrowid or 0)
    assert state.send_again_anew(job_id, "X", "lost", "images")
    assert state.job(job_id)["idempotency_key"] == "2.25.9:p:1:lost"
    state.start_over(job_id, "stray inputs")
    assert state.job(job_id)["idempotency_key"] == "2.25.9:p:1:lost:again1"
    state.update_job(job_id, state="submitted", exchange_job_id="Y")
    assert not state.send_again_anew(job_id, "Y", "lost again", "results")
    assert state.job(job_id)["idempotency_key"] == "2.25.9:p:1:lost:again1"


@contextmanager
def _sent_backed_up_and_lost(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    backup: Path,
    what: str,
    *,
    spool: bool = False,
) -> Iterator[tuple[Hl7Listener, dict[str, Any], dict[str, Any]]]:
    """`_sent_and_backed_up`; then the exchange's store lost `what` of that job, and the
    gateway took it back to be sent again (`_lost_and_taken_back`): the RIS, the job as sent,
    and the exchange's first job as it ended."""
    with _sent_and_backed_up(national, hospital, monkeypatch, backup, what, spool=spool) as (
        listener,
        job,
        images_lost,
    ):
        yield listener, job, _lost_and_taken_back(hospital, what, int(job["id"]), images_lost)


@contextmanager
def _sent_and_backed_up(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    backup: Path,
    what: str,
    *,
    spool: bool = False,
) -> Iterator[tuple[Hl7Listener, dict[str, Any], dict[str, str]]]:
    """The hospital's gateway with its RIS, the exchange's store set to lose `what` of the
    study's first job (`_store_loses`), that job sent, and the gateway backed up into
    `backup` (with its `spool` or not): the RIS, the job as sent, and the images lost."""
    images_lost = _store_loses(national, monkeypatch, what)
    with Hl7Listener() as listener:
        _with_ris(hospital, listener.port)
        hospital.receive(*hospital.files)
        assert hospital.route() == 1
        [job] = hospital.jobs()
        assert hospital.send_due() == [job["id"]]
        back_up(load_config(hospital.path), backup, spool=spool)
        yield listener, job, images_lost


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acknowledged", "ack-lost"])
@pytest.mark.parametrize("brought_home", [False, True], ids=["under-way", "brought-home"])
@pytest.mark.parametrize("what", ["images", "results"])
def test_a_job_sent_again_for_what_the_store_lost_after_the_backup_comes_home_once_after_a_restore(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    acknowledged: bool,
    brought_home: bool,
    what: str,
) -> None:
    """The gateway backed up with its job sent; then the exchange's store lost an image of
    the study (the job failed) or the product's result (it completed), and the gateway sent
    the study again as a new job (that job brought home, or not), and acknowledged the first
    (or its acknowledgement was lost); then its disk was lost. Restored, the gateway finds
    the job it sent again by its key: the product is not run a third time, its result
    reaches the PACS once, the RIS hears no "no result", and no job waits as one of
    nobody's."""
    backup = tmp_path / "backup"
    with _sent_backed_up_and_lost(national, hospital, monkeypatch, backup, what) as (
        listener,
        job,
        failed,
    ):
        if acknowledged:
            hospital.gateway.acknowledge([failed["id"]])
        assert hospital.send_due() == [job["id"]]
        again = str(hospital.gateway.state.job(int(job["id"]))["exchange_job_id"])
        if brought_home:
            assert "No AI result" not in _home_with_its_notice(hospital, listener, again)
            delivered = len(national.pacs().get("/instances"))  # type: ignore[arg-type]
            assert delivered >= 1
        lose_the_disk(hospital)
        gateway = restored_gateway(hospital, backup)

        gateway.reconcile_restore()
        if not acknowledged:  # listed again, as the results thread would meet it
            assert gateway.collect(until_ended(hospital, failed["id"]))
            gateway.acknowledge([failed["id"]])
        assert hospital.send_due() == [job["id"]]
        [sent] = hospital.jobs()
        assert sent["exchange_job_id"] == again, sent
        if not brought_home:
            assert "No AI result" not in _home_with_its_notice(hospital, listener, again)
        [home] = hospital.jobs()
        assert home["state"] == "delivered", home["reason"]
        assert len(hospital.exchange_jobs()) == 2  # the product not run a third time
        pacs = len(national.pacs().get("/instances"))  # type: ignore[arg-type]
        assert pacs == (delivered if brought_home else home["results_delivered"]) >= 1
        assert gateway.unknown_jobs_left() == 0
        assert gateway.client.unacknowledged_jobs() == {}
        gateway.notices.send_due(urgent=False)
        gateway.notices.send_due(urgent=True)
        assert gateway.notices_queued() == 0
        assert listener.received.empty()  # a result's notice once, and no "no result"
        said = gateway.client.job(failed["id"])["delivery"]
        assert said == ("lost" if what == "results" else None)


@pytest.mark.parametrize("brought_home", [False, True], ids=["under-way", "brought-home"])
@pytest.mark.parametrize("what", ["images", "results"])
def test_a_first_job_met_after_a_restore_with_the_spool_is_linked_to_the_resend_at_once(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    what: str,
    brought_home: bool,
) -> None:
    """As above, the first job's acknowledgement lost, but the backup held the spool: the
    study is there to be sent again. The restored gateway meets the first job ended and takes
    its job back; restored since the job was made, it looks the job's new key up all the
    same, and links the job the lost disk sent again (brought home by then, or not) at once,
    before any send. The results thread, listing that job, meets it as this job's, never as
    one of nobody's; the product is not run a third time, its result reaches the PACS once,
    and the RIS hears of it once. The job is taken back and linked in one transaction: the
    sending thread never sees it to be sent and unlinked, which it would start over."""
    backup = tmp_path / "backup"
    with _sent_backed_up_and_lost(national, hospital, monkeypatch, backup, what, spool=True) as (
        listener,
        job,
        failed,
    ):
        assert hospital.send_due() == [job["id"]]
        again = _exchange_id_of(hospital, int(job["id"]))
        if brought_home:
            assert "No AI result" not in _home_with_its_notice(hospital, listener, again)
        lose_the_disk(hospital)
        gateway = restored_gateway(hospital, backup)
        gateway.reconcile_restore()
        committed = _committed(gateway.state, int(job["id"]), monkeypatch)
        assert gateway.collect(until_ended(hospital, failed["id"]))
        [taken] = hospital.jobs()
        assert (taken["state"], taken["exchange_job_id"]) == ("pending", again), taken
        assert ("pending", None) not in committed and ("pending", again) in committed, committed
        gateway.acknowledge([failed["id"]])
        if not brought_home:
            # The results thread meets the job sent again before the job's send: this job's,
            # brought home once it is sent (its disclosure on record), not one of nobody's.
            assert not gateway.collect(until_ended(hospital, again))
            assert gateway.unknown_jobs_left() == 0
        assert hospital.send_due() == [job["id"]]
        if not brought_home:
            assert "No AI result" not in _home_with_its_notice(hospital, listener, again)
        [home] = hospital.jobs()
        assert home["state"] == "delivered", home["reason"]
        assert len(hospital.exchange_jobs()) == 2
        assert len(national.pacs().get("/instances")) == 1  # type: ignore[arg-type]
        assert gateway.unknown_jobs_left() == 0
        assert gateway.client.unacknowledged_jobs() == {}
        gateway.notices.send_due(urgent=False)
        gateway.notices.send_due(urgent=True)
        assert gateway.notices_queued() == 0
        assert listener.received.empty()


def _committed(
    state: GatewayState, job_id: int, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str | None]]:
    """The job's state and exchange job as each of `state`'s transactions from now on leaves
    them (read as it is about to commit): what the gateway's other threads may see."""
    seen: list[tuple[str, str | None]] = []
    opened = state.transaction

    @contextmanager
    def observed() -> Iterator[sqlite3.Connection]:
        with opened() as db:
            yield db
            row = db.execute(
                "SELECT state, exchange_job_id FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            seen.append((str(row["state"]), row["exchange_job_id"]))

    monkeypatch.setattr(state, "transaction", observed)
    return seen


def _exchange_id_of(hospital: Hospital, job_id: int) -> str:
    return str(hospital.gateway.state.job(job_id)["exchange_job_id"])


def _home_with_its_notice(hospital: Hospital, listener: Hl7Listener, exchange_id: str) -> str:
    """The job brought home as the results thread brings it: collected, its result's notice
    sent (the RIS's message, returned), then collected again and acknowledged."""
    hospital.gateway.collect(until_ended(hospital, exchange_id))  # its notice then waits
    hospital.gateway.notices.send_due(urgent=False)
    hospital.gateway.notices.send_due(urgent=True)
    received = listener.received.get(timeout=10)
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])
    return str(received.text)


def _with_pacs_b_down(hospital: Hospital) -> dict[str, Any]:
    """The hospital's gateway reopened with a second PACS, B, at an address nothing answers
    on; B's entry in the configuration, for the test to put right."""
    hospital.close()
    config = yaml.safe_load(hospital.path.read_text())
    b = {"name": "pacs-b", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": free_port()}
    config["pacs"].append(b)
    hospital.path.write_text(yaml.safe_dump(config))
    hospital.gateway = hospital.open()
    return b


@dataclass
class TwoPacs:
    """A hospital delivering to two PACS, B down for now, on a national path whose product
    notes each exchange job it runs (`runs`)."""

    national: National
    hospital: Hospital
    pacs_b: OrthancPeer
    b: dict[str, Any]
    runs: list[str]

    def put_b_right(self) -> None:
        """B's address corrected, and the gateway started again."""
        self.hospital.close()
        config = yaml.safe_load(self.hospital.path.read_text())
        [entry] = [pacs for pacs in config["pacs"] if pacs["name"] == self.b["name"]]
        entry["port"] = self.pacs_b.dicom_port
        self.hospital.path.write_text(yaml.safe_dump(config))
        self.hospital.gateway = self.hospital.open()

    def sent_and_home_in_a_only(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """The study sent and its results brought home, filed in A, B down: the job, its
        exchange job, and the exchange's listing of it."""
        hospital = self.hospital
        hospital.receive(*hospital.files)
        assert hospital.route() == 1
        [job] = hospital.jobs()
        assert hospital.send_due() == [job["id"]]
        exchange_id = str(hospital.jobs()[0]["exchange_job_id"])
        listed = until_ended(hospital, exchange_id)
        assert not hospital.gateway.collect(listed)  # B down
        assert _pacs_instances(self.national.pacs()) == 1
        return job, exchange_id, listed


@contextmanager
def two_pacs(tmp_path: Path) -> Iterator[TwoPacs]:
    runs: list[str] = []

    def counted(context: JobContext) -> ProductResult:
        runs.append(str(context.job["id"]))
        return tissue_volume.run(context)

    with national_path(tmp_path / "national", product=counted) as national:
        pacs_b = start_orthanc(tmp_path / "pacs-b", {"gateway": ("AIFI_GW", 11112)})
        hospital = Hospital(national, tmp_path)
        try:
            yield TwoPacs(national, hospital, pacs_b, _with_pacs_b_down(hospital), runs)
        finally:
            hospital.close()
            pacs_b.kill()
            national.exchange.stop()


def test_results_that_came_home_before_the_exchange_forgot_them_are_not_made_again(
    tmp_path: Path,
) -> None:
    """The job's results came home and reached PACS A; PACS B was down, so the job waits to
    deliver them. The exchange then forgets the job. The product is not run again, nor are
    the results filed in A twice: once B is reachable, they go there from the copy kept."""
    with two_pacs(tmp_path) as site:
        backup = backed_up(site.national.exchange, tmp_path / "exchange-backup.db")
        _job, first, _listed = site.sent_and_home_in_a_only()
        restore_exchange(site.national, backup)

        later = time.time() + ASK_AFTER_SECONDS
        assert site.hospital.gateway.ask_about_submitted(now=later) == []
        [held] = site.hospital.jobs()
        assert held["state"] == "submitted" and held["exchange_job_id"] == first
        site.put_b_right()
        assert site.hospital.gateway.ask_about_submitted(now=later) == []
        [home] = site.hospital.jobs()
        assert home["state"] == "delivered" and home["exchange_job_id"] == first, home
        assert _pacs_instances(site.national.pacs()) == 1 == _pacs_instances(site.pacs_b)
        assert site.hospital.exchange_jobs() == []  # nothing sent again
        assert site.runs == [first]


def test_results_home_before_the_exchange_lost_the_jobs_inputs_are_not_made_again(
    tmp_path: Path,
) -> None:
    """Restored to a moment after the job was made but before its inputs came: the exchange
    holds it unopened. Its results had come home (A has them, B was down): delivered from
    the copy, the exchange's job withdrawn, the product not run again."""
    with two_pacs(tmp_path) as site:
        hospital, backup = site.hospital, tmp_path / "exchange-backup.db"
        _after_first(
            hospital,
            lambda request: request.method == "PUT" and "/inputs/" in request.url.path,
            lambda: backed_up(site.national.exchange, backup),
        )
        _job, first, _listed = site.sent_and_home_in_a_only()
        restore_exchange(site.national, backup)
        later = time.time() + ASK_AFTER_SECONDS

        # B still down: nothing is sent, and the exchange's job is left as it is, its
        # end not to be taken for the job's.
        assert hospital.gateway.ask_about_submitted(now=later) == []
        [held] = hospital.exchange_jobs()
        assert held["state"] == "requested" and hospital.jobs()[0]["state"] == "submitted"

        site.put_b_right()
        hospital = site.hospital
        assert hospital.gateway.ask_about_submitted(now=later) == []
        [home] = hospital.jobs()
        assert home["state"] == "delivered" and home["exchange_job_id"] == first, home
        assert _pacs_instances(site.national.pacs()) == 1 == _pacs_instances(site.pacs_b)
        [withdrawn] = hospital.exchange_jobs()
        assert withdrawn["id"] == first and withdrawn["state"] == "cancelled"
        # Listed as ended, it is acknowledged as brought home, as it was delivered.
        assert hospital.gateway.collect(until_ended(hospital, first))
        hospital.gateway.acknowledge([first])
        assert hospital.jobs()[0]["state"] == "delivered"
        assert site.runs == [first]


def test_a_job_fetched_without_a_kept_listing_gets_one_when_collected_again(
    tmp_path: Path,
) -> None:
    """A job fetched by the release before this one (or again after a restore of the
    gateway) has no copy of its listing; collected again, it gets one, and the exchange
    forgetting it then runs the product no second time."""
    with two_pacs(tmp_path) as site:
        backup = backed_up(site.national.exchange, tmp_path / "exchange-backup.db")
        job, first, listed = site.sent_and_home_in_a_only()
        kept = site.hospital.gateway.results_dir / str(job["id"]) / LISTED_JOB
        kept.unlink()
        assert not site.hospital.gateway.collect(listed)  # the listing brings it again
        assert kept.is_file()
        restore_exchange(site.national, backup)
        site.put_b_right()
        assert site.hospital.gateway.ask_about_submitted(now=time.time() + ASK_AFTER_SECONDS) == []
        assert site.hospital.jobs()[0]["state"] == "delivered"
        assert _pacs_instances(site.pacs_b) == 1
        assert site.runs == [first]


def _lost_and_taken_back(
    hospital: Hospital, what: str, job_id: int, images_lost: dict[str, str]
) -> dict[str, Any]:
    """The study's job, sent, as the exchange lists it once its store lost `what` (its
    worker failed it for a lost image, or it completed and its result was lost), collected:
    the gateway took it back to be sent again."""
    if what == "images":
        ended = _failed_for_lost_image_sent(hospital, images_lost, job_id)
    else:
        ended = until_ended(hospital, _exchange_id_of(hospital, job_id))
    assert hospital.gateway.collect(ended)
    [again] = hospital.jobs()
    assert again["state"] == "pending" and again["idempotency_key"].endswith(":lost"), again
    return ended


def _store_loses(national: National, monkeypatch: pytest.MonkeyPatch, what: str) -> dict[str, str]:
    """The exchange's store set to lose `what` of the first job (`_images_lost`,
    `_results_lost`); the images lost, by exchange job."""
    if what == "images":
        return _images_lost(national, monkeypatch, times=1)
    _results_lost(national, monkeypatch, times=1)
    return {}


@pytest.mark.parametrize("what", ["images", "results"])
def test_a_job_the_lost_disk_took_back_but_never_sent_again_is_told_after_a_restore_without_spool(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    what: str,
) -> None:
    """The lost disk took the job back for what the exchange's store lost, and acknowledged
    the exchange's first job, but was lost before the study went again. Restored without the
    spool (`aifi gateway-backup`'s default), the gateway takes the job back again rather than
    ending it as its first job ended: its send waits for the spool to be put back and, when
    it is not, is refused, and the RIS hears why no result comes."""
    monkeypatch.setattr(service_module, "SPOOL_GONE_SECONDS", 0.0)
    backup = tmp_path / "backup"
    with _sent_backed_up_and_lost(national, hospital, monkeypatch, backup, what) as (
        listener,
        job,
        first,
    ):
        hospital.gateway.acknowledge([first["id"]])
        assert hospital.gateway.notices_queued() == 0  # the lost disk told nobody
        lose_the_disk(hospital)
        gateway = restored_gateway(hospital, backup)
        gateway.reconcile_restore()
        [again] = hospital.jobs()
        assert again["state"] == "pending" and again["exchange_job_id"] is None, again
        assert again["replaced_for"] == what
        assert hospital.send_due() == [job["id"]]
        [refused] = hospital.jobs()
        assert refused["state"] == "refused" and "gone from the spool" in refused["reason"]
        reason = INPUTS_LOST_BY_EXCHANGE if what == "images" else NO_RESULT_BECAUSE[Delivery.lost]
        _lost_told(hospital, listener, reason, what)
    assert len(hospital.exchange_jobs()) == 1


@pytest.mark.parametrize("what", ["images", "results"])
def test_a_gateway_never_restored_sends_again_without_looking_for_a_lost_disks_job(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Only a disk lost since could have sent the study again under its `:lost` key, and this
    gateway was never restored: it takes the job back without asking the exchange, so a
    look-up that would fail (a proxy refusing it) holds nothing up, and the lost result is
    read, and reported missing, once."""
    images_lost = _store_loses(national, monkeypatch, what)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    passing = hospital.network.handle_request
    looked_up: list[str] = []

    def no_look_ups(request: httpx.Request) -> httpx.Response:
        key = request.url.params.get("idempotency_key") or ""
        if request.method == "GET" and key.endswith(":lost"):
            looked_up.append(key)
            return httpx.Response(502, json={"detail": "refused by a proxy"}, request=request)
        return passing(request)

    hospital.network.handle_request = no_look_ups  # type: ignore[method-assign]
    assert hospital.send_due() == [job["id"]]
    _lost_and_taken_back(hospital, what, int(job["id"]), images_lost)
    assert looked_up == []
    assert _blob_missing_counted(national) == "1.0"


def _control_id_and_text(message: str) -> tuple[str, str]:
    fields = {segment[:3]: segment.split("|") for segment in message.split("\r")}
    return fields["MSH"][9], fields["OBX"][5]


@pytest.mark.parametrize("what", ["images", "results"])
def test_a_notice_the_lost_disk_sent_and_its_restore_sends_again_is_the_same_message(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    what: str,
) -> None:
    """The lost disk could not send the study again either (its spool lacked it), and told
    the RIS why no result comes. Restored without the spool, the gateway cannot tell that
    from a disk lost before it sent the study, and tells the RIS again, in the same words and
    under the same control id (MSH-10), so a RIS that drops repeats drops it."""
    monkeypatch.setattr(service_module, "SPOOL_GONE_SECONDS", 0.0)
    backup = tmp_path / "backup"
    with _sent_and_backed_up(national, hospital, monkeypatch, backup, what) as (
        listener,
        job,
        images_lost,
    ):
        (hospital.gateway.spool / job["study_uid"] / f"{_first_sop(hospital)}.dcm").unlink()
        if what == "images":
            first = _failed_for_lost_image_sent(hospital, images_lost, int(job["id"]))
        else:
            first = until_ended(hospital, _exchange_id_of(hospital, int(job["id"])))
        assert not hospital.gateway.collect(first)  # ended; its notice waits to go
        assert hospital.jobs()[0]["state"] == "ended"
        hospital.gateway.notices.send_due(urgent=False)
        told = _control_id_and_text(listener.received.get(timeout=10).text)
        assert hospital.gateway.collect(first)
        hospital.gateway.acknowledge([first["id"]])
        lose_the_disk(hospital)
        gateway = restored_gateway(hospital, backup)
        gateway.reconcile_restore()
        assert hospital.send_due() == [job["id"]]
        assert hospital.jobs()[0]["state"] == "refused"
        gateway.notices.send_due(urgent=False)
        assert _control_id_and_text(listener.received.get(timeout=10).text) == told
        assert listener.received.empty()
    assert len(hospital.exchange_jobs()) == 1


@pytest.mark.parametrize("what", ["images", "results"])
def test_a_job_the_backup_held_unsent_that_the_lost_disk_sent_twice_comes_home_once(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    what: str,
) -> None:
    """The backup was taken before the job was sent. The lost disk sent it, the exchange's
    store lost `what`, and the disk sent the study again and acknowledged the first job.
    Restored (without the spool), the job is found by its key, meets that first job
    acknowledged, and is taken back to the job the lost disk sent again, which its send finds
    by its own key: that job's result reaches the PACS, and it is not met as one of
    nobody's. (Backed up with the spool: a backup without it lacks the pseudonyms of studies
    first sent after it, and such a job's results cannot be mapped back.)"""
    images_lost = _store_loses(national, monkeypatch, what)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)  # the job pending
    assert hospital.send_due() == [job["id"]]
    first = _lost_and_taken_back(hospital, what, int(job["id"]), images_lost)
    hospital.gateway.acknowledge([first["id"]])
    assert hospital.send_due() == [job["id"]]
    again = _exchange_id_of(hospital, int(job["id"]))
    lose_the_disk(hospital)
    gateway = restored_gateway(hospital, backup)
    gateway.reconcile_restore()
    assert hospital.send_due() == [job["id"]]  # meets the first job, and takes the job back
    [taken] = hospital.jobs()
    assert taken["state"] == "pending" and taken["idempotency_key"].endswith(":lost"), taken
    assert taken["exchange_job_id"] == again  # linked at once: never met as nobody's
    assert hospital.send_due() == [job["id"]]  # stands as the lost disk opened it
    bring_home(hospital, again)
    [home] = hospital.jobs()
    assert home["state"] == "delivered", home["reason"]
    assert gateway.unknown_jobs_left() == 0
    assert len(hospital.exchange_jobs()) == 2


def _sent_backed_up_and_result_lost(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, backup: Path
) -> tuple[int, dict[str, Any]]:
    """The study's job sent, the gateway backed up into `backup` (without the spool); then
    the exchange's store lost the product's result and the gateway took the job back to be
    sent again: the job's id, and the exchange's first job as it ended."""
    _results_lost(national, monkeypatch, times=1)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    job_id = int(job["id"])
    assert hospital.send_due() == [job_id]
    back_up(load_config(hospital.path), backup)
    return job_id, _lost_and_taken_back(hospital, "results", job_id, {})


def _restored_and_brought_home(hospital: Hospital, backup: Path, again: str) -> dict[str, Any]:
    """The gateway restored from `backup` (its disk lost before) finds its job's exchange
    job `again` as it checks the restore, and brings its result home: no job is left as one
    of nobody's. The job as the check left it."""
    gateway = restored_gateway(hospital, backup)
    gateway.reconcile_restore()
    [taken] = hospital.jobs()
    assert taken["exchange_job_id"] == again, (taken["state"], taken["reason"])
    assert hospital.send_due() == [taken["id"]]
    bring_home(hospital, again)
    assert hospital.jobs()[0]["state"] == "delivered"
    assert gateway.unknown_jobs_left() == 0
    return taken


def _acknowledged_by_an_older_exchange(hospital: Hospital, exchange_id: str) -> None:
    """The job acknowledged to an exchange older than the gateway, which refuses the reason
    `lost` (422), once."""
    passing = hospital.network.handle_request
    refused: list[bytes] = []

    def older_exchange(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jobs/acknowledge" and b'"lost"' in request.content:
            refused.append(request.content)
            return httpx.Response(422, json={"detail": "unknown reason"}, request=request)
        return passing(request)

    hospital.network.handle_request = older_exchange  # type: ignore[method-assign]
    try:
        hospital.gateway.acknowledge([exchange_id])
    finally:
        hospital.network.handle_request = passing  # type: ignore[method-assign]
    assert len(refused) == 1


def test_a_job_the_lost_disk_sent_again_and_started_over_is_found_under_its_last_key(
    national: National,
    hospital: Hospital,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The lost disk sent the study again for a result the store lost, met stray inputs
    under the new key, cancelled that job and started over (`:lost:again1`). Restored
    without the spool, the gateway follows the keys to the job that runs, not the one
    cancelled, and brings its result home."""
    backup = tmp_path / "backup"
    job_id, first = _sent_backed_up_and_result_lost(national, hospital, monkeypatch, backup)
    hospital.gateway.acknowledge([first["id"]])
    gateway = hospital.gateway
    key = str(gateway.state.job(job_id)["idempotency_key"])
    stray = gateway.client.create_job(
        first["product_id"], first["study_uid"], first["patient_pseudonym"], key, None,
        instances=99,
    )  # fmt: skip
    gateway._withdraw(str(stray["id"]), CancelReason.stray_inputs)
    gateway.state.start_over(job_id, "stray inputs: cancelled, sent again as a new job")
    assert hospital.send_due() == [job_id]
    again = _exchange_id_of(hospital, job_id)
    assert again != stray["id"]
    lose_the_disk(hospital)
    taken = _restored_and_brought_home(hospital, backup, again)
    assert taken["idempotency_key"] == f"{key}:again1"


def test_an_exchange_that_does_not_know_lost_hears_purged_and_a_restore_still_finds_the_resend(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An exchange older than the gateway refuses the reason `lost` (422): the gateway says
    `purged` instead (gone before it was fetched), so that the exchange still counts the
    results as not delivered. A restore from a backup taken before then still finds the job
    sent again in its place, by its key, rather than ending the job as purged and meeting
    that one as a job of nobody's."""
    backup = tmp_path / "backup"
    job_id, first = _sent_backed_up_and_result_lost(national, hospital, monkeypatch, backup)
    _acknowledged_by_an_older_exchange(hospital, first["id"])
    said = hospital.gateway.client.job(first["id"])
    assert said["acknowledged_at"] is not None and said["delivery"] == "purged"
    assert hospital.send_due() == [job_id]
    again = _exchange_id_of(hospital, job_id)
    lose_the_disk(hospital)
    _restored_and_brought_home(hospital, backup, again)


def test_a_restored_job_whose_resend_cannot_be_looked_up_as_it_is_sent_is_settled_later(
    national: National, hospital: Hospital, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The backup held the job unsent; the lost disk sent it, its result was lost (told
    `purged` to an older exchange), and the study went again. Restored, the job's send meets
    its first job brought home, and the exchange cannot answer the look-up for the job sent
    again: the job is left sent, not ended, and the next ask about sent jobs takes it back
    to the job sent again, whose result comes home."""
    _results_lost(national, monkeypatch, times=1)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    job_id = int(job["id"])
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)  # the job pending
    assert hospital.send_due() == [job_id]
    first = _lost_and_taken_back(hospital, "results", job_id, {})
    _acknowledged_by_an_older_exchange(hospital, first["id"])
    passing = hospital.network.handle_request
    assert hospital.gateway.client.job(first["id"])["delivery"] == "purged"
    assert hospital.send_due() == [job_id]
    again = _exchange_id_of(hospital, job_id)
    lose_the_disk(hospital)
    gateway = restored_gateway(hospital, backup)
    gateway.reconcile_restore()
    [linked] = hospital.jobs()
    assert linked["exchange_job_id"] == first["id"], linked

    failed: list[str] = []

    def lookup_down(request: httpx.Request) -> httpx.Response:
        key = request.url.params.get("idempotency_key") or ""
        if request.method == "GET" and key.endswith(":lost"):
            failed.append(key)
            raise httpx.ConnectError("down", request=request)
        return passing(request)

    hospital.network.handle_request = lookup_down  # type: ignore[method-assign]
    hospital.send_due()
    hospital.network.handle_request = passing  # type: ignore[method-assign]
    assert failed
    [left] = hospital.jobs()
    assert left["state"] == "submitted" and left["exchange_job_id"] == first["id"], left

    gateway.ask_about_submitted(time.time() + ASK_AFTER_SECONDS + 5)
    [back] = hospital.jobs()
    assert back["state"] == "pending" and back["idempotency_key"].endswith(":lost"), back
    assert hospital.send_due() == [job_id]
    assert _exchange_id_of(hospital, job_id) == again
    bring_home(hospital, again)
    [home] = hospital.jobs()
    assert home["state"] == "delivered", home["reason"]
    assert gateway.unknown_jobs_left() == 0
    assert len(hospital.exchange_jobs()) == 2
