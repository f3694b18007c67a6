"""A study from a modality (dcmtk's storescu) through the gateway, the exchange and a vendor
worker, back into a real Orthanc under the hospital's own identifiers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.dicom.dciodvfy import verify_iod
from aifi.gateway.config import load_config
from aifi.gateway.dimse import NoDelayAE
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from support.national import VENDOR, National, gateway_config
from support.peers import OrthancPeer, free_port, storescu

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
IDENTITY = {"patient_id": "HOSP-0042", "patient_name": "Jansen^Anna", "accession_number": "ACC777"}

pytestmark = pytest.mark.peer


def phantom(folder: Path, seed: int = 3) -> tuple[list[Path], str]:
    write_study("ct-head", folder, seed=seed, size="small", identity=IDENTITY)
    files = sorted(folder.rglob("*.dcm"))
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def pacs_study(pacs: OrthancPeer, study_uid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The PACS's study with this UID (exactly one must exist) and its instances' tags."""
    found = httpx.post(
        pacs.url + "/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
    ).json()
    assert len(found) == 1, f"Orthanc holds {len(found)} studies with that Study Instance UID"
    study = httpx.get(f"{pacs.url}/studies/{found[0]}").json()
    instances = httpx.get(f"{pacs.url}/studies/{found[0]}/instances").json()
    tags = [httpx.get(f"{pacs.url}/instances/{i['ID']}/simplified-tags").json() for i in instances]
    return study, tags


def start_pacs(orthanc_factory: Any, gateway_port: int) -> OrthancPeer:
    pacs: OrthancPeer = orthanc_factory(
        {"aifi": ("AIFI_GW", gateway_port), "modality": ("CT_SCANNER", free_port())}
    )
    return pacs


def delivered(gateway: Gateway) -> bool:
    jobs = gateway.jobs()
    return bool(jobs) and all(job["state"] in ("delivered", "ended", "refused") for job in jobs)


def test_result_reaches_orthanc_under_original_identifiers(
    national: National, orthanc_factory: Any, tmp_path: Path, dciodvfy: str
) -> None:
    gateway_port = free_port()
    pacs = start_pacs(orthanc_factory, gateway_port)
    config_file = gateway_config(tmp_path, national, gateway_port, pacs.dicom_port)
    config = load_config(config_file)
    files, study_uid = phantom(tmp_path / "study")
    storescu(files, pacs.dicom_port, called="ORTHANC")  # the PACS already holds the images

    gateway = Gateway(config)
    gateway.start()
    try:
        storescu(files, gateway_port)
        assert gateway.wait_until(lambda: delivered(gateway), timeout=120), gateway.jobs()
        [job] = gateway.jobs()
        assert job["state"] == "delivered" and job["results_delivered"] == 1
    finally:
        gateway.stop()
    # The re-identified result the gateway wrote is a valid object of its IOD.
    [restored] = (gateway.results_dir / str(job["id"]) / "reidentified").glob("*.dcm")
    report = verify_iod(restored)
    assert report.ok, report.errors

    study, tags = pacs_study(pacs, study_uid)
    assert study["PatientMainDicomTags"]["PatientID"] == IDENTITY["patient_id"]
    assert study["PatientMainDicomTags"]["PatientName"] == IDENTITY["patient_name"]
    srs = [t for t in tags if t["SOPClassUID"] == COMPREHENSIVE_3D_SR]
    assert len(srs) == 1 and len(tags) == len(files) + 1
    sr = srs[0]
    assert sr["StudyInstanceUID"] == study_uid and sr["PatientID"] == IDENTITY["patient_id"]
    assert sr.get("AccessionNumber") == IDENTITY["accession_number"]
    assert "PatientIdentityRemoved" not in sr

    # What the exchange held was pseudonymised: not one original identifier.
    with national.api() as api:
        [remote] = api.get("/jobs").json()
        assert remote["study_uid"] != study_uid and remote["state"] == "completed"
        assert remote["acknowledged_at"] is not None
        inputs = api.get(f"/jobs/{remote['id']}/inputs").json()
        original_uids = {
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
        }
        assert len(inputs) == len(files)
        assert not original_uids & {i["sop_instance_uid"] for i in inputs}
        blob = api.get(f"/jobs/{remote['id']}/inputs/{inputs[0]['sop_instance_uid']}").content
        for secret in (IDENTITY["patient_id"], "Jansen", IDENTITY["accession_number"], study_uid):
            assert secret.encode() not in blob

    # The gateway's own log names the patient (the exchange could not): which study went to
    # which product as which pseudonym, and that its result came back into the PACS.
    listed = CliRunner().invoke(
        app,
        [
            "disclosures",
            "--config",
            str(config_file),
            "--patient",
            IDENTITY["patient_id"],
            "--json",
            str(tmp_path / "disclosures.json"),
        ],  # fmt: skip
    )
    assert listed.exit_code == 0, listed.output
    entries = json.loads((tmp_path / "disclosures.json").read_text())
    assert [e["action"] for e in entries] == ["disclosed", "reidentified", "delivered"]
    assert {(e["study_uid"], e["outcome"]) for e in entries} == {(study_uid, "success")}
    disclosed = entries[0]
    assert disclosed["recipient"] == (
        f"{tissue_volume.PRODUCT_ID} {tissue_volume.manifest(VENDOR)['version']} of {VENDOR}, "
        "through the exchange"
    )
    assert remote["study_uid"] in disclosed["detail"]
    assert remote["patient_pseudonym"] in disclosed["detail"]
    assert f"{len(files)} instance(s)" in disclosed["detail"]
    assert entries[2]["recipient"] == "PACS pacs (ORTHANC)"


def test_a_dataset_that_cannot_be_parsed_is_refused_and_harms_nothing(
    national: National, orthanc_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_port = free_port()
    pacs = start_pacs(orthanc_factory, gateway_port)
    config = load_config(gateway_config(tmp_path, national, gateway_port, pacs.dicom_port))
    files, _ = phantom(tmp_path / "study")
    # A Part 10 file whose data set is garbage: sent as raw bytes, never decoded by the sender.
    broken = tmp_path / "broken.dcm"
    good = files[0].read_bytes()
    meta_end = 132 + 12 + int.from_bytes(good[140:144], "little")
    broken.write_bytes(good[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x00" * 40)

    gateway = Gateway(config)
    gateway.start()
    try:
        ae = NoDelayAE(ae_title="BROKEN_SCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", gateway_port, ae_title="AIFI_GW")
        assert assoc.is_established
        with caplog.at_level(logging.WARNING, logger="aifi.gateway.service"):
            status = assoc.send_c_store(broken)
        assoc.release()
        assert status.Status == 0xC210
        assert any("BROKEN_SCU" in message for message in caplog.messages)
        # Counted for the metrics (aifi_gateway_refused_instances_total).
        assert gateway.refusals.instances() == {("dimse", "BROKEN_SCU", "not-dicom"): 1}

        storescu(files, gateway_port)
        assert gateway.wait_until(lambda: delivered(gateway), timeout=120)
        assert [job["state"] for job in gateway.jobs()] == ["delivered"]
    finally:
        gateway.stop()


def test_gateway_killed_between_receipt_and_upload_completes_the_job_once(
    national: National, orthanc_factory: Any, tmp_path: Path
) -> None:
    gateway_port = free_port()
    pacs = start_pacs(orthanc_factory, gateway_port)
    config_path = gateway_config(
        tmp_path, national, gateway_port, pacs.dicom_port, quiet_seconds=10.0
    )
    files, study_uid = phantom(tmp_path / "study", seed=5)
    command = [sys.executable, "-m", "aifi.cli", "gateway", "--config", str(config_path)]

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:  # the gateway prints a line once it listens
            if "listening on" in line:
                return process
        raise AssertionError(f"gateway did not start (exit {process.wait()})")

    first = start()
    storescu(files, gateway_port)  # every instance acknowledged: the gateway owns them now
    with national.api() as api:
        assert api.get("/jobs").json() == []  # still inside the quiet timer: nothing uploaded
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    second = start()
    try:
        with national.api() as api:
            ended = api.get("/jobs", params={"state": "completed", "wait": 60}).json()
            assert len(ended) == 1
            # The gateway acknowledges once the result is in the PACS.
            done = api.get("/jobs", params={"acknowledged": "true", "wait": 60}).json()
            assert [job["id"] for job in done] == [ended[0]["id"]]
            assert len(api.get("/jobs").json()) == 1
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    _, tags = pacs_study(pacs, study_uid)
    assert [t["PatientID"] for t in tags if t["SOPClassUID"] == COMPREHENSIVE_3D_SR] == [
        IDENTITY["patient_id"]
    ]
