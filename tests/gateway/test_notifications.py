"""Results reach the radiologist's systems: an HL7 ORU^R01 over MLLP per result, under the
patient's original identity, sent by the gateway after re-identification."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from support.national import National, gateway_config, samples
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer


def test_each_result_sends_an_oru_with_the_original_identity(
    national: National, tmp_path: Path
) -> None:
    with Hl7Listener() as listener:
        port = free_port()
        path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
        config = yaml.safe_load(path.read_text())
        config["notifications"] = {
            "hl7": {
                "host": "127.0.0.1",
                "port": listener.port,
                "processing_id": "T",
                "timeout_seconds": 30,  # a late ACK on a loaded machine: no second message
            }
        }
        path.write_text(yaml.safe_dump(config))
        folder = tmp_path / "study"
        write_study("ct-head", folder, seed=21, size="small", identity={"patient_id": "HOSP-9"})
        files = sorted(folder.rglob("*.dcm"))
        accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).AccessionNumber)

        gateway = Gateway(load_config(path))
        gateway.start()
        try:
            storescu(files, port)
            assert gateway.wait_until(
                lambda: (
                    [j["state"] for j in gateway.jobs()] == ["delivered"]
                    and not gateway.notices_queued()
                ),
                timeout=90,
            ), gateway.jobs()
            [job] = gateway.jobs()
            outcomes = gateway.state.notification_outcomes(int(job["id"]))
        finally:
            gateway.stop()
        received = listener.received.get(timeout=10)
        assert listener.received.empty()  # one result, one message
    assert outcomes["hl7"]["ok"] == 1
    text = received.text
    assert "ORU^R01" in text and "HOSP-9" in text and accession in text
    assert "P" + "HOSP-9" not in text  # never the pseudonym
    obx = [segment for segment in text.split("\r") if segment.startswith("OBX")]
    assert any("mL" in segment for segment in obx)


def test_a_notice_the_ris_refuses_is_counted_for_the_hospitals_monitoring(
    national: National, tmp_path: Path
) -> None:
    """The RIS answers AE (content refused: resending cannot help): the result still goes on
    (delivered), and the exporter counts a routine HL7 notice failed for good, which
    `GatewayNoticesFailing` watches."""
    with Hl7Listener(ack_code="AE", ack_text="unknown patient") as listener:
        port = free_port()
        path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
        config = yaml.safe_load(path.read_text())
        config["metrics_port"] = 0
        config["notifications"] = {
            "hl7": {
                "host": "127.0.0.1",
                "port": listener.port,
                "processing_id": "T",
                "timeout_seconds": 30,  # a late ACK on a loaded machine: no second message
            }
        }
        path.write_text(yaml.safe_dump(config))
        folder = tmp_path / "study"
        write_study("ct-head", folder, seed=22, size="small")
        gateway = Gateway(load_config(path))
        gateway.start()
        try:
            storescu(sorted(folder.rglob("*.dcm")), port)
            assert gateway.wait_until(
                lambda: (
                    [j["state"] for j in gateway.jobs()] == ["delivered"]
                    and not gateway.notices_queued()
                ),
                timeout=90,
            ), gateway.jobs()
            assert gateway.metrics is not None
            scraped = httpx.get(gateway.metrics.url, timeout=10).text
        finally:
            gateway.stop()
        assert listener.received.get(timeout=10)  # it did arrive, and was refused
    figures = samples(scraped)

    def hl7_routine(outcome: str) -> float:
        labels = (("channel", "hl7"), ("outcome", outcome), ("priority", "routine"))
        return figures[("aifi_gateway_notices", labels)]

    assert hl7_routine("failed") == 1.0
    assert hl7_routine("sent") == 0.0
    assert hl7_routine("retrying") == 0.0
