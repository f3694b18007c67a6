"""The worker's log tells what became of a job whose last call's answer was lost.

A `fail` or a `release` (hand-back) that the exchange carried out, but whose answer never
came back, is sent again by the client, and the exchange refuses it (409): the job ended, or
went back, with the first. The worker used to log "lease lost …; another worker will take
it" for the failed job, and "not handed back … offered again when its lease runs out" for
the job handed back: both false, and each sends an engineer looking for a fault that did not
happen. It now asks the exchange and logs what it did. (The same for the upload that
completes a job is in test_worker.py.)

The exchange is real; `LosesAnswer` breaks the connection once, after the exchange answered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductError, ProductResult, VendorClient, Worker
from vendor.network import PRODUCT, Exchange, LosesAnswer, vendor_exchange


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


def is_fail(request: httpx.Request) -> bool:
    return request.url.path.endswith("/fail")


def is_release(request: httpx.Request) -> bool:
    return request.url.path.endswith("/release")


def said_of(job_id: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"job {job_id}" in r.getMessage()]


def test_a_fail_whose_answer_was_lost_is_logged_as_failed(
    exchange: Exchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = exchange.submit(tmp_path / "study")
    network = LosesAnswer(is_fail)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)

    def refuses(_context: JobContext) -> ProductResult:
        raise ProductError("no brain in the field of view")

    worker = Worker(client, refuses, product_ids=[PRODUCT], workdir=tmp_path)
    with caplog.at_level(logging.INFO, logger="aifi.vendor.worker"):
        assert worker.run_once(wait_seconds=5) == job_id
    client.close()
    assert network.lost == 1
    job = exchange.job(job_id)
    assert (job["state"], job["reason"]) == ("failed", "no brain in the field of view"), job
    said = said_of(job_id, caplog)
    assert not [line for line in said if "lease lost" in line], said
    assert [line for line in said if "failed, as this worker told" in line], said


def test_a_hand_back_whose_answer_was_lost_is_logged_as_handed_back(
    exchange: Exchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = exchange.submit(tmp_path / "study")
    network = LosesAnswer(is_release)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    not_a_folder = tmp_path / "not-a-folder"  # the worker's own trouble: it hands the job back
    not_a_folder.write_text("")
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=not_a_folder)
    with caplog.at_level(logging.INFO, logger="aifi.vendor.worker"):
        assert worker.run_once(wait_seconds=5) == job_id
    client.close()
    assert network.lost == 1
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"]) == ("requested", 0), job
    said = said_of(job_id, caplog)
    assert not [line for line in said if "not handed back" in line], said
    assert [line for line in said if "the exchange took the hand-back" in line], said
