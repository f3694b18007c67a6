"""The gateway tells the exchange what it sends and what it could have sent: its routing rules
reach the product's record of processing, and eligible studies give the uptake figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import ich_triage, tissue_volume
from aifi.vendor.client import VendorClient
from support.national import OPERATOR_KEY, VENDOR, National, gateway_config
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer


def test_routing_rules_and_eligible_studies_reach_the_exchange(
    national: National, tmp_path: Path
) -> None:
    port = free_port()
    path = gateway_config(tmp_path, national, port, national.pacs().dicom_port)
    config = yaml.safe_load(path.read_text())
    # Only axial head series are routed; a chest CT is eligible (the product reads any CT)
    # but not routed, so uptake is one in two. Two more routes name products the hospital
    # never subscribed to, one in the catalogue and one not: the exchange takes no counts of
    # either, and neither holds up the counts of the product it subscribes to.
    VendorClient(national.exchange.url, national.vendor_key).register_product(
        ich_triage.manifest(VENDOR)
    )
    config["routes"] = [
        {"product": tissue_volume.PRODUCT_ID, "modalities": ["CT"], "body_parts": ["HEAD"]},
        {"product": ich_triage.PRODUCT_ID, "modalities": ["MR"]},
        {"product": "no-such-product", "modalities": ["MR"]},
    ]
    path.write_text(yaml.safe_dump(config))
    write_study("ct-head", tmp_path / "head", seed=1, size="small")
    write_study("ct-chest", tmp_path / "chest", seed=1, size="small")
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        storescu(sorted((tmp_path / "head").rglob("*.dcm")), port)
        storescu(sorted((tmp_path / "chest").rglob("*.dcm")), port)
        assert gateway.wait_until(
            lambda: (
                [s["state"] for s in gateway.state.query("SELECT * FROM studies")]
                == ["routed", "unrouted"]
                and len(gateway.state.query("SELECT * FROM eligibility WHERE counted = 1")) == 2
                and [c["product_id"] for c in gateway.state.unreported_counts()]
                == [ich_triage.PRODUCT_ID]
                and gateway.state.query("SELECT * FROM eligible_counts WHERE reported = 1")
                and [job["state"] for job in gateway.jobs()] in (["submitted"], ["delivered"])
            ),
            timeout=60,
        )
    finally:
        gateway.stop()
    with national.api() as hospital:
        [subscription] = hospital.get("/subscriptions").json()
        assert [rule["body_parts"] for rule in subscription["routes"]] == [["HEAD"]]
        record = hospital.get(
            f"/products/{tissue_volume.PRODUCT_ID}/record-of-processing", params={"format": "md"}
        ).text
        assert "HEAD" in record
    with national.api(OPERATOR_KEY) as operator:
        rows = operator.get("/evaluation").json()
    row = next(r for r in rows if r["hospital_id"] == "hospital-1")
    assert row["product_id"] == tissue_volume.PRODUCT_ID and row["eligible"] == 2
    assert row["uptake"]["numerator"] == 1 and row["uptake"]["denominator"] == 2
    assert not [r for r in rows if r["product_id"] != tissue_volume.PRODUCT_ID and r["eligible"]]
