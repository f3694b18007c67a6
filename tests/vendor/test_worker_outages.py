"""The exchange out of reach for a little longer than the client's own retries, while a
worker holds a job: while it hands in a finished result, or while it heartbeats.

A finished result is kept and offered again, heartbeats going on, as for a full or failing
store (507, 503): a connection refused or a load balancer's 502/504 used to leave the worker
at once, dropping the result and the heartbeats, so the job waited out its lease and the
product ran again on the same study. When the exchange still cannot take the result after
`storage_wait_seconds`, the job is handed back for another worker now, not held by a lease
nobody renews. A 500 is not waited out: it is a fault in the exchange that the same result
may meet every time. And after a failed heartbeat the next comes within a second or so, not
a third of the lease later, which could be after the lease ran out though the exchange was
back well before.

The exchange is real; the outages are `Interposed` in front of it. The client's retries are
cut to one (0.2 s) so that outages of seconds outlast them, as ones of half a minute outlast
the default.

A worker asked to stop while its claims cannot connect ends without waiting out the client's
retries; a claim whose answer was lost as the stop came is still tried again, and its job
seen through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.http import RETRIES
from aifi.products import tissue_volume
from aifi.vendor import ExchangeHTTPError, JobContext, ProductResult, VendorClient, Worker
from scale.servers import wait_for
from vendor.network import (
    PRODUCT,
    Answer,
    Exchange,
    Interposed,
    LosesAnswer,
    WorkerThread,
    is_claim,
    is_heartbeat,
    is_upload,
    refused,
    status,
    vendor_exchange,
)

OUTAGES: dict[str, Answer] = {
    "connection refused": refused,
    "502 from the load balancer": status(502),
    "504 from the load balancer": status(504),
}


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_a_short_outage_during_hand_in_keeps_the_result(
    exchange: Exchange, tmp_path: Path, outage: str
) -> None:
    job_id = exchange.submit(tmp_path / "study")
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        return tissue_volume.run(context)

    network = Interposed(is_upload, OUTAGES[outage], seconds=2.5)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=1)
    worker = Worker(client, product, product_ids=[PRODUCT], lease_seconds=15, workdir=tmp_path)
    with WorkerThread(worker.run):
        wait_for(
            lambda: exchange.job(job_id)["state"] == "completed",
            timeout=60,
            what="the job to be done",
            every=0.2,
        )
    client.close()
    assert network.answered >= 2  # the first offer and the client's retry of it
    job = exchange.job(job_id)
    # The result was ready: nothing needed the product to run again, nor a second attempt.
    assert (job["attempts"], ran) == (1, [job_id]), (job, ran)


GIVE_UPS: dict[str, Answer] = {
    "507 past the storage wait": status(507, retry_after="60"),
    "connection refused past the storage wait": refused,
}


@pytest.mark.parametrize("trouble", list(GIVE_UPS))
def test_a_worker_that_gives_up_on_the_exchange_hands_the_job_back(
    exchange: Exchange, tmp_path: Path, trouble: str
) -> None:
    """With a lease of an hour, a job left held would wait an hour for another worker; and
    three such give-ups would end it `expired` for the hospital. Handed back, it is at the
    head of the queue at once, no attempt spent."""
    job_id = exchange.submit(tmp_path / "study")
    network = Interposed(is_upload, GIVE_UPS[trouble], seconds=3600)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=0)
    worker = Worker(
        client, tissue_volume.run, product_ids=[PRODUCT], lease_seconds=3600, workdir=tmp_path,
        storage_wait_seconds=2,
    )  # fmt: skip
    assert worker.run_once(wait_seconds=5) == job_id
    client.close()
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"], job["lease_expires_at"]) == ("requested", 0, None), job
    [reason] = exchange.handed_back_reasons(job_id)
    assert "the result for 2 s" in reason, reason


def test_a_500_during_hand_in_is_not_waited_out(exchange: Exchange, tmp_path: Path) -> None:
    """The boundary of the patience above: the same result would meet the same fault, so the
    worker does not offer it again and again for the whole storage wait."""
    job_id = exchange.submit(tmp_path / "study")
    network = Interposed(is_upload, status(500), seconds=3600)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=0)
    worker = Worker(
        client, tissue_volume.run, product_ids=[PRODUCT], lease_seconds=30, workdir=tmp_path,
        storage_wait_seconds=600,
    )  # fmt: skip
    with pytest.raises(ExchangeHTTPError) as raised:
        worker.run_once(wait_seconds=5)
    client.close()
    assert raised.value.status == 500
    assert network.answered == 1
    assert exchange.job(job_id)["state"] == "in-progress"


def test_a_heartbeat_outage_shorter_than_the_lease_keeps_the_job(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Lease 24 s, a beat every 8 s; heartbeats refused for 9 s from the first. The exchange
    is back 7 s before the lease would run out; the worker beats again within about a
    second of each failure, so one of its beats renews the lease in time. (The next beat a
    whole interval after the second failure would have come just as the lease ran out.) The
    margin leaves room for a busy machine, on which each failed beat takes longer."""
    job_id = exchange.submit(tmp_path / "study")
    network = Interposed(is_heartbeat, refused, seconds=9)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=1)

    def works_past_the_outage(context: JobContext) -> ProductResult:
        # A product that works longer than one lease: the job is its own only while a
        # heartbeat after the outage renews the lease.
        assert network.passed.wait(timeout=30), "no heartbeat renewed the lease after the outage"
        return tissue_volume.run(context)

    worker = Worker(
        client, works_past_the_outage, product_ids=[PRODUCT], lease_seconds=24, workdir=tmp_path
    )
    assert worker.run_once(wait_seconds=5) == job_id
    client.close()
    assert network.answered >= 4  # the first beat and its retry, and the next beat, refused
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"]) == ("completed", 1), job


def test_a_worker_stopped_while_the_exchange_is_down_ends_without_its_back_off(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Asked to stop (SIGTERM) while its claims are refused, the worker ends at once: it
    does not knock on the exchange for the rest of its back-off, nine tries over 20 s."""
    network = Interposed(is_claim, refused, seconds=3600)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=tmp_path)
    with WorkerThread(worker.run) as running:
        wait_for(lambda: network.answered >= 1, timeout=30, what="a claim refused")
        running.stop.set()
        at_stop = network.answered
    client.close()
    assert not running.is_alive()
    assert running.ended_by == []
    # No claim after the stop but one already under way as it came; the back-off's nine
    # would take 20 s.
    assert at_stop <= network.answered <= at_stop + 1 < RETRIES + 1, (at_stop, network.answered)


class _StopAsTheAnswerIsLost(LosesAnswer):
    """The stop (SIGTERM) comes just as the exchange took a claim whose answer is lost."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(is_claim)
        self._stop = stop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.ReadError:
            self._stop.set()
            raise


def test_a_claim_that_may_have_taken_a_job_as_the_stop_came_takes_it_home(
    exchange: Exchange, tmp_path: Path
) -> None:
    """The claim reached the exchange, which gave it the job; its answer was lost, and the
    stop came meanwhile. The claim is still tried again (`resume`): the worker gets the job
    it took and sees it through, rather than leave it under a lease nobody holds, which would
    cost the study a whole lease and one of its attempts."""
    job_id = exchange.submit(tmp_path / "study")
    stop = threading.Event()
    network = _StopAsTheAnswerIsLost(stop)
    with VendorClient(exchange.url, exchange.vendor_key, transport=network) as client:
        lease = client.claim([PRODUCT], lease_seconds=60, wait_seconds=0, start=True, stop=stop)
    assert stop.is_set() and network.lost == 1
    assert lease is not None and lease.job_id == job_id
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"]) == ("in-progress", 1), job
