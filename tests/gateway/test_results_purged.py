"""A gateway out of service longer than the exchange keeps undelivered results comes back to
a completed job whose results are gone: it ends the job with that reason and acknowledges it,
instead of asking for them again for ever."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from aifi.exchange.clock import utcnow
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import VendorClient, Worker
from scale.servers import wait_for
from support.national import VENDOR, National, started_gateway
from support.peers import storescu

#: A product no worker serves until the test starts one, so the job waits while it likes.
PRODUCT = "held-volume"


@pytest.mark.peer
def test_results_purged_before_the_gateway_fetched_them_end_its_job_with_that_reason(
    national: National, tmp_path: Path
) -> None:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product({**tissue_volume.manifest(VENDOR), "id": PRODUCT})
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": PRODUCT}).raise_for_status()
    write_study("ct-head", tmp_path / "study", seed=7, size="small")
    routes = [{"product": PRODUCT, "modalities": ["CT"]}]

    with started_gateway(tmp_path, national, routes=routes) as gateway:
        storescu(sorted((tmp_path / "study").rglob("*.dcm")), gateway.port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["submitted"], timeout=60
        ), gateway.jobs()
        [job] = gateway.jobs()
    exchange_id = job["exchange_job_id"]

    # The vendor does the job while the gateway is out of service.
    stop = threading.Event()
    worker = Worker(
        vendor, tissue_volume.run, product_ids=[PRODUCT], lease_seconds=30, workdir=tmp_path
    )
    thread = threading.Thread(target=worker.run, args=(stop, 1.0), daemon=True)
    thread.start()
    with national.api() as api:
        wait_for(
            lambda: api.get(f"/jobs/{exchange_id}").json()["state"] == "completed",
            60,
            "the vendor to complete the job",
        )
    stop.set()
    thread.join(timeout=30)
    vendor.close()
    retention = national.exchange.app.state.retention
    purged = retention.sweep(now=utcnow() + timedelta(days=31))
    assert purged.jobs == {exchange_id} and purged.results > 0

    with started_gateway(tmp_path, national, routes=routes) as gateway:
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["ended"], timeout=60
        ), gateway.jobs()
        [job] = gateway.jobs()
        assert "purged at the exchange" in job["reason"], job["reason"]
        assert not any((gateway.results_dir / str(job["id"])).rglob("*.dcm"))
    with national.api() as api:
        wait_for(
            lambda: api.get(f"/jobs/{exchange_id}").json()["acknowledged_at"] is not None,
            30,
            "the gateway to acknowledge the job it ended",
        )
        assert api.get(f"/jobs/{exchange_id}").json()["delivery"] == "purged"
