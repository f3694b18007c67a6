"""An exchange restored to an earlier moment has lost the jobs made after it, and the inputs
that arrived after it: the gateway asks about the jobs it sent a while ago, and sends again
what the exchange lost. Each study still comes home once, as one result in the PACS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aifi.gateway.lost_jobs import ASK_AFTER_SECONDS, ASK_EVERY_SECONDS
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductResult
from aifi.web import mount
from support.exchange_restore import backed_up, restored
from support.hospital import Hospital
from support.national import National, national_path, started_gateway
from support.peers import storescu
from support.restore import bring_home, until_ended

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
    lost = str(hospital.jobs()[0]["exchange_job_id"])
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
    [remote] = hospital.exchange_jobs()
    assert remote["id"] == sent["exchange_job_id"]
    assert hospital.inputs(remote["id"]) == hospital.pseudonyms(*hospital.files, hospital.late)
    bring_home(hospital, remote["id"])
    [home] = hospital.jobs()
    assert home["state"] == "delivered", home
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
            with started_gateway(tmp_path / "hospital", national) as gateway:
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
            with national.api() as api:
                [remote] = api.get("/jobs").json()
            assert remote["id"] == job["exchange_job_id"] != lost
            assert remote["acknowledged_at"] is not None
            assert job["results_delivered"] >= 1
            assert len(national.pacs().get("/instances")) == job["results_delivered"]  # type: ignore[arg-type]
        finally:
            national.exchange.stop()
