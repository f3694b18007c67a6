"""An object store that cannot be reached: the uploader and the downloader get a 503 that
says so and when to try again, nothing already accepted is lost, and the same request works
once the store is back. The store is a real S3 server (moto) on loopback, stopped and started
again on its port, as MinIO restarting or a network cut would leave it."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductResult, VendorClient, Worker
from scale.conftest import set_up_parties
from scale.exchange_api import OPERATOR_KEY, Exchange
from scale.servers import S3Server, free_port, start_moto, wait_for


class StoreOutage:
    """An S3 server of this test's own that can be taken down and brought back on its port
    (moto keeps its objects in this process, so they outlive the restart)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = S3Server(self.port, start_moto(self.port))

    def down(self) -> None:
        self.server.server.stop()

    def up(self) -> None:
        self.server.server = start_moto(self.port)


@pytest.fixture
def store(s3: S3Server) -> Iterator[StoreOutage]:  # `s3`: moto's credentials in the environment
    outage = StoreOutage()
    try:
        yield outage
    finally:
        outage.down()


def _exchange(store: StoreOutage, folder: Path) -> ExchangeThread:
    return ExchangeThread(
        ExchangeSettings(
            data_dir=folder, operator_key=OPERATOR_KEY, blob_url=store.server.blob_url()
        )
    )


def _unavailable_answers(http: httpx.Client) -> float:
    found = re.search(
        r'aifi_exchange_errors_total\{kind="blob_store_unavailable"\} (\S+)',
        http.get("/metrics").text,
    )
    return float(found.group(1)) if found else 0.0


def test_an_unreachable_store_is_a_503_that_loses_nothing(
    store: StoreOutage, tmp_path: Path, make_ct: Any
) -> None:
    with (
        _exchange(store, tmp_path / "exchange") as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        exchange = Exchange(http)  # an httpx client, as a TestClient is
        orgs = set_up_parties(exchange)
        hospital = orgs["hospital"]
        study = make_ct(slices=2)
        study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
        job = exchange.job(hospital, "product-a", study_uid, instances=2)  # the second opens it
        assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
        first_uid = pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID
        first = f"/jobs/{job['id']}/inputs/{first_uid}"

        store.down()
        refused = exchange.upload(hospital, job["id"], study[1])
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        detail = refused.json()["detail"]
        assert detail == (
            "the exchange's object store is unavailable (storing an upload; nothing was "
            "stored); retry shortly"
        )
        assert str(store.port) not in detail, "the store's address is the operator's business"
        unread = http.get(first, headers=hospital.headers)
        assert unread.status_code == 503, unread.text
        assert "object store is unavailable (reading)" in unread.json()["detail"]
        assert _unavailable_answers(http) == 2

        seen = http.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert seen["input_count"] == 1 and not seen["inputs_complete"], seen
        # The exchange's own trouble: neither a refusal of the hospital nor a read on record.
        log = http.get("/audit", params={"limit": 5000}, headers=exchange.operator.headers).json()
        assert [e for e in log if e["outcome"] == "refused"] == []
        assert [e for e in log if e["action"] == "read" and e["object_type"] == "input"] == []

        # Back: the same requests, as the gateway retries them, work; nothing was lost.
        store.up()
        assert exchange.upload(hospital, job["id"], study[1]).status_code == 201
        body = http.get(first, headers=hospital.headers)
        assert body.status_code == 200
        assert (
            hashlib.sha256(body.content).digest() == hashlib.sha256(study[0].read_bytes()).digest()
        )
        seen = http.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert seen["input_count"] == 2 and seen["inputs_complete"], seen  # open for vendors


def test_a_result_the_unreachable_store_refuses_is_kept_and_handed_in_once_it_is_back(
    store: StoreOutage, tmp_path: Path, make_ct: Any
) -> None:
    """The store goes down while the product runs. The worker keeps the result and tries
    again, its heartbeats going on, rather than let the lease run out and the study be
    analysed again (the attempt counted): once the store is back, the job completes on its
    first attempt."""
    with (
        _exchange(store, tmp_path / "exchange") as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        exchange = Exchange(http)
        orgs = set_up_parties(exchange)
        job = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))

        def product(context: JobContext) -> ProductResult:
            store.down()  # the inputs are in; the result will find the store gone
            return tissue_volume.run(context)

        vendor = VendorClient(server.url, orgs["vendor"].key, retries=0)
        worker = Worker(
            vendor, product, product_ids=["product-a"], lease_seconds=30, workdir=tmp_path
        )
        done: list[str | None] = []
        thread = threading.Thread(target=lambda: done.append(worker.run_once(wait_seconds=10)))
        thread.start()
        try:
            wait_for(lambda: _unavailable_answers(http) >= 1, 120, "the result to meet the outage")
        finally:
            store.up()
            thread.join(timeout=120)
            vendor.close()
        assert done == [job["id"]]
        seen = http.get(f"/jobs/{job['id']}", headers=orgs["hospital"].headers).json()
        assert seen["state"] == "completed" and seen["attempts"] == 1, seen
        results = http.get(f"/jobs/{job['id']}/results", headers=orgs["hospital"].headers).json()
        assert [r["name"] for r in results] != []
