"""A job the exchange no longer knows (its database restored to a moment before the job was
made): the worker drops the product's result with a warning that says why, neither failing
nor handing back a job nobody holds, and goes straight on to the next job. The hospital's
gateway sends the study again (tests/gateway/test_lost_by_exchange.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductError, ProductResult, VendorClient, Worker
from scale.servers import wait_for
from support.exchange_restore import backed_up, restored
from vendor.network import PRODUCT, Exchange, WorkerThread, vendor_exchange

GONE = "the exchange no longer knows the job"


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


@pytest.mark.parametrize(
    ("lease", "found_by"),
    [
        (3600.0, "PUT"),  # found as the result is handed in
        (3.0, "its heartbeat"),  # found by a heartbeat while the product runs
    ],
)
def test_a_job_the_exchange_forgot_is_dropped_and_the_next_one_done(
    exchange: Exchange,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    lease: float,
    found_by: str,
) -> None:
    backup = backed_up(exchange.server, tmp_path / "exchange-backup.db")
    forgotten = exchange.submit(tmp_path / "forgotten")
    running_first = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        if len(ran) == 1:
            running_first.set()
            assert release.wait(60)
        return tissue_volume.run(context)

    caplog.set_level(logging.INFO, logger="aifi.vendor")
    client = VendorClient(exchange.url, exchange.vendor_key, retries=5)
    worker = Worker(client, product, product_ids=[PRODUCT], lease_seconds=lease, workdir=tmp_path)
    server = exchange.server
    try:
        with WorkerThread(worker.run) as running:
            assert running_first.wait(30)
            server = restored(server, backup)
            if found_by == "its heartbeat":
                wait_for(
                    lambda: any(GONE in r.getMessage() for r in caplog.records),
                    timeout=30,
                    what="a heartbeat to find the job gone",
                    every=0.1,
                )
            release.set()
            wait_for(
                lambda: any(GONE in r.getMessage() for r in caplog.records),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            following = exchange.submit(tmp_path / "following")
            wait_for(
                lambda: exchange.job(following)["state"] == "completed" or not running.is_alive(),
                timeout=60,
                what="the next job to be done",
                every=0.2,
            )
            assert running.ended_by == [] and running.is_alive()
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    [said] = [r for r in caplog.records if GONE in r.getMessage()]
    assert said.levelno == logging.WARNING and forgotten in said.getMessage()
    assert found_by in said.getMessage()
    # Nothing else was tried for the job: no fail, no hand-back, no "exchange error".
    others = [
        r.getMessage() for r in caplog.records if r is not said and forgotten in r.getMessage()
    ]
    assert not [m for m in others if "failed" in m or "handed back" in m or "404" in m], others
    assert not [r for r in caplog.records if "exchange error" in r.getMessage()]


def test_a_forgotten_job_its_product_refuses_is_dropped_not_failed(
    exchange: Exchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat finds the job gone while the product runs; the product then refuses the
    study. There is no job to fail: the worker says so once and goes on."""
    backup = backed_up(exchange.server, tmp_path / "exchange-backup.db")
    forgotten = exchange.submit(tmp_path / "forgotten")
    running_first = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        if len(ran) == 1:
            running_first.set()
            assert release.wait(60)
            raise ProductError("the product cannot read this study")
        return tissue_volume.run(context)

    caplog.set_level(logging.INFO, logger="aifi.vendor")
    client = VendorClient(exchange.url, exchange.vendor_key, retries=5)
    worker = Worker(client, product, product_ids=[PRODUCT], lease_seconds=3.0, workdir=tmp_path)
    server = exchange.server
    try:
        with WorkerThread(worker.run) as running:
            assert running_first.wait(30)
            server = restored(server, backup)
            wait_for(
                lambda: any(GONE in r.getMessage() for r in caplog.records),
                timeout=30,
                what="a heartbeat to find the job gone",
                every=0.1,
            )
            release.set()
            following = exchange.submit(tmp_path / "following")
            wait_for(
                lambda: exchange.job(following)["state"] == "completed" or not running.is_alive(),
                timeout=60,
                what="the next job to be done",
                every=0.2,
            )
            assert running.ended_by == [] and running.is_alive()
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    assert len([r for r in caplog.records if GONE in r.getMessage()]) == 1
    assert not [r for r in caplog.records if "exchange error" in r.getMessage()]
    assert not [r for r in caplog.records if f"job {forgotten} failed" in r.getMessage()]


def test_a_job_gone_while_its_result_waits_to_be_handed_in_is_dropped_once(
    exchange: Exchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The exchange goes down as the product finishes (its restore begins), so the worker
    keeps the result and tries again; it comes back without the job. The worker says once
    that the job is gone, not that another worker will take it, and goes on."""
    backup = backed_up(exchange.server, tmp_path / "exchange-backup.db")
    forgotten = exchange.submit(tmp_path / "forgotten")
    running_first = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        if len(ran) == 1:
            running_first.set()
            assert release.wait(60)
        return tissue_volume.run(context)

    caplog.set_level(logging.INFO, logger="aifi.vendor")
    client = VendorClient(exchange.url, exchange.vendor_key, retries=0)
    worker = Worker(client, product, product_ids=[PRODUCT], lease_seconds=3.0, workdir=tmp_path)
    server = exchange.server
    try:
        with WorkerThread(worker.run) as running:
            assert running_first.wait(30)
            server.stop()
            release.set()
            wait_for(
                lambda: any("trying again" in r.getMessage() for r in caplog.records),
                timeout=30,
                what="the worker to keep the result while the exchange is down",
                every=0.1,
            )
            server = restored(server, backup)
            wait_for(
                lambda: any(GONE in r.getMessage() for r in caplog.records),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            following = exchange.submit(tmp_path / "following")
            wait_for(
                lambda: exchange.job(following)["state"] == "completed" or not running.is_alive(),
                timeout=60,
                what="the next job to be done",
                every=0.2,
            )
            assert running.ended_by == [] and running.is_alive()
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if GONE in m]) == 1, said
    assert not [m for m in said if "another worker will take it" in m], said
    assert not [m for m in said if f"job {forgotten} handed back" in m], said
