"""A claim whose worker went away while it waited takes no job.

`POST /jobs/claim` long-polls (up to 30 s). A worker killed, restarted or cut off meanwhile
leaves its request waiting; were a job claimed for it, nobody would hold the lease: the job
would sit accepted until the lease ran out (a STAT study a minute late while live workers ask
for it), one of its attempts spent. The exchange runs as a server here, so that closing the
connection is a real disconnect.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.vendor import VendorClient
from scale.exchange_api import Exchange


def test_a_claim_whose_worker_went_away_takes_no_job(
    settings: ExchangeSettings, make_ct: Any
) -> None:
    with ExchangeThread(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        exchange = Exchange(http)  # an httpx client, as a TestClient is
        hospital = exchange.org("hospital-a", "hospital")
        vendor = exchange.org("vendor-a", "vendor")
        exchange.product(vendor, "product-a")
        exchange.subscribe(hospital, "product-a")

        # The worker asks, waits half a second, and is gone: its connection closed.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/jobs/claim",
                json={"product_ids": ["product-a"], "wait_seconds": 20},
                headers=vendor.headers,
                timeout=0.5,
            )
        job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))

        with VendorClient(server.url, vendor.key) as live:
            lease = live.claim(["product-a"], wait_seconds=5)
        assert lease is not None and lease.job_id == job["id"], "the job went to nobody"
        seen = http.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert seen["attempts"] == 1, seen
