"""Burned-in text is never sent silently: refused with a reason the hospital sees, unless the
product asks for Clean Pixel Data and the hospital configured the regions to blank."""

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
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def screenshots(folder: Path) -> list[Path]:
    """Two CT slices re-labelled as secondary captures with burned-in annotation."""
    write_study("ct-head", folder / "ct", seed=8, size="small")
    out = []
    for index, path in enumerate(sorted((folder / "ct").rglob("*.dcm"))[:2]):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.BurnedInAnnotation = "YES"
        target = folder / f"sc{index}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def run_gateway(
    national: National, tmp_path: Path, product: dict[str, object], regions: list[list[int]]
) -> tuple[list[dict[str, object]], Gateway]:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product(product)
    vendor.close()
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": product["id"]}).raise_for_status()
    port = free_port()
    path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
    config = yaml.safe_load(path.read_text())
    config["routes"] = [{"product": product["id"], "modalities": ["OT"]}]
    config["clean_pixel_regions"] = regions
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        storescu(screenshots(tmp_path), port)
        assert gateway.wait_until(
            lambda: bool(gateway.jobs()) and gateway.jobs()[0]["state"] != "pending", timeout=60
        ), gateway.jobs()
        return gateway.jobs(), gateway
    finally:
        gateway.stop()


def sc_product(product_id: str, data_needed: list[str]) -> dict[str, object]:
    manifest = tissue_volume.manifest(VENDOR)
    return {
        **manifest,
        "id": product_id,
        "accepts": {"modalities": ["OT"], "sop_classes": [SECONDARY_CAPTURE]},
        "data_needed": data_needed,
    }


def test_burned_in_instances_are_refused_with_a_reason(national: National, tmp_path: Path) -> None:
    jobs, _ = run_gateway(national, tmp_path, sc_product("sc-plain", []), regions=[])
    [job] = jobs
    assert job["state"] == "refused"
    assert "Secondary Capture" in str(job["reason"]) or "burned" in str(job["reason"]).lower()
    with national.api() as api:
        assert api.get("/jobs").json() == []  # nothing reached the exchange


def test_clean_pixel_data_with_configured_regions_blanks_and_sends(
    national: National, tmp_path: Path
) -> None:
    jobs, _ = run_gateway(
        national, tmp_path, sc_product("sc-clean", ["clean-pixel-data"]), regions=[[0, 0, 64, 8]]
    )
    [job] = jobs
    assert job["state"] == "submitted", job
    with national.api() as api:
        [remote] = api.get("/jobs").json()
        first = api.get(f"/jobs/{remote['id']}/inputs").json()[0]
        blob = api.get(f"/jobs/{remote['id']}/inputs/{first['sop_instance_uid']}").content
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert ds.BurnedInAnnotation == "NO"
    pixels = ds.pixel_array
    assert not pixels[0:8, :].any()  # the configured band is blanked (stored value 0)
    assert pixels[8:, :].any()  # and only that band
    assert "113101" in {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
