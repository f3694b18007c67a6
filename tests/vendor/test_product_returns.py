"""A product that returns something other than a `ProductResult` (None, a dict, a list of
paths): a bug in the product, as an exception is, so its job fails at once with a reason
that names what came back (its type, never its content) and what should have.

It used to reach the worker's last-resort guard when the worker read the result's files: it
was logged, and the job was neither failed nor handed back, so it waited at the exchange
until its lease ran out (a STAT study with it). The worker goes on claiming either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifi.products import tissue_volume
from aifi.vendor import JobContext, VendorClient, Worker
from scale.servers import wait_for
from vendor.network import PRODUCT, Exchange, WorkerThread, vendor_exchange

#: What a product's content may hold, which the job's reason must not repeat.
CONTENT = "1.2.826.0.1.3680043.2.1125.content-not-for-the-reason"

#: What the product returns, and how the reason names it.
RETURNS: dict[str, tuple[object, str]] = {
    "None": (None, "None"),
    "a dict": ({"files": [CONTENT]}, "a value of type dict"),
    "a list of paths": ([Path(CONTENT)], "a value of type list"),
}


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


@pytest.mark.parametrize("returned", list(RETURNS))
def test_a_product_that_returns_no_product_result_fails_its_job_at_once(
    exchange: Exchange, tmp_path: Path, returned: str
) -> None:
    """The lease is an hour long: only a job failed by the worker ends within the wait. Then
    the same worker, still running, does the next job with the product's proper result."""
    value, named = RETURNS[returned]
    first = exchange.submit(tmp_path / "first")
    ran: list[str] = []

    def product(context: JobContext) -> Any:
        ran.append(str(context.job["id"]))
        return value if len(ran) == 1 else tissue_volume.run(context)

    client = VendorClient(exchange.url, exchange.vendor_key)
    worker = Worker(client, product, product_ids=[PRODUCT], lease_seconds=3600, workdir=tmp_path)
    with WorkerThread(worker.run) as running:
        wait_for(
            lambda: exchange.job(first)["state"] == "failed" or not running.is_alive(),
            timeout=30,
            what="the job to be failed",
            every=0.2,
        )
        second = exchange.submit(tmp_path / "second")
        wait_for(
            lambda: exchange.job(second)["state"] == "completed" or not running.is_alive(),
            timeout=60,
            what="the next job to be done",
            every=0.2,
        )
        assert running.ended_by == [] and running.is_alive()
    client.close()
    assert ran == [first, second]
    job = exchange.job(first)
    assert (job["state"], job["attempts"]) == ("failed", 1), job
    assert job["reason"] == (
        f"the product returned {named}, not the ProductResult (aifi.vendor.ProductResult) a "
        "product must return"
    )
    assert CONTENT not in job["reason"]
