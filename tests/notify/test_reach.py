"""A receiver that could not be connected to is seen back once it takes a connection, with no
notice to try it and nothing sent; one that took the connection and failed otherwise is not
judged by a connection."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from aifi.gateway.notify import (
    DeliveryFailed,
    FhirEndpoint,
    NotificationSettings,
    Notifier,
    ResultNotice,
    WebhookEndpoint,
    send_mllp,
    send_webhook,
)
from aifi.gateway.notify.fhir import build_transaction, post_fhir
from aifi.gateway.notify.oru import build_oru_r01
from aifi.gateway.notify.outages import Outages
from aifi.gateway.notify.reach import never_connected
from aifi.gateway.notify.receivers import WebhookReceiver

from .conftest import WEBHOOK_KEY
from .test_outages import Clock, hl7_settings, routine, with_clock

RawPeer = Callable[[Callable[[socket.socket], Any]], int]


@pytest.fixture
def restarting_ris() -> Iterator[socket.socket]:
    """A RIS whose port is closed (bound, not listening: connections are refused) until the
    test calls `listen()` on it; then the kernel takes connections for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def test_a_ris_that_refused_connections_is_seen_back_once_it_takes_one(
    restarting_ris: socket.socket,
) -> None:
    clock = Clock()
    port = int(restarting_ris.getsockname()[1])
    with Notifier(hl7_settings(port, hold_off_seconds=30)) as notifier:
        with_clock(notifier, clock)
        [failed] = notifier.notify(routine("job-1"))
        assert not failed.ok and notifier.outages.down()["hl7"].unreached
        assert notifier.check_unreached() == 30  # the pause is not over: no check yet

        clock.now += 30  # still closed: down, for another pause, and no notice's failure more
        assert notifier.check_unreached() == 30
        outage = notifier.outages.down()["hl7"]
        assert outage.failures == 1 and "connection refused (checked" in outage.detail
        assert notifier.outages.holding_off("hl7") is outage

        restarting_ris.listen(1)
        clock.now += 29
        assert notifier.check_unreached() == 1  # not before its time
        clock.now += 1
        assert notifier.check_unreached() is None
        down, recoveries = notifier.outages.down(), notifier.outages.recoveries
    assert down == {} and recoveries == 1
    # The check was a connection and nothing more: no message reached the RIS.
    checked, _ = restarting_ris.accept()
    with checked:
        checked.settimeout(10)
        assert checked.recv(65536) == b""


def test_a_ris_that_took_the_connection_is_not_judged_by_one(raw_peer: RawPeer) -> None:
    """It hung up without acknowledging: that it takes connections says nothing of whether
    it will take a notice, so only a notice ends the outage."""
    connections = []
    port = raw_peer(lambda conn: connections.append(conn.fileno()))
    clock = Clock()
    with Notifier(hl7_settings(port, hold_off_seconds=30)) as notifier:
        with_clock(notifier, clock)
        [failed] = notifier.notify(routine("job-1"))
        tried = len(connections)
        clock.now += 3600
        assert notifier.check_unreached() is None
        down = notifier.outages.down()
    assert not failed.ok and tried == 2  # the try and its retry
    assert not down["hl7"].unreached and len(connections) == tried


def test_a_receiver_no_longer_configured_is_not_kept_down(restarting_ris: socket.socket) -> None:
    port = int(restarting_ris.getsockname()[1])
    clock = Clock()
    with Notifier(hl7_settings(port, hold_off_seconds=30)) as notifier:
        with_clock(notifier, clock)
        notifier.notify(routine("job-1"))
        notifier.settings = NotificationSettings(hold_off_seconds=30)
        clock.now += 30
        assert notifier.check_unreached() is None
        assert notifier.outages.down() == {}


def test_the_senders_tell_a_refused_connection_from_a_failure_after_one(
    closed_port: int,
    raw_peer: RawPeer,
    positive: ResultNotice,
    webhook_receiver: WebhookReceiver,
) -> None:
    hl7 = hl7_settings(closed_port).hl7
    assert hl7 is not None
    with pytest.raises(DeliveryFailed) as refused:
        send_mllp(build_oru_r01(positive, hl7), hl7)
    assert refused.value.unreached

    silent = hl7_settings(raw_peer(lambda conn: conn.recv(65536)), timeout_seconds=0.2).hl7
    assert silent is not None  # it reads the message and hangs up unanswered
    with pytest.raises(DeliveryFailed) as unanswered:
        send_mllp(build_oru_r01(positive, silent), silent)
    assert not unanswered.value.unreached

    closed = FhirEndpoint(base_url=f"http://127.0.0.1:{closed_port}/fhir", retries=1)
    with pytest.raises(DeliveryFailed) as fhir_refused:
        post_fhir(build_transaction(positive, closed), closed)
    assert fhir_refused.value.unreached

    webhook_receiver.fail_with = [502, 502]
    failing = WebhookEndpoint(
        url=webhook_receiver.url, secret=WEBHOOK_KEY.decode(), retries=1, timeout_seconds=30
    )
    with pytest.raises(DeliveryFailed) as answered_502:
        send_webhook(positive, failing)
    assert not answered_502.value.unreached


def test_a_tls_handshake_that_fails_came_after_the_connection(raw_peer: RawPeer) -> None:
    """httpx calls a failed handshake a ConnectError too: the server was reached, and a
    connection to it would say nothing of whether its certificate is right now."""

    def plain_http(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    port = raw_peer(plain_http)
    with pytest.raises(httpx.ConnectError) as handshake:
        httpx.get(f"https://127.0.0.1:{port}/metadata", timeout=30)
    assert not never_connected(handshake.value)

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(httpx.ConnectError) as refused:
            httpx.get(f"https://127.0.0.1:{closed.getsockname()[1]}/metadata", timeout=30)
    assert never_connected(refused.value)


def test_a_check_gives_way_to_a_notice_that_failed_meanwhile() -> None:
    """A notice that got as far as a connection, and failed, while a check was under way
    knows more than the check: the outage stays as that notice left it, and is no longer
    one for a connection to end."""
    clock = Clock()
    outages = Outages(30, clock=clock, wall=clock)
    outages.failed("hl7", "connection refused", unreached=True)
    clock.now += 30
    [due] = outages.unreached_due()
    outages.failed("hl7", "no acknowledgement within 5 s")
    assert not outages.connected(due)
    outages.still_unreached(due, "cannot connect: connection refused")
    outage = outages.down()["hl7"]
    assert (outage.failures, outage.unreached, outage.detail) == (
        2,
        False,
        "no acknowledgement within 5 s",
    )
    assert outages.unreached_due() == [] and outages.next_check_in() is None
    assert outages.recoveries == 0
