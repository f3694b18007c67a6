"""Minimum necessary: each product receives exactly the data its manifest asks for."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import VendorClient
from support.national import VENDOR, National, gateway_config
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer
NEEDS_CHARACTERISTICS = "needs-patient-characteristics"


def test_only_the_product_that_asked_for_patient_sex_receives_it(
    national: National, tmp_path: Path
) -> None:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product(
        {
            **tissue_volume.manifest(VENDOR),
            "id": NEEDS_CHARACTERISTICS,
            "data_needed": ["retain-patient-characteristics"],
        }
    )
    vendor.close()
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": NEEDS_CHARACTERISTICS}).raise_for_status()
    port = free_port()
    path = gateway_config(tmp_path, national, port, national.pacs().dicom_port, quiet_seconds=0.2)
    config = yaml.safe_load(path.read_text())
    config["routes"] = [
        {"product": tissue_volume.PRODUCT_ID, "modalities": ["CT"]},
        {"product": NEEDS_CHARACTERISTICS, "modalities": ["CT"]},
    ]
    path.write_text(yaml.safe_dump(config))
    folder = tmp_path / "study"
    write_study("ct-head", folder, seed=4, size="small", identity={"sex": "F"})
    files = sorted(folder.rglob("*.dcm"))
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert original.PatientSex == "F" and original.PatientAge

    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        storescu(files, port)
        assert gateway.wait_until(
            lambda: (
                len(gateway.jobs()) == 2
                and all(job["state"] != "pending" for job in gateway.jobs())
            ),
            timeout=60,
        ), gateway.jobs()
    finally:
        gateway.stop()

    received: dict[str, pydicom.Dataset] = {}
    with national.api() as api:
        for job in api.get("/jobs").json():
            first = api.get(f"/jobs/{job['id']}/inputs").json()[0]
            blob = api.get(f"/jobs/{job['id']}/inputs/{first['sop_instance_uid']}").content
            received[job["product_id"]] = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
    plain, asked = received[tissue_volume.PRODUCT_ID], received[NEEDS_CHARACTERISTICS]
    assert str(plain.get("PatientSex", "")) == "" and str(plain.get("PatientAge", "")) == ""
    assert asked.PatientSex == "F" and asked.PatientAge == original.PatientAge
    # Both are pseudonymised all the same.
    for ds in (plain, asked):
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID != original.PatientID
        assert ds.StudyInstanceUID != original.StudyInstanceUID
    codes = {item.CodeValue for item in asked.DeidentificationMethodCodeSequence}
    assert "113108" in codes  # Retain Patient Characteristics Option
    assert "113108" not in {i.CodeValue for i in plain.DeidentificationMethodCodeSequence}
