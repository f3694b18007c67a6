"""A STAT study whose AI result is late tells the radiologist so, once: the RIS gets an
ORU^R01 whose order is in process (OBR-25 I), the pager a `delayed` alert; the result then
comes under the same order and replaces it. Jobs that are routine, ended, or told before are
not told; a delay notice overtaken by its result is not sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifi.gateway.delays import DelayWatch, announced_as
from aifi.gateway.notice_queue import QueuedNotice
from aifi.gateway.notify import NotificationSettings
from aifi.gateway.notify.receivers import Hl7Listener, WebhookReceiver
from aifi.gateway.state import GatewayState
from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductResult
from gateway.test_no_result_notice import a_study, configure, hl7, segments, started
from gateway.test_notice_queue import ORIGINAL, PSEUDONYM, Parts
from gateway.test_notice_queue import hl7 as hl7_endpoint
from support.national import National, national_path
from support.peers import free_port, storescu

WEBHOOK_KEY = b"pager-secret"


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[National, Any]]:
    """The national path, its product holding each job until the test releases it; the
    product's catalogue entry says it runs STAT and answers within a second."""
    manifest = tissue_volume.manifest
    monkeypatch.setattr(
        tissue_volume,
        "manifest",
        lambda vendor: {**manifest(vendor), "priority": "stat", "turnaround_sla_seconds": 1.0},
    )
    release = threading.Event()

    def product(context: JobContext) -> ProductResult:
        assert release.wait(120), "the test never released the job"
        return tissue_volume.run(context)

    try:
        with national_path(tmp_path, product) as path:
            yield path, release
    finally:
        release.set()


@pytest.mark.parametrize(
    ("route", "after"),
    [({"priority": "stat"}, {"delayed_after_seconds": 1}), ({}, {})],
    ids=["routed-stat", "product-stat-its-turnaround"],
)
def test_a_late_stat_result_is_told_once_and_the_result_replaces_it(
    held: tuple[National, threading.Event],
    route: dict[str, str],
    after: dict[str, float],
    tmp_path: Path,
) -> None:
    national, release = held
    files, _ = a_study(tmp_path)
    with Hl7Listener() as listener, WebhookReceiver(WEBHOOK_KEY) as pager:
        port = free_port()
        notifications = {
            "hl7": hl7(listener),
            "webhook": {"url": pager.url, "secret": WEBHOOK_KEY.decode()},
            **after,
        }
        gateway = started(configure(national, tmp_path, port, notifications, **route))
        try:
            storescu(files, port)
            delay = listener.received.get(timeout=60)
            alert = pager.received.get(timeout=30).payload
            [job] = gateway.jobs()
            assert job["state"] == "submitted"  # still under way: the product holds it
            release.set()
            result = listener.received.get(timeout=90)
            # The pager heard of the delay: it hears of the result too, whatever its triage.
            after = pager.received.get(timeout=30).payload
            assert gateway.wait_until(lambda: gateway.jobs()[0]["state"] == "delivered", 60)
            assert gateway.wait_until(lambda: not gateway.notices_queued(), timeout=30)
            [job] = gateway.jobs()
            told = [e.detail for e in gateway.disclosures.entries() if e.recipient == "hl7 notice"]
        finally:
            release.set()
            gateway.stop()
        assert listener.received.empty()  # told once, then the result: two messages
        assert listener.errors.empty()  # both valid ORU^R01 v2.5, strictly parsed
    [orc], [obr], [obx] = (segments(delay, kind) for kind in ("ORC", "OBR", "OBX"))
    assert (orc[5], obr[25], obr[5], obx[11]) == ("IP", "I", "S", "I")
    # Where the study is depends on how far its sending got in a second: it says which.
    assert obx[5].startswith("AI result delayed: no result after ")
    product = tissue_volume.manifest("v")["name"]
    assert f"{product} has not answered" in obx[5] or "not yet reached the national" in obx[5]
    assert obr[3].split("^")[0] == job["exchange_job_id"] == job["delay_announced_as"]
    # The result goes under the same order, and completes it.
    [result_obr] = segments(result, "OBR")
    assert result_obr[3] == obr[3] and result_obr[25] == "P"
    assert (alert["event"], alert["status"], alert["priority"]) == (
        "aifi.result.delayed",
        "delayed",
        "stat",
    )
    assert alert["reason"] == obx[5].removeprefix("AI result delayed: ")
    assert (after["status"], after["delivery_id"] != alert["delivery_id"]) == ("available", True)
    # Each notice took the patient's identity to the RIS: on record.
    assert [detail.split(" of ")[0] for detail in told] == ["delay", "result"]


def test_a_routine_job_or_a_hospital_that_turned_delays_off_is_not_told(
    held: tuple[National, threading.Event], tmp_path: Path
) -> None:
    """However late: looked at an hour on, neither a routine job nor, with `announce_delayed`
    off, a STAT one is told."""
    national, release = held
    files, _ = a_study(tmp_path)
    with Hl7Listener() as listener:
        port = free_port()
        notifications = {"hl7": hl7(listener), "delayed_after_seconds": 1}
        gateway = started(configure(national, tmp_path, port, notifications, priority="routine"))
        try:
            storescu(files, port)
            submitted = ["submitted"]
            assert gateway.wait_until(
                lambda: [job["state"] for job in gateway.jobs()] == submitted, timeout=60
            )
            gateway.delays.announce_due(now=time.time() + 3600)
            [job] = gateway.jobs()
            assert job["delay_announced_as"] is None
            assert gateway.state.queued_notices_of(int(job["id"])) == []
            # The same job run STAT would be told: the look above could have told it.
            # Turned off first: the gateway's own watch looks meanwhile too.
            gateway.config.notifications.announce_delayed = False
            gateway.state.update_job(int(job["id"]), priority="stat")
            gateway.delays.announce_due(now=time.time() + 3600)
            assert gateway.jobs()[0]["delay_announced_as"] is None
            gateway.config.notifications.announce_delayed = True
            gateway.delays.announce_due(now=time.time() + 3600)
            assert gateway.jobs()[0]["delay_announced_as"] == job["exchange_job_id"]
            told = listener.received.get(timeout=30)
        finally:
            release.set()
            gateway.stop()
    [obx] = segments(told, "OBX")  # at the exchange, its product holding it
    assert (
        f"no result after 60 minutes: {tissue_volume.manifest('v')['name']} has not answered"
        in obx[5]
    )


def unsent_job(state: GatewayState, priority: str | None, created_at: float, key: str = "") -> int:
    """A job of the study still to be sent: the exchange has not numbered it."""
    with state.transaction() as db:
        job = db.execute(
            "INSERT INTO jobs (study_uid, round, product_id, priority, idempotency_key, state, "
            "study_last_at, created_at) VALUES (?, 1, 'aifi-ich', ?, ?, 'pending', 0, ?)",
            (ORIGINAL, priority, key or f"{PSEUDONYM}:aifi-ich:1", created_at),
        ).lastrowid
    assert job is not None
    return int(job)


def watch(parts: Parts, settings: NotificationSettings, catalogue: dict[str, Any]) -> DelayWatch:
    return DelayWatch(
        hospital="hospital-a",
        state=parts.state,
        vault=parts.vault,
        settings=settings,
        catalogue=catalogue.get,
        announce=parts.sender.announce_delay,
        stop=threading.Event(),
    )


def test_a_study_that_never_reached_the_exchange_is_told_under_an_id_of_its_own(
    tmp_path: Path,
) -> None:
    """The exchange out of reach: the job has no exchange id yet. Its delay goes under one
    made from its key, which its later notice goes under too; it says where the study is."""
    with Hl7Listener() as listener:
        settings = NotificationSettings(hl7=hl7_endpoint(listener.port))
        parts = Parts(tmp_path, settings)
        try:
            job = unsent_job(parts.state, None, created_at=1000.0)
            entry = {"name": "AIFI ICH", "version": "1.2.0", "manifest": {"priority": "stat"}}
            delays = watch(parts, settings, {"aifi-ich": entry})
            # The product's turnaround (unset in its entry: the catalogue's default, 600 s).
            assert delays.announce_due(now=1500.0) == pytest.approx(30.0)
            assert parts.state.delay_announced_as(job) is None
            assert delays.announce_due(now=1601.0) == pytest.approx(30.0)
            parts.sender.send_due(urgent=True)
            told = listener.received.get(timeout=30)
            announced = parts.state.delay_announced_as(job)
            # Sent at last, as exchange job x-9; it failed: the news goes under the delay's id.
            parts.state.update_job(job, state="ended", exchange_job_id="x-9")
            later = QueuedNotice(
                kind="no-result",
                exchange_job_id="x-9",
                product_id="aifi-ich",
                unavailable="the product could not analyse the study",
                pseudonym_study_uid=PSEUDONYM,
                original_study_uid=ORIGINAL,
            )
            parts.sender.queue(job, later)
            parts.sender.send_due(urgent=True)
            follows = listener.received.get(timeout=30)
            assert parts.done[-1] == "x-9"  # its acknowledgement is the exchange job's
        finally:
            parts.close()
        assert listener.received.empty()
    key = {"exchange_job_id": None, "idempotency_key": f"{PSEUDONYM}:aifi-ich:1"}
    assert announced == announced_as("hospital-a", key)
    [obr], [obx] = segments(told, "OBR"), segments(told, "OBX")
    assert obr[3].split("^")[0] == announced and obr[25] == "I"
    assert "10 minutes" in obx[5] and "has not yet reached the national exchange" in obx[5]
    assert PSEUDONYM not in told.text  # the pseudonym never reaches the RIS
    [follows_obr] = segments(follows, "OBR")
    assert follows_obr[3] == obr[3] and follows_obr[25] == "X"


def test_a_delay_overtaken_by_its_result_is_not_sent_and_the_result_goes_stat(
    tmp_path: Path,
) -> None:
    with Hl7Listener() as listener:
        settings = NotificationSettings(hl7=hl7_endpoint(listener.port))
        parts = Parts(tmp_path, settings)
        try:
            job = unsent_job(parts.state, "stat", created_at=0.0)
            delays = watch(parts, settings, {})
            delays.announce_due(now=3600.0)  # stat by its route: the catalogue is not needed
            assert [row["kind"] for row in parts.state.queued_notices_of(job)] == ["delayed"]
            delays.announce_due(now=7200.0)  # told once
            assert len(parts.state.queued_notices_of(job)) == 1
            routine = QueuedNotice(
                kind="result",
                exchange_job_id="x-1",
                product_id="aifi-ich",
                pseudonym_study_uid=PSEUDONYM,
                original_study_uid=ORIGINAL,
            )
            parts.sender.queue(job, routine)
            [queued] = parts.state.queued_notices_of(job)
            sent = parts.state.due_notices(urgent=True, now=time.time())
            # Another STAT job, told, that ended with nothing to tell before its delay went.
            other = unsent_job(parts.state, "stat", created_at=0.0, key="k2")
            delays.announce_due(now=3600.0)
            parts.state.update_job(other, state="ended")
            parts.sender.send_due(urgent=True)
            left = parts.state.queued_notices_of(other)
        finally:
            parts.close()
        # The pass sent job 1's result and nothing else: neither delay went out.
        result = listener.received.get(timeout=30)
        assert listener.received.empty()
    [obr] = segments(result, "OBR")
    assert obr[25] == "P"
    # The result, routine by itself, follows its delay's lane; the delay is done, unsent.
    assert (queued["kind"], queued["urgent"]) == ("result", 1)
    assert [row["kind"] for row in sent] == ["result"]
    assert left == []  # the other's delay left the queue, unsent
