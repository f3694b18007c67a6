"""A gateway stopped (a restart for an upgrade, a host shutting down) while the exchange is
out of reach ends its calls to the exchange at once, rather than ride out each call's
retries (about 20 s) first: what they were doing is in its state, and done again at the
next start."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.http import RETRIES, ApiClient, ExchangeHTTPError
from scale.servers import wait_for
from support.national import National, gateway_config
from support.peers import free_port


class _Counted(socketserver.StreamRequestHandler):
    """What a load balancer with no exchange behind it answers: 502. The gateway's requests
    (those with the hospital's key) are counted."""

    def handle(self) -> None:
        server: _BadGateway = self.server  # type: ignore[assignment]
        head = []
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            head.append(line)  # the head says whose it is; a body is left unread
        if any(server.key in line for line in head):
            with server.lock:
                server.requests += 1
        self.wfile.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )


class _BadGateway(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, key: str) -> None:
        super().__init__(("127.0.0.1", port), _Counted)
        self.key = key.encode()
        self.lock = threading.Lock()
        self.requests = 0


@contextmanager
def _bad_gateway(port: int, key: str) -> Iterator[_BadGateway]:
    """On `port`; the requests bearing `key` (the hospital's) counted."""
    server = _BadGateway(port, key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_stopped_while_the_exchange_is_down_tries_its_calls_no_more(
    national: National, tmp_path: Path
) -> None:
    port = national.exchange.port
    path = gateway_config(
        tmp_path / "gateway", national, free_port(), national.pacs().dicom_port, 0.3
    )
    national.stop_workers()  # only the gateway talks to the exchange here
    national.exchange.stop()
    with _bad_gateway(port, national.hospital_key) as balancer:
        gateway = Gateway(load_config(path))
        gateway.start()
        # A call under way, riding out the outage with its retries.
        wait_for(lambda: balancer.requests >= 1, timeout=60, what="the gateway to ask")
        at_stop = balancer.requests
        gateway.stop()
        after = balancer.requests - at_stop
    assert not [t for t in gateway._threads if t.is_alive()]
    # Of each thread that talks to the exchange (the results poll, the sender), at most a
    # try in flight as the stop came and one begun as it was being asked for; not the rest
    # of a back-off of RETRIES tries each.
    assert after <= 4 < RETRIES, after


@pytest.mark.parametrize("call", ["request", "download"])
def test_a_call_given_up_at_a_stop_says_what_running_out_of_retries_says(
    tmp_path: Path, call: str
) -> None:
    """A call the stop cuts short raises what it met, as it would after its last retry (502
    here): callers tell the two apart no more than a short outage from a long one."""
    stop = threading.Event()
    stop.set()
    with _bad_gateway(free_port(), "key-of-the-test") as balancer:
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
