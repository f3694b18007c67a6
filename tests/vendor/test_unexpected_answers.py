"""Answers that are not the exchange API's: a load balancer redirecting to its maintenance
page, a proxy's own HTML page answered 200, an upload answered with no body at all.

Nothing says the request was carried out, so each is the exchange's trouble, to wait out:
the client raises `UnexpectedAnswer` (an `ExchangeHTTPError`) saying in a few words what came
back, never the page itself, and the worker waits and tries again. It used to end: the
client's JSON error, or a redirect taken as a success, went out of `Worker.run`, and with it
the `aifi worker` process. An error nobody foresaw does not end the worker either: it is
logged with its traceback, and the worker goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.products import tissue_volume
from aifi.vendor import (
    ExchangeHTTPError,
    JobContext,
    ProductResult,
    UnexpectedAnswer,
    VendorClient,
    Worker,
)
from scale.servers import wait_for
from vendor.network import (
    PRODUCT,
    Answer,
    Exchange,
    Interposed,
    Matches,
    WorkerThread,
    is_claim,
    is_upload,
    vendor_exchange,
)

#: A maintenance page as long as real ones are: the error quotes only its start.
PAGE = "<html><body>down for maintenance" + " " * 10_000 + "back soon</body></html>"


def redirect(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(302, headers={"Location": "/maintenance.html"})


def html_page(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/html"}, text=PAGE)


def no_body(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(204)


#: Where the answer comes, the answer, and what the error says of it.
CASES: dict[str, tuple[Matches, Answer, str]] = {
    "claim answered by a maintenance redirect": (
        is_claim, redirect, "a redirect to /maintenance.html"
    ),
    "claim answered by an HTML page": (
        is_claim, html_page, "text/html, not the JSON expected: '<html><body>down for maintenance"
    ),
    "result upload answered 204": (is_upload, no_body, "an empty answer"),
}  # fmt: skip


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    with vendor_exchange(tmp_path) as exchange:
        yield exchange


@pytest.mark.parametrize("case", list(CASES))
def test_the_client_says_what_came_instead_of_the_exchanges_answer(
    exchange: Exchange, tmp_path: Path, case: str
) -> None:
    matches, answer, said = CASES[case]
    exchange.submit(tmp_path / "study")
    network = Interposed(matches, answer, seconds=3600)
    with (
        VendorClient(exchange.url, exchange.vendor_key, transport=network, retries=0) as client,
        pytest.raises(UnexpectedAnswer) as raised,
    ):
        lease = client.claim([PRODUCT], wait_seconds=5)
        assert lease is not None
        client.upload_summary(lease, {"volume_ml": 1.0})
    error = raised.value
    assert isinstance(error, ExchangeHTTPError)  # what callers already handle as the exchange's
    assert said in error.detail
    assert "back soon" not in str(error)  # a few words, not the page


@pytest.mark.parametrize("case", list(CASES))
def test_a_worker_waits_out_an_answer_that_is_not_the_exchanges(
    exchange: Exchange, tmp_path: Path, case: str
) -> None:
    """For two seconds the answers are not the exchange's; then they are again, and the same
    worker does the job with the first claim that reached the exchange, its result kept."""
    matches, answer, _said = CASES[case]
    job_id = exchange.submit(tmp_path / "study")
    network = Interposed(matches, answer, seconds=2.0)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    worker = Worker(
        client, tissue_volume.run, product_ids=[PRODUCT], lease_seconds=15, workdir=tmp_path
    )
    with WorkerThread(worker.run) as running:
        wait_for(
            lambda: exchange.job(job_id)["state"] == "completed" or not running.is_alive(),
            timeout=60,
            what="the job to be done",
            every=0.2,
        )
        assert running.ended_by == [] and running.is_alive()
    client.close()
    assert network.answered >= 1
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"]) == ("completed", 1), job


class FailsOnce(httpx.HTTPTransport):
    """The first claim meets an error of a kind nobody planned for, as a bug in an HTTP
    library (or a proxy plug-in) would raise it; the rest reach the exchange."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if is_claim(request) and not self.failed:
            self.failed = True
            raise RuntimeError("a fault in a library on the way")
        return super().handle_request(request)


def test_an_error_nobody_foresaw_is_logged_and_the_worker_goes_on(
    exchange: Exchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = exchange.submit(tmp_path / "study")
    network = FailsOnce()
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=tmp_path)
    with (
        caplog.at_level(logging.ERROR, logger="aifi.vendor.worker"),
        WorkerThread(worker.run) as running,
    ):
        wait_for(
            lambda: exchange.job(job_id)["state"] == "completed" or not running.is_alive(),
            timeout=60,
            what="the job to be done",
            every=0.2,
        )
        assert running.ended_by == [] and running.is_alive()
    client.close()
    assert network.failed
    [logged] = [r for r in caplog.records if "nobody foresaw" in r.getMessage()]
    assert logged.exc_info is not None  # the traceback, for whoever finds the bug
    assert "a fault in a library on the way" in caplog.text
    assert exchange.job(job_id)["state"] == "completed"


def is_input_download(request: httpx.Request) -> bool:
    return request.method == "GET" and "/inputs/" in request.url.path


def is_dicom(path: Path) -> bool:
    """Whether the file is a DICOM Part 10 file: the 'DICM' prefix after its preamble."""
    with path.open("rb") as file:
        return file.read(132)[128:] == b"DICM"


def test_an_input_answered_by_a_page_is_never_given_to_the_product(
    exchange: Exchange, tmp_path: Path
) -> None:
    """For two seconds a proxy answers the input downloads with its HTML page, 200: it is an
    UnexpectedAnswer, the job is handed back, and once the exchange answers again the same
    worker does the job, its product given DICOM only. The page used to be saved as the
    input and given to the product, which failed the job on it."""
    job_id = exchange.submit(tmp_path / "study")
    network = Interposed(is_input_download, html_page, seconds=2.0)
    client = VendorClient(exchange.url, exchange.vendor_key, transport=network)
    given: list[bool] = []

    def product(context: JobContext) -> ProductResult:
        given.extend(is_dicom(path) for path in context.inputs)
        return tissue_volume.run(context)

    worker = Worker(client, product, product_ids=[PRODUCT], workdir=tmp_path, hand_back_pause=0.5)
    with WorkerThread(worker.run) as running:
        wait_for(
            lambda: (
                exchange.job(job_id)["state"] in ("completed", "failed") or not running.is_alive()
            ),
            timeout=60,
            what="the job to end",
            every=0.2,
        )
        assert running.ended_by == [] and running.is_alive()
    client.close()
    assert network.answered >= 1 and network.passed.is_set()
    assert given and all(given)
    job = exchange.job(job_id)
    assert (job["state"], job["attempts"]) == ("completed", 1), job
    reasons = exchange.handed_back_reasons(job_id)
    assert reasons and all("text/html, not the application/dicom" in r for r in reasons), reasons
    assert not any("back soon" in r for r in reasons)  # a few words, not the page
