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
from aifi.vendor import (
    Handler,
    JobContext,
    Lease,
    ProductError,
    ProductResult,
    VendorClient,
    Worker,
)
from aifi.vendor.worker import HAND_BACK_PAUSE
from scale.servers import wait_for
from support.exchange_restore import backed_up, restored
from vendor.network import PRODUCT, Exchange, WorkerThread, vendor_exchange

GONE = "the exchange no longer knows the job"


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


#: A lease whose heartbeats (a third of it) find a job gone within seconds, yet long enough
#: that a stall of a loaded machine (every core busy with the suite) does not run it out: a
#: job re-handed after a lost lease would run twice, as the tests here say it must not.
SHORT_LEASE = 6.0


def _worker(
    exchange: Exchange,
    product: Handler,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    *,
    lease: float,
    retries: int = 5,
    hand_back_pause: float = HAND_BACK_PAUSE,
) -> tuple[VendorClient, Worker]:
    """A worker of `product` at the exchange, what it logs kept by `caplog`; and its client."""
    caplog.set_level(logging.INFO, logger="aifi.vendor")
    client = VendorClient(exchange.url, exchange.vendor_key, retries=retries)
    worker = Worker(
        client,
        product,
        product_ids=[PRODUCT],
        lease_seconds=lease,
        workdir=tmp_path,
        hand_back_pause=hand_back_pause,
    )
    return client, worker


def _said_gone(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if GONE in r.getMessage()]


def _next_job_done(exchange: Exchange, running: WorkerThread, tmp_path: Path) -> str:
    """A job sent now is done by the same worker, still running: the job's id."""
    following = exchange.submit(tmp_path / "following")
    wait_for(
        lambda: exchange.job(following)["state"] == "completed" or not running.is_alive(),
        timeout=60,
        what="the next job to be done",
        every=0.2,
    )
    assert running.ended_by == [] and running.is_alive()
    return following


@pytest.mark.parametrize(
    ("lease", "found_by"),
    [
        (3600.0, "PUT"),  # found as the result is handed in
        (SHORT_LEASE, "its heartbeat"),  # found by a heartbeat while the product runs
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

    client, worker = _worker(exchange, product, tmp_path, caplog, lease=lease)
    server = exchange.server
    try:
        with WorkerThread(worker.run) as running:
            assert running_first.wait(30)
            server = restored(server, backup)
            if found_by == "its heartbeat":
                wait_for(
                    lambda: bool(_said_gone(caplog)),
                    timeout=30,
                    what="a heartbeat to find the job gone",
                    every=0.1,
                )
            release.set()
            wait_for(
                lambda: bool(_said_gone(caplog)),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            following = _next_job_done(exchange, running, tmp_path)
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    [said] = _said_gone(caplog)
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

    client, worker = _worker(exchange, product, tmp_path, caplog, lease=SHORT_LEASE)
    server = exchange.server
    try:
        with WorkerThread(worker.run) as running:
            assert running_first.wait(30)
            server = restored(server, backup)
            wait_for(
                lambda: bool(_said_gone(caplog)),
                timeout=30,
                what="a heartbeat to find the job gone",
                every=0.1,
            )
            release.set()
            following = _next_job_done(exchange, running, tmp_path)
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    assert len(_said_gone(caplog)) == 1
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

    client, worker = _worker(exchange, product, tmp_path, caplog, lease=SHORT_LEASE, retries=0)
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
                lambda: bool(_said_gone(caplog)),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            following = _next_job_done(exchange, running, tmp_path)
    finally:
        client.close()
        server.stop()
    assert ran == [forgotten, following]
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if GONE in m]) == 1, said
    assert not [m for m in said if "another worker will take it" in m], said
    assert not [m for m in said if f"job {forgotten} handed back" in m], said


def test_a_job_forgotten_before_its_inputs_were_fetched_is_dropped_and_the_next_one_done(
    exchange: Exchange,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exchange is restored between the claim and the download of the job's inputs: the
    download is answered 404 "no job". There is nothing to fail, hand back or run: the worker
    says once that the job is gone, and claims the next job at once (a hand-back's pause
    would keep the next job waiting past this test's patience)."""
    backup = backed_up(exchange.server, tmp_path / "exchange-backup.db")
    forgotten = exchange.submit(tmp_path / "forgotten")
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        return tissue_volume.run(context)

    client, worker = _worker(
        exchange, product, tmp_path, caplog, lease=3600.0, hand_back_pause=3600.0
    )
    server = exchange.server
    restored_for: list[str] = []
    download_inputs = client.download_inputs

    def restored_first(lease: Lease, folder: Path) -> list[Path]:
        """The exchange's restore happens once, just after the first claim."""
        nonlocal server
        if not restored_for:
            restored_for.append(lease.job_id)
            server = restored(server, backup)
        return download_inputs(lease, folder)

    monkeypatch.setattr(client, "download_inputs", restored_first)
    try:
        with WorkerThread(worker.run) as running:
            wait_for(
                lambda: bool(_said_gone(caplog)) or not running.is_alive(),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            following = _next_job_done(exchange, running, tmp_path)
    finally:
        client.close()
        server.stop()
    assert restored_for == [forgotten]
    assert ran == [following]  # never the forgotten job's
    [said] = _said_gone(caplog)
    assert said.levelno == logging.WARNING and forgotten in said.getMessage()
    assert "404 no job" in said.getMessage() and "the product was not run" in said.getMessage()
    # Nothing else was tried for the job: no fail, no hand-back, no "exchange error".
    others = [
        r.getMessage() for r in caplog.records if r is not said and forgotten in r.getMessage()
    ]
    assert not [m for m in others if "failed" in m or "handed back" in m or "404" in m], others
    assert not [r for r in caplog.records if "exchange error" in r.getMessage()]


def test_a_job_its_heartbeat_finds_gone_while_its_inputs_come_is_said_gone_once(
    exchange: Exchange,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large study: the heartbeat finds the job gone before its inputs are in, and says so;
    the download's own 404 "no job" that follows says nothing more."""
    backup = backed_up(exchange.server, tmp_path / "exchange-backup.db")
    forgotten = exchange.submit(tmp_path / "forgotten")
    ran: list[str] = []

    def product(context: JobContext) -> ProductResult:
        ran.append(str(context.job["id"]))
        return tissue_volume.run(context)

    client, worker = _worker(exchange, product, tmp_path, caplog, lease=SHORT_LEASE)
    server = exchange.server
    download_inputs = client.download_inputs

    def slow_download(lease: Lease, folder: Path) -> list[Path]:
        """Still downloading when the exchange is restored and the next heartbeat beats."""
        nonlocal server
        if lease.job_id == forgotten:
            server = restored(server, backup)
            wait_for(
                lambda: bool(_said_gone(caplog)),
                timeout=30,
                what="the heartbeat to find the job gone",
                every=0.1,
            )
        return download_inputs(lease, folder)

    monkeypatch.setattr(client, "download_inputs", slow_download)
    try:
        with WorkerThread(worker.run) as running:
            wait_for(
                lambda: bool(_said_gone(caplog)) or not running.is_alive(),
                timeout=30,
                what="the worker to find the job gone",
                every=0.1,
            )
            # Claimed once the forgotten job's download has met its 404 and been dropped.
            following = _next_job_done(exchange, running, tmp_path)
    finally:
        client.close()
        server.stop()
    assert ran == [following]
    [said] = _said_gone(caplog)
    assert "its heartbeat was answered 404" in said.getMessage()
    assert "its work stops" in said.getMessage()
    assert not [r for r in caplog.records if f"job {forgotten} failed" in r.getMessage()]
