"""A triage-positive result comes back with a SEG; the gateway keeps a key image of it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import ich_triage
from aifi.vendor import VendorClient, Worker
from support.national import VENDOR, National, gateway_config
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer


def test_a_positive_triage_result_gets_a_key_image(national: National, tmp_path: Path) -> None:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product(ich_triage.manifest(VENDOR))
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": ich_triage.PRODUCT_ID}).raise_for_status()
    stop = threading.Event()
    worker = Worker(vendor, ich_triage.run, product_ids=[ich_triage.PRODUCT_ID], workdir=tmp_path)
    thread = threading.Thread(target=worker.run, args=(stop, 1.0), daemon=True)
    thread.start()
    port = free_port()
    path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
    config = yaml.safe_load(path.read_text())
    config["routes"] = [{"product": ich_triage.PRODUCT_ID, "modalities": ["CT"]}]
    path.write_text(yaml.safe_dump(config))
    folder = tmp_path / "study"
    write_study("ct-head", folder, seed=2, size="default", haemorrhage_ml=20.0)
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        storescu(sorted(folder.rglob("*.dcm")), port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["delivered"], timeout=120
        ), gateway.jobs()
        [job] = gateway.jobs()
    finally:
        gateway.stop()
        stop.set()
        thread.join(timeout=30)
        vendor.close()
    key_image = gateway.results_dir / str(job["id"]) / "key-image.png"
    assert key_image.exists()
    pixels = imread(key_image)
    assert pixels.shape[0] >= 256 and pixels.shape[1] >= 256
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # The overlay is coloured: some pixels are far from grey.
    assert np.count_nonzero((np.abs(red - green) > 0.2) | (np.abs(green - blue) > 0.2)) > 50
