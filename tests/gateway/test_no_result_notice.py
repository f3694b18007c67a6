"""A job that brings no result tells the radiologist so: the RIS gets an ORU^R01 whose order
was cancelled (OBR-25 X) with the reason, under the patient's own identity, so that nobody
waits for a finding that will not come, or reads a triage product's silence as a negative."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.notify.receivers import Hl7Listener, ReceivedHl7
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.results import check
from aifi.vendor import JobContext, ProductError, ProductResult
from gateway.test_refused_results import short_element
from support.national import National, gateway_config, national_path
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer

NO_BRAIN = "no brain tissue found in the series"


@pytest.fixture
def national(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[National]:
    """The exchange and a worker whose product fails the first job (`fails`), spoils its
    result so that the gateway cannot file it (`unfileable`), or runs as it should."""
    spoil = getattr(request, "param", "fails")

    def product(context: JobContext) -> ProductResult:
        if spoil == "fails":
            raise ProductError(NO_BRAIN)
        result = tissue_volume.run(context)
        return short_element(result, context) if spoil == "unfileable" else result

    with national_path(tmp_path, product) as path:
        yield path


def segments(message: ReceivedHl7, kind: str) -> list[list[str]]:
    return [s.split("|") for s in message.text.split("\r") if s.startswith(kind + "|")]


def run_one_study(
    national: National, tmp_path: Path, listener: Hl7Listener, **notifications: Any
) -> tuple[Gateway, str]:
    """A started gateway whose RIS is `listener`, one study sent to it; and its accession."""
    port = free_port()
    path = gateway_config(tmp_path, national, port, 1)
    config = yaml.safe_load(path.read_text())
    config["pacs"] = []
    config["notifications"] = {
        "hl7": {"host": "127.0.0.1", "port": listener.port, "processing_id": "T", "retries": 0},
        **notifications,
    }
    path.write_text(yaml.safe_dump(config))
    folder = tmp_path / "study"
    write_study("ct-head", folder, seed=31, size="small", identity={"patient_id": "HOSP-31"})
    files = sorted(folder.rglob("*.dcm"))
    gateway = Gateway(load_config(path))
    gateway.start()
    storescu(files, port)
    return gateway, str(pydicom.dcmread(files[0], stop_before_pixels=True).AccessionNumber)


def ended(gateway: Gateway) -> bool:
    return [job["state"] for job in gateway.jobs()] == ["ended"]


@pytest.mark.parametrize(
    ("national", "exchange_state", "said"),
    [
        ("fails", "failed", NO_BRAIN),
        ("unfileable", "completed", "cannot be filed in the PACS"),
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
    with Hl7Listener() as listener:
        gateway, accession = run_one_study(national, tmp_path, listener)
        try:
            assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
            [job] = gateway.jobs()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
            entries = [e for e in gateway.disclosures.entries() if e.recipient == "hl7 notice"]
        finally:
            gateway.stop()
        received = listener.received.get(timeout=10)
        assert listener.received.empty()  # one job, one message
        assert listener.errors.empty()  # valid ORU^R01 v2.5, strictly parsed
    assert job["exchange_state"] == exchange_state
    assert outcomes["hl7"]["ok"] == 1
    [pid] = segments(received, "PID")
    assert "HOSP-31" in pid[3] and "PHOSP-31" not in received.text  # never the pseudonym
    [orc], [obr] = segments(received, "ORC"), segments(received, "OBR")
    assert orc[5] == "CA" and obr[25] == "X" and obr[5] == "R"
    assert obr[3].startswith(job["exchange_job_id"]) and obr[18] == accession
    [obx] = segments(received, "OBX")  # the reason only: no findings, no measurements
    assert obx[11] == "X" and said in obx[5] and obx[5].startswith("No AI result")
    # The identity went to the RIS: on record, as every notice is.
    [entry] = entries
    assert entry.outcome == "success" and entry.patient_id == "HOSP-31"
    assert entry.detail.startswith(f"no result of {tissue_volume.PRODUCT_ID}")


def test_a_ris_that_rejects_for_now_gets_the_notice_again_before_the_job_ends(
    national: National, tmp_path: Path
) -> None:
    """AR (application reject) may pass: the job stays open at the gateway, and is tried
    again after its back-off, until the RIS takes the notice; then it ends, with one
    notice taken."""
    with Hl7Listener(ack_code="AR", ack_text="interface paused") as listener:
        gateway, _ = run_one_study(national, tmp_path, listener)
        try:

            def refused_once() -> bool:
                jobs = gateway.jobs()
                return bool(jobs) and jobs[0]["reason"] == "a no-result notice failed"

            assert gateway.wait_until(refused_once, timeout=90), gateway.jobs()
            [waiting] = gateway.jobs()
            assert waiting["state"] != "ended"
            listener.ack_code = "AA"
            assert gateway.wait_until(lambda: ended(gateway), timeout=60), gateway.jobs()
            [job] = gateway.jobs()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
        finally:
            gateway.stop()
    assert outcomes["hl7"]["ok"] == 1 and outcomes["hl7"]["attempts"] >= 2
    assert job["exchange_state"] == "failed" and NO_BRAIN in job["reason"]


def test_a_hospital_can_turn_no_result_notices_off(national: National, tmp_path: Path) -> None:
    with Hl7Listener() as listener:
        gateway, _ = run_one_study(national, tmp_path, listener, announce_unavailable=False)
        try:
            assert gateway.wait_until(lambda: ended(gateway), timeout=90), gateway.jobs()
            [job] = gateway.jobs()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
        finally:
            gateway.stop()
        assert listener.received.empty()
    assert outcomes == {} and NO_BRAIN in job["reason"]
