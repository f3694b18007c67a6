"""A job that brings no result tells the radiologist so: the RIS gets an ORU^R01 whose order
was cancelled (OBR-25 X), with a reason in the gateway's own words, under the patient's own
identity, so that nobody waits for a finding that will not come, or reads a triage product's
silence as a negative. The job ends at once; the notice is queued and sent on a thread of its
own until the RIS takes it, and only the job's acknowledgement waits for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from aifi.gateway import notice_queue
from aifi.gateway.config import load_config
from aifi.gateway.notify.receivers import Hl7Listener, ReceivedHl7, WebhookReceiver
from aifi.gateway.service import NO_RESULT_BECAUSE, Gateway
from aifi.gateway.state import GatewayState
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.results import check
from aifi.results.delivery import Delivery
from aifi.vendor import JobContext, ProductError, ProductResult
from gateway.test_disclosures import offline_gateway_config
from gateway.test_refused_results import short_element
from support.national import National, gateway_config, national_path
from support.older_state import as_left_by_older_version
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer

#: The vendor's words, naming what it was given: they stay in the hospital's job list.
NO_BRAIN = "no brain tissue found in series {series}"
WEBHOOK_KEY = b"pager-secret"
FAILED_SAID = NO_RESULT_BECAUSE["failed"]
#: The version the worker runs: the vendor published `tissue_volume.VERSION` since.
WORKER_VERSION = "0.9.0"


@pytest.fixture
def national(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[National]:
    """The exchange and a worker whose product fails every job (`fails`, or `fails-stat`: a
    product that runs STAT unless a route says otherwise), or spoils its result so that the
    gateway cannot file it (`unfileable`). The worker runs the version before the
    catalogue's (`WORKER_VERSION`), and says so."""
    spoil = getattr(request, "param", "fails")
    if spoil == "fails-stat":
        manifest = tissue_volume.manifest
        monkeypatch.setattr(
            tissue_volume, "manifest", lambda vendor: {**manifest(vendor), "priority": "stat"}
        )

    def product(context: JobContext) -> ProductResult:
        if spoil.startswith("fails"):
            series = pydicom.dcmread(context.inputs[0], stop_before_pixels=True).SeriesInstanceUID
            raise ProductError(NO_BRAIN.format(series=series))
        return short_element(tissue_volume.run(context), context)

    with national_path(tmp_path, product, WORKER_VERSION) as path:
        yield path


def segments(message: ReceivedHl7, kind: str) -> list[list[str]]:
    return [s.split("|") for s in message.text.split("\r") if s.startswith(kind + "|")]


def configure(
    national: National, tmp_path: Path, port: int, notifications: dict[str, Any], **route: Any
) -> Path:
    path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
    config = yaml.safe_load(path.read_text())
    config["notifications"] = notifications
    config["routes"][0].update(route)
    path.write_text(yaml.safe_dump(config))
    return path


def hl7(listener: Hl7Listener) -> dict[str, Any]:
    """The RIS, tried once, and waited for: a loaded machine's late ACK must not fail the
    notice, or its retry would file it twice."""
    return {
        "host": "127.0.0.1",
        "port": listener.port,
        "processing_id": "T",
        "retries": 0,
        "timeout_seconds": 30,
    }


def a_study(tmp_path: Path) -> tuple[list[Path], str]:
    """One study of patient HOSP-31; its files and its Study Instance UID."""
    folder = tmp_path / "study"
    write_study("ct-head", folder, seed=31, size="small", identity={"patient_id": "HOSP-31"})
    files = sorted(folder.rglob("*.dcm"))
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def started(path: Path) -> Gateway:
    gateway = Gateway(load_config(path))
    gateway.start()
    return gateway


def ended(gateway: Gateway, count: int = 1) -> bool:
    return [job["state"] for job in gateway.jobs()] == ["ended"] * count


def unacknowledged(national: National) -> list[str]:
    with national.api() as api:
        waiting = api.get("/jobs", params={"acknowledged": "false", "limit": 10}).json()
    return [job["id"] for job in waiting if job["state"] in ("completed", "failed", "expired")]


def brought_home(
    national: National, gateway: Gateway, files: list[Path], port: int
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Send the study; once its one job ended and is acknowledged at the exchange, and its
    notices are done with, the job and its notices' outcomes."""
    storescu(files, port)
    assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
    assert gateway.wait_until(lambda: not unacknowledged(national), timeout=30)
    assert gateway.wait_until(lambda: not gateway.notices_queued(), timeout=30)
    [job] = gateway.jobs()
    return job, gateway.state.notification_outcomes(int(job["id"]))


@pytest.mark.parametrize(
    ("national", "exchange_state", "said"),
    [
        ("fails", "failed", FAILED_SAID),
        ("unfileable", "completed", NO_RESULT_BECAUSE[Delivery.unfileable]),
    ],
    indirect=["national"],
)
def test_a_job_without_a_result_sends_the_ris_a_cancelled_order_with_the_reason(
    national: National,
    exchange_state: str,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As an exchange from before it read every value's length would let the result through.
    monkeypatch.setattr(check, "check_values_readable", lambda _dataset: None)
    files, study_uid = a_study(tmp_path)
    accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).AccessionNumber)
    with Hl7Listener() as listener:
        port = free_port()
        gateway = started(configure(national, tmp_path, port, {"hl7": hl7(listener)}))
        try:
            job, outcomes = brought_home(national, gateway, files, port)
            entries = [e for e in gateway.disclosures.entries() if e.recipient == "hl7 notice"]
            pseudonyms = [gateway.key.patient_id("HOSP-31"), gateway.key.uid(study_uid)]
        finally:
            gateway.stop()
        received = listener.received.get(timeout=10)
        assert listener.received.empty()  # one job, one message
        assert listener.errors.empty()  # valid ORU^R01 v2.5, strictly parsed
    assert job["exchange_state"] == exchange_state
    assert outcomes["hl7"]["ok"] == 1
    [pid] = segments(received, "PID")
    assert "HOSP-31" in pid[3]
    for pseudonym in pseudonyms:  # what the exchange knows never reaches the RIS
        assert pseudonym not in received.text
    [orc], [obr] = segments(received, "ORC"), segments(received, "OBR")
    assert orc[5] == "CA" and obr[25] == "X" and obr[5] == "R"
    assert obr[3].startswith(job["exchange_job_id"]) and obr[18] == accession
    assert obr[4].split("^")[1] == tissue_volume.manifest("v")["name"]  # named, not its id
    [obx] = segments(received, "OBX")  # the reason only: no findings, no measurements
    assert obx[11] == "X" and obx[5] == f"No AI result: {said}"
    # The vendor's own words stay in the hospital's job list.
    if exchange_state == "failed":
        assert "no brain tissue found in series" in job["reason"]
        assert "no brain" not in received.text
    # The identity went to the RIS: on record, as every notice is.
    [entry] = entries
    assert entry.outcome == "success" and entry.patient_id == "HOSP-31"
    assert entry.detail.startswith(f"no result of {tissue_volume.PRODUCT_ID}")


def test_a_ris_that_rejects_for_now_holds_the_acknowledgement_not_the_job(
    national: National, tmp_path: Path
) -> None:
    """AR (application reject) may pass: the job ends at once (so the study sent again is a
    new round), while the queued notice is tried again until the RIS takes it, and the
    exchange's job stays unacknowledged until then."""
    files, _ = a_study(tmp_path)
    with Hl7Listener(ack_code="AR", ack_text="interface paused") as listener:
        port = free_port()
        gateway = started(configure(national, tmp_path, port, {"hl7": hl7(listener)}))
        try:
            storescu(files, port)
            assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
            [job] = gateway.jobs()

            def refused() -> bool:
                row = gateway.state.notification_outcomes(int(job["id"])).get("hl7")
                return row is not None and row["attempts"] >= 1

            assert gateway.wait_until(refused, timeout=30)
            assert unacknowledged(national) == [job["exchange_job_id"]]
            assert gateway.notices_queued() == 1
            # The technologist sends the study again: a new round, not "nothing new".
            storescu(files, port)
            assert gateway.wait_until(lambda: ended(gateway, 2), timeout=90), gateway.jobs()
            listener.ack_code = "AA"
            assert gateway.wait_until(lambda: not unacknowledged(national), timeout=60)
            assert not gateway.notices_queued()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
        finally:
            gateway.stop()
    assert outcomes["hl7"]["ok"] == 1 and outcomes["hl7"]["attempts"] >= 2
    assert "no brain tissue found" in job["reason"]


def test_a_channel_taken_out_of_the_configuration_is_not_waited_for(
    national: National, tmp_path: Path
) -> None:
    """The RIS keeps rejecting; the engineer takes `hl7` out of the configuration and
    restarts: the queued notice goes to the channels configured now, what the RIS was still
    to be sent is given up, and the job is acknowledged, not held for a channel no longer
    there."""
    files, _ = a_study(tmp_path)
    port = free_port()
    with Hl7Listener(ack_code="AR") as listener:
        path = configure(national, tmp_path, port, {"hl7": hl7(listener)})
        gateway = started(path)
        try:
            storescu(files, port)
            assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
            [job] = gateway.jobs()
            assert gateway.wait_until(
                lambda: "hl7" in gateway.state.notification_outcomes(int(job["id"])), 30
            )
            queued = gateway.notices_queued()
        finally:
            gateway.stop()
    assert queued == 1 and unacknowledged(national) == [job["exchange_job_id"]]
    with WebhookReceiver(WEBHOOK_KEY) as pager:
        webhook = {"url": pager.url, "secret": WEBHOOK_KEY.decode(), "only_stat": False}
        gateway = started(configure(national, tmp_path, port, {"webhook": webhook}))
        try:
            assert gateway.wait_until(lambda: not unacknowledged(national), timeout=60)
            assert not gateway.notices_queued()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
            notices = gateway.state.tally("notices")
        finally:
            gateway.stop()
        assert pager.received.get(timeout=5).payload["status"] == "unavailable"
    # What the RIS was still to be sent is given up, once (a failure the alert sees once),
    # not left retrying for ever.
    assert outcomes["hl7"]["retryable"] == 0 and outcomes["hl7"]["detail"].startswith("given up")
    assert notices.get("hl7/routine/retrying", 0) == 0 and notices["hl7/routine/failed"] == 1


@pytest.mark.parametrize(
    ("national", "route"),
    [("fails", {"priority": "stat"}), ("fails-stat", {})],
    ids=["routed-stat", "product-stat"],
    indirect=["national"],
)
def test_a_study_run_stat_pages_that_no_result_will_come(
    national: National, route: dict[str, str], tmp_path: Path
) -> None:
    """The acute-triage pager takes STAT alerts only: for a study run STAT (its route says
    so, or its product does by default), it hears at once that the product's alert will not
    come."""
    files, _ = a_study(tmp_path)
    with WebhookReceiver(WEBHOOK_KEY) as pager:
        port = free_port()
        webhook = {"url": pager.url, "secret": WEBHOOK_KEY.decode()}  # only_stat by default
        path = configure(national, tmp_path, port, {"webhook": webhook}, **route)
        gateway = started(path)
        try:
            storescu(files, port)
            assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
            alert = pager.received.get(timeout=30).payload
        finally:
            gateway.stop()
    assert (alert["event"], alert["priority"], alert["reason"]) == (
        "aifi.result.unavailable",
        "stat",
        FAILED_SAID,
    )
    # The version that failed the job, not the one the catalogue names now.
    assert tissue_volume.VERSION != WORKER_VERSION
    assert alert["product"] == {
        "id": tissue_volume.PRODUCT_ID,
        "name": tissue_volume.manifest("v")["name"],
        "version": WORKER_VERSION,
    }


def test_a_hospital_can_turn_no_result_notices_off(national: National, tmp_path: Path) -> None:
    files, _ = a_study(tmp_path)
    with Hl7Listener() as listener:
        port = free_port()
        notifications = {"hl7": hl7(listener), "announce_unavailable": False}
        gateway = started(configure(national, tmp_path, port, notifications))
        try:
            job, outcomes = brought_home(national, gateway, files, port)
        finally:
            gateway.stop()
        assert listener.received.empty()
    assert outcomes == {} and "no brain tissue found" in job["reason"]


def test_a_notice_that_fails_unexpectedly_is_tried_again(
    national: National, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in building one notice: it stays queued and is tried again; the job keeps its
    reason."""
    built = notice_queue.build_notice
    broken = [True]

    def build_once_broken(**fields: Any) -> Any:
        if broken:
            broken.clear()
            raise ValueError("a value the notice cannot take")
        return built(**fields)

    monkeypatch.setattr(notice_queue, "build_notice", build_once_broken)
    files, _ = a_study(tmp_path)
    with Hl7Listener() as listener:
        port = free_port()
        gateway = started(configure(national, tmp_path, port, {"hl7": hl7(listener)}))
        try:
            job, outcomes = brought_home(national, gateway, files, port)
        finally:
            gateway.stop()
        assert listener.received.get(timeout=5).text.count("No AI result") == 1
    assert not broken and outcomes["hl7"]["ok"] == 1
    assert "no brain tissue found" in job["reason"]  # not the error's words


def test_a_channel_row_is_of_one_notice(tmp_path: Path) -> None:
    """A notice that there is no result is not taken as done where the job's result notice
    went out: it takes the row over, its tries counted afresh."""
    state = GatewayState(tmp_path / "state.db")
    sent = {"ok": True, "retryable": False, "stat": False, "detail": "AA", "seconds": 0.1}
    state.record_notification(7, "hl7", **sent)
    assert state.notification_outcomes(7, "no-result") == {}
    refused = {**sent, "ok": False, "retryable": True, "detail": "AR"}
    state.record_notification(7, "hl7", kind="no-result", **refused)
    row = state.notification_outcomes(7, "no-result")["hl7"]
    assert (row["attempts"], row["ok"], row["kind"]) == (1, 0, "no-result")
    assert state.notification_outcomes(7, "result") == {}
    state.record_notification(7, "hl7", kind="no-result", **refused)
    assert state.notification_outcomes(7)["hl7"]["attempts"] == 2


def test_an_older_versions_notice_rows_are_result_notices(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = GatewayState(path)
    sent = {"ok": True, "retryable": False, "stat": False, "detail": "AA", "seconds": 0.1}
    state.record_notification(7, "hl7", **sent)
    state.close()
    as_left_by_older_version(path, "ALTER TABLE notifications DROP COLUMN kind")
    state = GatewayState(path)
    assert state.notification_outcomes(7, "result")["hl7"]["ok"] == 1
    assert state.notification_outcomes(7, "no-result") == {}
    state.close()


def test_a_job_ending_with_nothing_to_announce_gives_up_what_was_left_to_retry(
    tmp_path: Path,
) -> None:
    """A result notice the RIS refused for now, then the study left the vault (a restore):
    the job ends unmapped, nothing more will be sent, and the STAT notice must not be left
    `retrying`, paging for ever."""
    gateway = Gateway(load_config(offline_gateway_config(tmp_path)))
    try:
        refused = {"ok": False, "retryable": True, "stat": True, "detail": "AR", "seconds": 1.0}
        gateway.state.record_notification(1, "hl7", **refused)
        assert gateway.state.tally("notices") == {"hl7/stat/retrying": 1.0}
        ended = {"id": 1, "exchange_state": "completed", "delivery": Delivery.unmapped.value}
        assert gateway._queue_no_result(ended, {"id": "exchange-job-1"})
        notices = gateway.state.tally("notices")
        assert (notices["hl7/stat/retrying"], notices["hl7/stat/failed"]) == (0.0, 1.0)
    finally:
        gateway.close()
