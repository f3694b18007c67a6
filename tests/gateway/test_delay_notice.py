"""A STAT study whose AI result is late tells the radiologist so, once: the RIS gets an
ORU^R01 whose order is in process (OBR-25 I), the pager a `delayed` alert; the result then
comes under the same order and replaces it. Jobs that are routine, whose result came home,
or told before are not told; a delay overtaken by its result is not sent; a job told late
that then ends with nothing to tell closes its order."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from aifi.gateway.config import load_config
from aifi.gateway.delays import CLOSING_BECAUSE, DelayWatch, announced_as
from aifi.gateway.job_list import job_statuses
from aifi.gateway.notice_queue import STUDY_LEFT_THE_SPOOL, QueuedNotice
from aifi.gateway.notify import FhirEndpoint, NotificationSettings
from aifi.gateway.notify.receivers import FhirReceiver, Hl7Listener, ReceivedHl7, WebhookReceiver
from aifi.gateway.service import SENT_BY_THE_LOST_DISK, Gateway
from aifi.gateway.state import _NOTICE_OUTCOME, GatewayState
from aifi.products import tissue_volume
from aifi.results.summary import TriageFlag
from aifi.vendor import JobContext, ProductResult
from gateway.test_no_result_notice import (
    WEBHOOK_KEY,
    a_study,
    configure,
    hl7,
    segments,
    started,
)
from gateway.test_notice_queue import ORIGINAL, PSEUDONYM, Parts, result
from gateway.test_notice_queue import hl7 as hl7_endpoint
from support.national import National, national_path
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer

#: Far beyond any test's run: the gateway's own watch never finds a job late by itself, and
#: each test looks at a moment of its own (`DelayWatch.announce_due(now=…)`).
AN_HOUR = 3600.0
ENTRY = {"name": "AIFI ICH", "version": "1.2.0", "manifest": {"priority": "stat"}}


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[National, Any]]:
    """The national path, its product holding each job until the test releases it; the
    product's catalogue entry says it runs STAT, answering within the hour."""
    manifest = tissue_volume.manifest
    monkeypatch.setattr(
        tissue_volume,
        "manifest",
        lambda vendor: {**manifest(vendor), "priority": "stat", "turnaround_sla_seconds": AN_HOUR},
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


def at_the_exchange(gateway: Gateway) -> dict[str, Any]:
    """The gateway's one job, once it is at the exchange (its product holds it there)."""
    assert gateway.wait_until(
        lambda: [job["state"] for job in gateway.jobs()] == ["submitted"], timeout=90
    ), gateway.jobs()
    [job] = gateway.jobs()
    return job


@pytest.mark.parametrize(
    ("route", "after"),
    [({"priority": "stat"}, {"delayed_after_seconds": AN_HOUR}), ({}, {})],
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
            job = at_the_exchange(gateway)
            # Within the hour: not late. Past it (the product's own turnaround, from when the
            # job reached the exchange, or the hospital's bound from when it was made): late.
            gateway.delays.announce_due(now=float(job["created_at"]) + AN_HOUR - 60)
            assert gateway.state.queued_notices_of(int(job["id"])) == []
            gateway.delays.announce_due(now=float(job["submitted_at"]) + AN_HOUR + 1)
            gateway.delays.announce_due(now=float(job["submitted_at"]) + 2 * AN_HOUR)  # once
            delay = listener.received.get(timeout=60)
            alert = pager.received.get(timeout=30).payload
            release.set()
            result = listener.received.get(timeout=90)
            # The pager heard of the delay: it hears of the result too, whatever its triage.
            then = pager.received.get(timeout=30).payload
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
    name = tissue_volume.manifest("v")["name"]
    assert obx[5].startswith("AI result delayed: no result after ")
    assert f"minutes: no answer from {name} yet" in obx[5]
    assert obr[3].split("^")[0] == job["exchange_job_id"] == job["delay_announced_as"]
    # The result goes under the same order, completes it, STAT as it was, the delay withdrawn.
    [result_obr] = segments(result, "OBR")
    assert (result_obr[3], result_obr[25], result_obr[5]) == (obr[3], "P", "S")
    assert result_obr[22] >= obr[22]  # its status changed after the delay's
    withdrawn = segments(result, "OBX")[-1]
    assert withdrawn[3].startswith("AI_RESULT_DELAYED^") and withdrawn[11] == "D"
    assert (alert["event"], alert["status"], alert["priority"]) == (
        "aifi.result.delayed",
        "delayed",
        "stat",
    )
    assert alert["reason"] == obx[5].removeprefix("AI result delayed: ")
    assert (then["status"], then["delivery_id"] != alert["delivery_id"]) == ("available", True)
    # Each notice took the patient's identity to the RIS: on record.
    assert [detail.split(" of ")[0] for detail in told] == ["delay", "result"]


def test_a_routine_job_or_a_hospital_that_turned_delays_off_is_not_told(
    held: tuple[National, threading.Event], tmp_path: Path
) -> None:
    """However late: looked at two hours on, neither a routine job nor, with
    `announce_delayed` off, a STAT one is told."""
    national, release = held
    files, _ = a_study(tmp_path)
    with Hl7Listener() as listener:
        port = free_port()
        notifications = {"hl7": hl7(listener), "delayed_after_seconds": AN_HOUR}
        path = configure(national, tmp_path, port, notifications, priority="routine")
        gateway = started(path)
        try:
            storescu(files, port)
            job = at_the_exchange(gateway)
            later = time.time() + 2 * AN_HOUR
            gateway.delays.announce_due(now=later)
            assert gateway.jobs()[0]["delay_announced_as"] is None
            assert gateway.state.queued_notices_of(int(job["id"])) == []
            # The same job run STAT would be told: the look above could have told it.
            gateway.state.update_job(int(job["id"]), priority="stat")
            gateway.config.notifications.announce_delayed = False
            gateway.delays.announce_due(now=later)
            assert gateway.jobs()[0]["delay_announced_as"] is None
            gateway.config.notifications.announce_delayed = True
            gateway.delays.announce_due(now=later)
            assert gateway.jobs()[0]["delay_announced_as"] == job["exchange_job_id"]
            told = listener.received.get(timeout=30)
        finally:
            release.set()
            gateway.stop()
    [obr] = segments(told, "OBR")
    assert obr[25] == "I"
    # Restarted (while the exchange may be out of reach), the gateway still knows which
    # products run STAT, and in what time, as it last read them: it asks nobody.
    again = Gateway(load_config(path))
    try:
        kept = again.state.remembered_product(tissue_volume.PRODUCT_ID)
    finally:
        again.close()
    assert kept is not None
    assert kept["manifest"] == {"priority": "stat", "turnaround_sla_seconds": AN_HOUR}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def out_of_reach(tmp_path: Path, port: int, listener: Hl7Listener) -> Path:
    """A gateway whose exchange (and PACS) is out of reach, routing CT STAT."""
    path = tmp_path / "gateway.yaml"
    config = {
        "hospital": "hospital-a",
        "workdir": str(tmp_path / "gateway"),
        "exchange": {"url": f"http://127.0.0.1:{closed_port()}", "api_key": "aifi_unused"},
        "dicom": {"ae_title": "AIFI_GW", "host": "127.0.0.1", "port": port, "quiet_seconds": 0.3},
        "routes": [{"product": "aifi-ich", "modalities": ["CT"], "priority": "stat"}],
        "pacs": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": closed_port()}],
        "notifications": {"hl7": hl7(listener), "delayed_after_seconds": AN_HOUR},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_stat_study_that_arrives_while_the_exchange_is_out_of_reach_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never prepared for sending (the exchange could not be asked about its product), the
    study is named from its spooled images, under an id the gateway makes; the late look
    asks nothing of the exchange."""
    files, study_uid = a_study(tmp_path)
    with Hl7Listener() as listener:
        port = free_port()
        gateway = Gateway(load_config(out_of_reach(tmp_path, port, listener)))
        gateway.start()
        try:
            storescu(files, port)
            assert gateway.wait_until(lambda: len(gateway.jobs()) == 1, timeout=60)
            asked: list[str] = []  # by this thread: the sender's own retries go on meanwhile
            ask = gateway.client.request

            def request(*args: Any, **kwargs: Any) -> Any:
                if threading.current_thread() is threading.main_thread():
                    asked.append(str(args[1]))
                return ask(*args, **kwargs)

            monkeypatch.setattr(gateway.client, "request", request)
            gateway.delays.announce_due(now=time.time() + 2 * AN_HOUR)
            [job] = gateway.jobs()
            told = listener.received.get(timeout=30)
            in_vault = gateway.vault.pseudonym_of(study_uid)
        finally:
            gateway.stop()
        # The engineer finds the order the RIS holds among the gateway's jobs.
        [listed] = job_statuses(gateway.config.workdir / "state.db")
    assert (job["state"], job["exchange_job_id"], asked) == ("pending", None, [])
    assert job["delay_announced_as"] == announced_as("hospital-a", job)
    assert listed.delay_announced_as == job["delay_announced_as"]
    [pid], [obr], [obx] = (segments(told, kind) for kind in ("PID", "OBR", "OBX"))
    assert "HOSP-31" in pid[3]
    assert obr[3].split("^")[0] == job["delay_announced_as"] and obr[25] == "I"
    assert "the study has not yet reached the national exchange" in obx[5]
    if in_vault is not None:  # prepared meanwhile: its pseudonym still never reaches the RIS
        assert in_vault not in told.text


def unsent_job(
    state: GatewayState,
    priority: str | None,
    created_at: float,
    key: str = "",
    product: str = "",
    study: str = ORIGINAL,
) -> int:
    """A job of the study (by default the one every test sends) still to be sent: the
    exchange has not numbered it."""
    with state.transaction() as db:
        job = db.execute(
            "INSERT INTO jobs (study_uid, round, product_id, priority, idempotency_key, state, "
            "study_last_at, created_at) VALUES (?, 1, ?, ?, ?, 'pending', 0, ?)",
            (
                study,
                product or "aifi-ich",
                priority,
                key or f"{PSEUDONYM}:aifi-ich:1",
                created_at,
            ),
        ).lastrowid
    assert job is not None
    return int(job)


def watch(
    parts: Parts,
    settings: NotificationSettings,
    catalogue: Callable[[str], Any] = lambda _product: None,
) -> DelayWatch:
    return DelayWatch(
        hospital="hospital-a",
        state=parts.state,
        vault=parts.vault,
        settings=settings,
        catalogue=catalogue,
        announce=parts.sender.announce_delay,
        close=parts.sender.close_told,
        covered=parts.state.covered_by_another,
        stop=threading.Event(),
    )


@contextmanager
def a_ris(
    tmp_path: Path, **settings: Any
) -> Iterator[tuple[Hl7Listener, Parts, NotificationSettings]]:
    """A RIS on loopback and the gateway's notice parts sending to it, with `settings`."""
    with Hl7Listener() as listener:
        configured = NotificationSettings(hl7=hl7_endpoint(listener.port), **settings)
        parts = Parts(tmp_path, configured)
        try:
            yield listener, parts, configured
        finally:
            parts.close()


def drained(listener: Hl7Listener) -> list[ReceivedHl7]:
    return [listener.received.get() for _ in range(listener.received.qsize())]


def test_a_study_that_never_reached_the_exchange_is_told_under_an_id_of_its_own(
    tmp_path: Path,
) -> None:
    """The exchange out of reach: the job has no exchange id yet. Its delay goes under one
    made from its key, which its later notice goes under too, its time the later."""
    with a_ris(tmp_path) as (listener, parts, settings):
        job = unsent_job(parts.state, None, created_at=1000.0)
        delays = watch(parts, settings, {"aifi-ich": ENTRY}.get)
        # The product's turnaround (unset in its entry: the catalogue's default, 600 s).
        assert delays.announce_due(now=1500.0) == pytest.approx(30.0)
        assert parts.state.queued_notices_of(job) == []
        delays.announce_due(now=1601.0)
        parts.sender.send_due(urgent=True)
        told = listener.received.get(timeout=30)
        announced = parts.state.delay_announced_as(job)
        # Sent at last, as exchange job x-9, whose product ended it five minutes before:
        # the news goes under the delay's id, and is not dated before the delay.
        parts.state.update_job(job, state="ended", exchange_job_id="x-9")
        later = QueuedNotice(
            kind="no-result",
            exchange_job_id="x-9",
            product_id="aifi-ich",
            unavailable="the product could not analyse the study",
            completed_at=datetime.now(UTC) - timedelta(minutes=5),
            pseudonym_study_uid=PSEUDONYM,
            original_study_uid=ORIGINAL,
        )
        parts.sender.queue(job, later)
        parts.sender.send_due(urgent=True)
        follows = listener.received.get(timeout=30)
        assert parts.done[-1] == "x-9"  # its acknowledgement is the exchange job's
        assert listener.received.empty()
    key = {"exchange_job_id": None, "idempotency_key": f"{PSEUDONYM}:aifi-ich:1"}
    assert announced == announced_as("hospital-a", key)
    [obr], [obx] = segments(told, "OBR"), segments(told, "OBX")
    assert obr[3].split("^")[0] == announced and obr[25] == "I"
    assert "10 minutes" in obx[5] and "has not yet reached the national exchange" in obx[5]
    assert PSEUDONYM not in told.text  # the pseudonym never reaches the RIS
    [follows_obr] = segments(follows, "OBR")
    assert (follows_obr[3], follows_obr[25]) == (obr[3], "X")
    assert follows_obr[22] >= obr[22]


def test_a_delay_overtaken_by_its_result_is_not_sent_and_the_result_goes_as_its_own(
    tmp_path: Path,
) -> None:
    with a_ris(tmp_path) as (listener, parts, settings):
        job = unsent_job(parts.state, "stat", created_at=0.0)
        delays = watch(parts, settings)
        delays.announce_due(now=3600.0)  # STAT by its route: the catalogue is not needed
        assert [row["kind"] for row in parts.state.queued_notices_of(job)] == ["delayed"]
        delays.announce_due(now=7200.0)  # told once
        assert len(parts.state.queued_notices_of(job)) == 1
        parts.state.update_job(job, state="submitted", exchange_job_id="x-1")
        parts.sender.queue(job, result("x-1"))
        [queued] = parts.state.queued_notices_of(job)
        sent = parts.state.due_notices(urgent=True, now=time.time())
        # Another STAT job, told, that ended with nothing to tell before its delay went.
        other = unsent_job(parts.state, "stat", created_at=0.0, key="k2")
        delays.announce_due(now=3600.0)
        parts.state.update_job(other, state="ended")
        parts.sender.send_due(urgent=True)
        left = parts.state.queued_notices_of(other)
        # The pass sent job 1's result and nothing else: neither delay went out.
        [message] = drained(listener)
    # The result, routine by itself, follows its delay's lane; the delay is done, unsent;
    # no receiver heard of a delay, so the result goes as its own, nothing withdrawn.
    assert (queued["kind"], queued["urgent"]) == ("result", 1)
    assert [row["kind"] for row in sent] == ["result"]
    assert left == []
    [obr] = segments(message, "OBR")
    assert (obr[3].split("^")[0], obr[25], obr[5]) == ("x-1", "P", "R")
    assert not any(obx[3].startswith("AI_RESULT_DELAYED") for obx in segments(message, "OBX"))


def at_the_exchange_for_an_hour(parts: Parts) -> int:
    job = unsent_job(parts.state, "stat", created_at=time.time() - AN_HOUR)
    parts.state.update_job(job, state="submitted", exchange_job_id="x-1")
    return job


def test_no_delay_once_the_results_notice_is_queued(tmp_path: Path) -> None:
    """The gateway queues a result's notice, then stores it in the PACS: the job stays
    'submitted' until every PACS took it (a slow or refusing PACS: hours). A delay then
    would undo the result at the RIS (OBR-25 I after P; the FHIR report back to registered):
    it is never told, neither after the notice went nor while it waits to go."""
    with Hl7Listener() as listener, FhirReceiver() as fhir:
        settings = NotificationSettings(
            hl7=hl7_endpoint(listener.port),
            fhir=FhirEndpoint(base_url=fhir.base_url, retries=0),
            delayed_after_seconds=600,
        )
        parts = Parts(tmp_path, settings)
        try:
            sent = at_the_exchange_for_an_hour(parts)
            parts.sender.queue(sent, result("x-1", TriageFlag.POSITIVE, urgent=True))
            parts.sender.send_due(urgent=True)
            waiting = unsent_job(parts.state, "stat", time.time() - AN_HOUR, key="k2")
            parts.state.update_job(waiting, state="submitted", exchange_job_id="x-2")
            parts.sender.queue(waiting, result("x-2"))  # on the routine lane, not yet sent
            watch(parts, settings).announce_due()
            parts.sender.send_due(urgent=True)
            parts.sender.send_due(urgent=False)
            told = [parts.state.job(job)["delay_announced_as"] for job in (sent, waiting)]
        finally:
            parts.close()
        statuses = [segments(message, "OBR")[0][25] for message in drained(listener)]
        reports = fhir.resources("DiagnosticReport")
    assert told == [None, None]
    assert statuses == ["P", "P"]
    assert sorted(report["status"] for report in reports) == ["preliminary", "preliminary"]


def test_no_delay_is_told_before_a_restore_is_checked_with_the_exchange(tmp_path: Path) -> None:
    """Restored from a backup, a STAT job stands 'submitted' as the backup held it; the lost
    disk may have brought its result home and told the RIS since."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        job = at_the_exchange_for_an_hour(parts)
        parts.state.record_restore(backup_taken_at=time.time() - 600)
        delays = watch(parts, settings)
        delays.announce_due()
        before = parts.state.queued_notices_of(job)
        restore = parts.state.restore_to_reconcile()
        assert restore is not None
        parts.state.restore_reconciled(int(restore["id"]))
        delays.announce_due()
        after = parts.state.queued_notices_of(job)
    assert before == [] and [row["kind"] for row in after] == ["delayed"]


def test_one_products_unreadable_catalogue_entry_keeps_no_other_delay_untold(
    tmp_path: Path,
) -> None:
    with a_ris(tmp_path) as (listener, parts, settings):
        unsent_job(parts.state, None, created_at=0.0, key="k0", product="other")  # made first
        job = unsent_job(parts.state, None, created_at=10.0)

        def catalogue(product: str) -> Any:
            if product == "other":  # a proxy's page where the entry was
                raise ValueError("Expecting value: line 1 column 1 (char 0)")
            return ENTRY

        watch(parts, settings, catalogue).announce_due(now=AN_HOUR)
        queued = parts.state.queued_notices_of(job)
    assert [row["kind"] for row in queued] == ["delayed"]


@pytest.mark.parametrize(
    ("ends", "said"),
    [
        ("refused", CLOSING_BECAUSE["refused"]),
        ("skipped", CLOSING_BECAUSE["skipped"]),
    ],
)
def test_a_job_told_late_that_ends_with_nothing_to_tell_closes_its_order(
    tmp_path: Path, ends: str, said: str
) -> None:
    """Told "the result, or news that none will come, follows"; then the exchange refused the
    job, or it was found sent before: the order the RIS holds in process is closed under
    the same id, with why, not left waiting for ever."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        job = unsent_job(parts.state, "stat", created_at=time.time() - AN_HOUR)
        delays = watch(parts, settings)
        delays.announce_due()
        parts.sender.send_due(urgent=True)
        if ends == "refused":  # as `Gateway._refuse` does, with no notice of its own
            parts.state.refuse(job, "the exchange refused the job: product withdrawn")
        else:
            parts.state.update_job(job, state="skipped")
        delays.announce_due()
        delays.announce_due()  # closed once
        parts.sender.send_due(urgent=True)
        told, closed = drained(listener)
    [obr], [closing_obr] = segments(told, "OBR"), segments(closed, "OBR")
    assert (obr[25], closing_obr[25], closing_obr[3]) == ("I", "X", obr[3])
    [obx, withdrawn] = segments(closed, "OBX")
    assert obx[5] == f"No AI result: {said}" and withdrawn[11] == "D"


def told_late(parts: Parts, settings: NotificationSettings, exchange_id: str = "x-1") -> int:
    """A STAT job at the exchange for an hour, its delay told to the RIS."""
    job = unsent_job(parts.state, "stat", created_at=time.time() - AN_HOUR)
    parts.state.update_job(job, state="submitted", exchange_job_id=exchange_id)
    watch(parts, settings).announce_due()
    parts.sender.send_due(urgent=True)
    assert parts.state.delay_announced_as(job) == exchange_id
    return job


def settler(parts: Parts) -> Any:
    """Just what `Gateway._settle_brought_home` uses of the gateway (no exchange asked: the
    job's exchange job completed, its store lost nothing)."""
    stub = SimpleNamespace(state=parts.state)
    stub._sent_again_after_backup = lambda _local, _remote: False
    stub._noting_acknowledgements = MethodType(Gateway._noting_acknowledgements, stub)
    stub._record_acknowledged = MethodType(Gateway._record_acknowledged, stub)
    return stub


def test_a_result_delivered_by_a_lost_disk_is_not_cancelled_by_a_closing_notice(
    tmp_path: Path,
) -> None:
    """The delay was told before the backup; the disk lost since brought the result home and
    told the RIS (OBR-25 P under the delay's id). Restored, the gateway settles the job as
    delivered (`_settle_brought_home`), with no result notice in this state: the job is
    followed, and its order is not closed over the result the RIS holds. What the backup
    held still to retry (a webhook down then) is given up: the lost disk sent it."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        job = told_late(parts, settings)
        parts.state.record_notification(
            job, "webhook", ok=False, retryable=True, stat=True, detail="HTTP 503",
            seconds=0.1, kind="delayed",
        )  # fmt: skip
        now = datetime.now(UTC).isoformat()
        remote = {
            "id": "x-1",
            "state": "completed",
            "acknowledged_at": now,
            "ended_at": now,
            "delivery": "delivered",
        }
        Gateway._settle_brought_home(settler(parts), parts.state.job(job), remote)
        assert parts.state.job(job)["state"] == "delivered"
        watch(parts, settings).announce_due()
        parts.sender.send_due(urgent=True)
        queued = [row["kind"] for row in parts.state.query(
            "SELECT kind FROM queued_notices WHERE job_id = ? AND kind != 'delayed'", (job,)
        )]  # fmt: skip
        webhook = parts.state.notification_outcomes(job)["webhook"]
        messages = drained(listener)
    cancelled = [
        (segments(m, "OBR")[0][3], segments(m, "OBX")[0][5])
        for m in messages
        if segments(m, "OBR")[0][25] == "X"
    ]
    assert cancelled == [], "a delivered result was cancelled at the RIS"
    assert queued == []
    assert (webhook["retryable"], webhook["detail"]) == (0, SENT_BY_THE_LOST_DISK)


def test_turning_delays_off_does_not_leave_orders_told_late_in_process(tmp_path: Path) -> None:
    """`announce_delayed: false` (the rollback procedure asks for it) stops new delays; an
    order the RIS already holds in process must still be closed when its job is refused."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        job = told_late(parts, settings)
        settings.announce_delayed = False
        parts.state.refuse(job, "the exchange refused the job: product withdrawn")
        watch(parts, settings).announce_due()
        closing = [
            row["kind"] for row in parts.state.query(
                "SELECT kind FROM queued_notices WHERE job_id = ?", (job,)
            ) if row["kind"] == "no-result"
        ]  # fmt: skip
    assert closing == ["no-result"], "the order told late stays in process at the RIS for ever"


def test_a_job_seen_ended_whose_results_cannot_be_fetched_is_still_told_late(
    tmp_path: Path,
) -> None:
    """`result_seen_at` is set as the gateway first sees the job ended, before anything is
    fetched. The exchange then goes out of reach mid-download (or the disk is full): no
    result notice is queued, nothing is in the PACS, no delivery failed, so no other alert
    sees it. The delay is told, saying the answer is being brought home."""
    with a_ris(tmp_path) as (listener, parts, settings):
        job = unsent_job(parts.state, None, created_at=time.time() - AN_HOUR)
        parts.state.update_job(
            job,
            state="submitted",
            exchange_job_id="x-1",
            submitted_at=time.time() - AN_HOUR,
            result_seen_at=time.time() - AN_HOUR / 2,
        )
        watch(parts, settings, {"aifi-ich": ENTRY}.get).announce_due()
        failed = parts.state.query("SELECT 1 FROM deliveries WHERE job_id = ?", (job,))
        kinds = [row["kind"] for row in parts.state.queued_notices_of(job)]
        parts.sender.send_due(urgent=True)
        told = listener.received.get(timeout=30)
    assert failed == []  # nothing for GatewayDeliveryFailing to see
    assert kinds == ["delayed"]
    [obx] = segments(told, "OBX")
    assert "AIFI ICH has answered, and the gateway is still bringing the answer home" in obx[5]


def spooled(folder: Path, study_uid: str, series_uid: str, patient_id: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, f"{patient_id}^X", "CT"
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("other", ["OTHER-1", "HOSP-77"])
def test_the_spool_names_one_patient_or_none(tmp_path: Path, other: str) -> None:
    """A study never prepared for sending is named from its spooled images: from the first
    in the order the vault would take it (by series, then instance), and only when every
    image names the same patient. A series of another patient filed under the study (a
    mis-filed series, received first) must not put that patient's name on the order."""
    with a_ris(tmp_path) as (listener, parts, settings):
        folder = tmp_path / "spool"
        folder.mkdir()
        study = "1.2.826.0.1.3680043.8.498.99"
        rows = [  # received first: a series the route did not select, another patient's
            ("1.2.9", spooled(folder, study, "1.2.9", other), 1.0),
            ("1.2.1", spooled(folder, study, "1.2.1", "HOSP-77"), 2.0),
        ]
        with parts.state.transaction() as db:
            for series, path, at in rows:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                db.execute(
                    "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (uid, study, series, "1.2.840.10008.5.1.4.1.1.2", "CT", "", "", "",
                     str(path), path.stat().st_size, "MOD", at),
                )  # fmt: skip
        gateway: Any = SimpleNamespace(state=parts.state)  # what the method reads of it
        named = Gateway._spooled_identity(gateway, study)
    if other == "HOSP-77":
        assert named is not None and named["PatientName"] == "HOSP-77^X"
    else:
        assert named is None


def test_a_delay_that_leaves_the_queue_unsent_does_not_page_for_ever(tmp_path: Path) -> None:
    """The RIS is down as the delay is tried: its row is 'retrying'. The delay never left, so
    it is neither told nor disclosed, and the job's end has no order in process to close.
    The job is then refused before the delay's retry: the delay leaves the queue unsent, and
    what its row still had to retry is given up, or GatewayStatNoticeFailing would page for
    ever."""
    with socket.socket() as sock:  # a port nobody listens on: the RIS down
        sock.bind(("127.0.0.1", 0))
        down = int(sock.getsockname()[1])
    settings = NotificationSettings(hl7=hl7_endpoint(down), delayed_after_seconds=60)
    parts = Parts(tmp_path, settings)
    try:
        job = unsent_job(parts.state, "stat", created_at=time.time() - AN_HOUR)
        watch(parts, settings).announce_due()
        parts.sender.send_due(urgent=True)
        assert parts.state.delay_announced_as(job) is None
        assert parts.disclosures.entries() == []
        parts.state.refuse(job, "the exchange refused the job: product withdrawn")
        assert parts.state.told_and_left() == []  # nobody holds its order in process
        parts.sender.send_due(urgent=True, now=time.time() + AN_HOUR)  # its retry comes round
        left = parts.state.queued_notices_of(job)
        outcomes = parts.state.query(
            f"SELECT channel, {_NOTICE_OUTCOME.format(row='notifications')} AS outcome "
            "FROM notifications WHERE job_id = ?",
            (job,),
        )
    finally:
        parts.close()
    assert left == []  # the delay left the queue
    assert [row["outcome"] for row in outcomes] == ["failed"]


def test_a_delay_the_backup_held_queued_waits_for_the_restore_to_be_checked(
    tmp_path: Path,
) -> None:
    """The backup was taken while a STAT job's delay waited in the queue (the RIS down, say).
    Restored, the STAT lane starts before the restore is checked with the exchange (the disk
    lost since may have brought the result home and told the RIS): the delay waits, then,
    the job still under way once checked, goes; and the result that follows replaces it."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        job = unsent_job(parts.state, "stat", created_at=time.time() - AN_HOUR)
        parts.state.update_job(job, state="submitted", exchange_job_id="x-1")
        watch(parts, settings).announce_due()  # queued; the backup is taken now
        parts.state.record_restore(backup_taken_at=time.time())
        parts.sender.send_due(urgent=True)
        before_check = drained(listener)
        waiting = parts.state.queued_notices_of(job)
        restore = parts.state.restore_to_reconcile()
        assert restore is not None
        parts.state.restore_reconciled(int(restore["id"]))  # the job still under way
        parts.sender.send_due(urgent=True, now=time.time() + AN_HOUR)
        [told] = drained(listener)
        parts.sender.queue(job, result("x-1", urgent=True))
        parts.sender.send_due(urgent=True)
        [follows] = drained(listener)
    assert before_check == [] and [row["tries"] for row in waiting] == [0]
    assert segments(told, "OBR")[0][25] == "I"
    assert segments(follows, "OBX")[-1][11] == "D"  # the result withdraws the delay


def test_a_closing_nobody_can_name_any_more_is_given_up_not_retried_for_ever(
    tmp_path: Path,
) -> None:
    """A study never prepared for sending, told late (named from its spool), then refused;
    the RIS down past the spool's retention: its closing notice can name nobody any more,
    and is given up (counted failed once), not left retrying."""
    settings = NotificationSettings(hl7=hl7_endpoint(closed_port()), delayed_after_seconds=60)
    parts = Parts(tmp_path, settings)
    try:
        never_prepared = "1.2.826.0.1.3680043.8.498.7"  # the vault never learnt it
        job = unsent_job(parts.state, "stat", time.time() - AN_HOUR, "k7", study=never_prepared)
        delays = watch(parts, settings)
        delays.announce_due()
        parts.state.notice_done(job, "delayed")
        parts.state.delay_told(job)  # as when its spooled images named the patient then
        parts.state.refuse(job, "no series of the study is accepted by aifi-ich")
        delays.announce_due()  # the closing notice; the spool holds nothing of the study
        assert [r["kind"] for r in parts.state.queued_notices_of(job)] == ["no-result"]
        parts.sender.send_due(urgent=True, now=time.time() + AN_HOUR)
        left = parts.state.queued_notices_of(job)
        outcomes = parts.state.query(
            f"SELECT {_NOTICE_OUTCOME.format(row='notifications')} AS outcome, stat, detail "
            "FROM notifications WHERE job_id = ?",
            (job,),
        )
    finally:
        parts.close()
    assert left == []
    assert [(row["outcome"], row["stat"], row["detail"]) for row in outcomes] == [
        ("failed", 1, STUDY_LEFT_THE_SPOOL)
    ]


def test_a_delay_that_cannot_name_its_study_yet_waits_and_shows_as_retrying(
    tmp_path: Path,
) -> None:
    """Never prepared for sending, and its images do not name one patient: nobody is named
    on a guess. The delay stays queued, STAT and retrying, so the hospital's monitoring sees
    it held up; once the study is prepared (the vault knows it), it goes."""
    with a_ris(tmp_path, delayed_after_seconds=60) as (listener, parts, settings):
        unknown = "1.2.826.0.1.3680043.8.498.5"
        job = unsent_job(parts.state, "stat", time.time() - AN_HOUR, "k9", study=unknown)
        with parts.state.transaction() as db:
            db.execute(  # its images, in the spool, naming no one patient
                "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                ("2.25.51", unknown, "2.25.52", "1.2.840.10008.5.1.4.1.1.2", "CT", "",
                 "", "", str(tmp_path / "x.dcm"), 1, "MOD", time.time()),
            )  # fmt: skip
        assert job is not None
        watch(parts, settings).announce_due()
        parts.sender.send_due(urgent=True)
        waiting = parts.state.queued_notices_of(job)
        [row] = parts.state.notification_outcomes(job).values()
        parts.vault.remember(
            {}, original_study_uid=unknown, pseudonym_study_uid="2.25.5",
            patient_pseudonym="P5",
            original_attributes={"PatientID": "HOSP-5", "PatientName": "Smit^Jan"},
        )  # fmt: skip
        parts.sender.send_due(urgent=True, now=time.time() + AN_HOUR)
        told = listener.received.get(timeout=30)
    assert [queued["kind"] for queued in waiting] == ["delayed"]
    assert (row["ok"], row["retryable"], row["stat"]) == (0, 1, 1)
    assert "cannot be named yet" in row["detail"]
    [pid] = segments(told, "PID")
    assert "HOSP-5" in pid[3] and "2.25.5" not in told.text


def test_only_a_job_of_the_same_round_or_later_covers_another(tmp_path: Path) -> None:
    """A job told late and refused is closed as covered only by a job that brings the
    product's result on the same images or newer: sent or delivered, not an earlier round's
    (of other images), nor one still to be sent (it may be refused in its turn)."""
    state = GatewayState(tmp_path / "state.db")
    try:

        def job(round_: int, job_state: str) -> int:
            with state.transaction() as db:
                made = db.execute(
                    "INSERT INTO jobs (study_uid, round, product_id, idempotency_key, state, "
                    "study_last_at, created_at) VALUES (?, ?, 'aifi-ich', ?, ?, 0, 0)",
                    (ORIGINAL, round_, f"k{round_}{job_state}", job_state),
                ).lastrowid
            assert made is not None
            return int(made)

        refused = job(2, "refused")
        job(1, "delivered")
        earlier_only = state.covered_by_another(refused)
        job(3, "pending")
        pending_only = state.covered_by_another(refused)
        job(2, "submitted")
        covered = state.covered_by_another(refused)
    finally:
        state.close()
    assert (earlier_only, pending_only, covered) == (False, False, True)
