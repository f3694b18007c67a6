"""`Retry-After` is read. The exchange says in it when to try again: 60 s for a full store
(507), 5 s for an object store out of reach, 1 s for a database down (503). The worker used
to offer a result again after its own back-off (1 s, 2 s, …) and the client to retry after
0.2 s, 0.4 s, …, whatever the exchange said: every worker re-sending every result to an
exchange that said when it could take them. Now a wait is never shorter than what the
exchange asked (within the worker's longest pause, and 30 s for a request's retry), and a
`Retry-After` that is not a number of seconds is left alone.

The exchange is real; the 507 and 503 answers are `Interposed`, with shorter waits than the
exchange's own to keep the tests short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.products import tissue_volume
from aifi.vendor import VendorClient, Worker
from vendor.network import PRODUCT, Exchange, Interposed, is_upload, status, vendor_exchange


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


def test_a_result_the_store_had_no_room_for_is_offered_again_no_sooner_than_it_said(
    exchange: Exchange, tmp_path: Path
) -> None:
    job_id = exchange.submit(tmp_path / "study")
    # The first upload is answered 507 with Retry-After: 2; the worker's own first pause is 1 s.
    network = Interposed(is_upload, status(507, retry_after="2"), seconds=0.5)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    worker = Worker(
        client, tissue_volume.run, product_ids=[PRODUCT], lease_seconds=30, workdir=tmp_path
    )
    assert worker.run_once(wait_seconds=5) == job_id
    client.close()
    assert exchange.job(job_id)["state"] == "completed"
    assert network.answered == 1
    first, again = network.seen[:2]
    assert again - first >= 2.0, f"offered again after {again - first:.1f} s; it said 2 s"


def is_organisations(request: httpx.Request) -> bool:
    return request.url.path == "/organisations"


@pytest.mark.parametrize(
    ("retry_after", "waited_at_least", "waited_less_than"),
    [
        ("1", 1.0, 10.0),
        # An HTTP date is not read (the clocks need not agree): the client's own back-off,
        # not the 30 s longest wait a date this far ahead would ask for.
        ("Wed, 21 Oct 2099 07:28:00 GMT", 0.2, 10.0),
    ],
)
def test_a_request_is_retried_no_sooner_than_retry_after_says(
    exchange: Exchange, retry_after: str, waited_at_least: float, waited_less_than: float
) -> None:
    network = Interposed(is_organisations, status(503, retry_after=retry_after), seconds=0.1)
    with VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=3) as client:
        client.request("GET", "/organisations")
    assert network.answered == 1
    first, again = network.seen[:2]
    assert waited_at_least <= again - first < waited_less_than
