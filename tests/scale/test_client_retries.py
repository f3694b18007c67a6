"""The clients' side of a replica dying mid-request: the gateway's and the vendor SDK's
retries must send the same bytes again, and a worker must outlive a broken connection.

A retried upload streams the file afresh; a worker logs a broken connection and carries on.
A call is tried once plus its retries, no more, and, once a stopping service gives up, once.
"""

from __future__ import annotations

import socketserver
import threading
from pathlib import Path
from typing import cast

import httpx
import pytest

from aifi.gateway.exchange_client import GatewayClient
from aifi.http import ApiClient, ExchangeHTTPError
from aifi.vendor import Lease, ProductResult, VendorClient, Worker
from scale.servers import bad_gateway
from support.peers import free_port

BODY = b"DICM" * 5000


def flaky_exchange(received: list[int]) -> httpx.MockTransport:
    """Answers the first upload with 502 (a replica died), the next ones with 201."""

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(len(request.read()))
        if len(received) == 1:
            return httpx.Response(502, text="bad gateway")
        return httpx.Response(201, json={"name": "sr.dcm"})

    return httpx.MockTransport(handle)


def test_a_retried_result_upload_sends_the_whole_file_again(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(BODY)
    received: list[int] = []
    client = VendorClient("http://exchange", "aifi_k", transport=flaky_exchange(received))
    client.upload_result(Lease(job={"id": "job-1"}, token="t"), path)
    assert received == [len(BODY), len(BODY)]


def test_a_retried_input_upload_sends_the_whole_file_again(tmp_path: Path) -> None:
    path = tmp_path / "1.2.3.dcm"
    path.write_bytes(BODY)
    received: list[int] = []
    client = GatewayClient("http://exchange", "aifi_k", transport=flaky_exchange(received))
    client.put_input("job-1", "1.2.3", path)
    assert received == [len(BODY), len(BODY)]


def test_a_worker_outlives_a_broken_connection() -> None:
    calls: list[str] = []
    second = threading.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) >= 2:
            second.set()
            return httpx.Response(204)
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    client = VendorClient(
        "http://exchange", "aifi_k", retries=0, transport=httpx.MockTransport(handle)
    )
    worker = Worker(client, lambda _context: ProductResult(files=[]))
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop, wait_seconds=0)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    second.wait(timeout=30)
    stop.set()
    thread.join(timeout=10)
    assert failures == [] and second.is_set(), failures


class Count(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        cast(HangUp, self.server).connections += 1


class HangUp(socketserver.ThreadingTCPServer):
    """An exchange that accepts each connection and closes it unanswered, counting them. Over
    https the TLS handshake then fails: a connection error, the kind a transport may retry."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        super().__init__(("127.0.0.1", 0), Count)


@pytest.mark.parametrize("call", ["request", "download"])
def test_a_failing_request_is_tried_once_plus_the_retries_no_more(
    call: str, tmp_path: Path
) -> None:
    with HangUp() as exchange:
        threading.Thread(target=exchange.serve_forever, daemon=True).start()
        client = GatewayClient(f"https://127.0.0.1:{exchange.server_address[1]}", "k", retries=2)
        try:
            with pytest.raises(httpx.TransportError):
                if call == "request":
                    client.request("GET", "/jobs")
                else:
                    client.download("/jobs/1/results/sr.dcm", tmp_path / "sr.dcm")
        finally:
            client.close()
            exchange.shutdown()
    # One layer retries: no transport underneath multiplies the attempts (it did: 3 × 4).
    assert exchange.connections == 3
    assert not list(tmp_path.iterdir()), "a failed download left a file behind"


@pytest.mark.parametrize("call", ["request", "download"])
def test_a_call_given_up_at_a_stop_says_what_running_out_of_retries_says(
    tmp_path: Path, call: str
) -> None:
    """A call the stop cuts short raises what it met, as it would after its last retry (502
    here): callers tell the two apart no more than a short outage from a long one."""
    stop = threading.Event()
    stop.set()
    with bad_gateway(free_port(), "key-of-the-test") as balancer:
        client = ApiClient(f"http://127.0.0.1:{balancer.server_address[1]}", "key-of-the-test")
        client.give_up_when(stop)
        with client, pytest.raises(ExchangeHTTPError) as given_up:
            if call == "request":
                client.request("GET", "/jobs")
            else:
                client.download("/jobs/j/results/r", tmp_path / "result.dcm")
    assert given_up.value.status == 502
    assert balancer.requests == 1  # one try, none again
    assert not list(tmp_path.iterdir())  # no half-file
