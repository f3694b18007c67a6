"""A receiver that could not be connected to is seen back once it takes a connection, with no
notice to try it and nothing sent; one that took the connection and failed otherwise is not
judged by a connection."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

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
from aifi.gateway.notify.outages import CHECKS_APART_SECONDS, Outage, Outages
from aifi.gateway.notify.reach import connect_target, never_connected

from .conftest import Clock, RawPeer, hl7_settings, routine, with_clock


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
        outage = notifier.outages.down()["hl7"]
        assert not failed.ok and outage.unreached
        assert notifier.check_unreached() == 30  # the pause is not over: no check yet

        clock.now += 30  # still closed: the next check twice as far off
        assert notifier.check_unreached() == 60
        # The outage is as the notice left it, and notices may try after their pause.
        assert notifier.outages.down()["hl7"] is outage
        assert notifier.outages.holding_off("hl7") is None

        restarting_ris.listen(1)
        clock.now += 59
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


def test_a_ris_whose_port_opens_before_it_answers_goes_on_being_down(
    restarting_ris: socket.socket,
) -> None:
    """The check ends the outage, the next notice fails all the same (the port is open, the
    RIS's engine not yet started): the outage goes on where it was, and that failure spends
    none of the notice's tries. A failure long after is a new outage."""
    clock = Clock()
    port = int(restarting_ris.getsockname()[1])
    with Notifier(hl7_settings(port, hold_off_seconds=30, timeout_seconds=0.5)) as notifier:
        with_clock(notifier, clock)
        notifier.notify(routine("job-1"))
        since = notifier.outages.down()["hl7"].since
        restarting_ris.listen(8)  # the kernel takes connections; nobody answers on them
        clock.now += 30
        assert notifier.check_unreached() is None and notifier.outages.down() == {}
        [again] = notifier.notify(routine("job-2"))
        outage = notifier.outages.down()["hl7"]
        assert not again.ok and not again.counted
        assert (outage.failures, outage.since, outage.unreached) == (2, since, False)
        clock.now += 3600
        assert notifier.check_unreached() is None  # took the connection: no more checks

        notifier.outages.answered("hl7")
        notifier.outages.failed("hl7", "refused", unreached=True)
        clock.now += 30
        assert notifier.check_unreached() is None  # ended by a check again
        clock.now += 301  # longer than the longest pause: what fails now is a new outage
        [later] = notifier.notify(routine("job-3"))
    assert later.counted and notifier.outages.down()["hl7"].failures == 1


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


def test_the_senders_tell_a_refused_connection_from_a_failure_after_one(
    closed_port: int, raw_peer: RawPeer, positive: ResultNotice
) -> None:
    hl7 = hl7_settings(closed_port).hl7
    assert hl7 is not None
    with pytest.raises(DeliveryFailed) as refused:
        send_mllp(build_oru_r01(positive, hl7), hl7)
    assert refused.value.unreached and not refused.value.sent  # nothing left: not disclosed

    silent = hl7_settings(raw_peer(lambda conn: conn.recv(65536)), timeout_seconds=0.2).hl7
    assert silent is not None  # it reads the message and hangs up unanswered
    with pytest.raises(DeliveryFailed) as unanswered:
        send_mllp(build_oru_r01(positive, silent), silent)
    assert not unanswered.value.unreached and unanswered.value.sent

    closed = FhirEndpoint(base_url=f"http://127.0.0.1:{closed_port}/fhir", retries=1)
    with pytest.raises(DeliveryFailed) as fhir_refused:
        post_fhir(build_transaction(positive, closed), closed)
    assert fhir_refused.value.unreached and not fhir_refused.value.sent

    pager = WebhookEndpoint(url=f"http://127.0.0.1:{closed_port}/alerts", secret="k", retries=1)
    with pytest.raises(DeliveryFailed) as webhook_refused:
        send_webhook(positive, pager)
    assert webhook_refused.value.unreached and not webhook_refused.value.sent

    busy = FhirEndpoint(base_url=f"http://127.0.0.1:{raw_peer(answer_503)}/fhir", retries=1)
    with pytest.raises(DeliveryFailed) as answered_503:
        post_fhir(build_transaction(positive, busy), busy)
    assert "HTTP 503" in str(answered_503.value) and not answered_503.value.unreached
    assert answered_503.value.sent

    busy_pager = WebhookEndpoint(
        url=f"http://127.0.0.1:{raw_peer(answer_503)}/alerts", secret="k", retries=1
    )
    with pytest.raises(DeliveryFailed) as paged_503:
        send_webhook(positive, busy_pager)
    assert "HTTP 503" in str(paged_503.value) and not paged_503.value.unreached


def test_only_a_plain_connection_that_timed_out_is_unreached() -> None:
    """Over https, httpx's connect timeout covers the TLS handshake too: a server that took
    the connection and never answered the handshake times out just the same."""
    for scheme, unreached in (("http", True), ("https", False)):
        request = httpx.Request("POST", f"{scheme}://fhir.hospital.local/fhir")
        assert never_connected(httpx.ConnectTimeout("timed out", request=request)) is unreached


def read_request(conn: socket.socket) -> bytes:
    """An HTTP request's head and its body (by Content-Length): answering before the body
    is read would have the kernel reset the connection under the answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def answer_503(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


class ClosesAfterOne:
    """A receiver that takes one connection, hangs up on it, and closes its port: the retry
    after it is refused."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        self._server.close()
        with conn:
            self._answer(conn)

    def join(self) -> None:
        self._thread.join(timeout=30)


def test_a_failure_after_any_connection_is_not_unreached(positive: ResultNotice) -> None:
    """The first attempt connected, the retry was refused: the receiver was reached (a
    connection now would prove nothing), whichever attempt came last."""
    ris = ClosesAfterOne(lambda conn: conn.recv(65536))
    hl7 = hl7_settings(ris.port).hl7
    assert hl7 is not None
    with pytest.raises(DeliveryFailed, match="connection refused") as after_one:
        send_mllp(build_oru_r01(positive, hl7), hl7)
    ris.join()
    assert not after_one.value.unreached

    fhir = ClosesAfterOne(answer_503)
    endpoint = FhirEndpoint(
        base_url=f"http://127.0.0.1:{fhir.port}/fhir", retries=1, timeout_seconds=30
    )
    with pytest.raises(DeliveryFailed, match="ConnectError") as after_503:
        post_fhir(build_transaction(positive, endpoint), endpoint)
    fhir.join()
    assert not after_503.value.unreached


def test_a_tls_handshake_that_fails_came_after_the_connection(raw_peer: RawPeer) -> None:
    """httpx calls a failed, reset or unanswered handshake a ConnectError or ConnectTimeout
    too: the server was reached, and a connection to it would say nothing of whether it
    will now take a notice."""

    def plain_http(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    def reset(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    released = threading.Event()

    def silent(conn: socket.socket) -> None:
        released.wait(30)

    try:
        # A peer that answers is given time to, however loaded the machine; only the silent
        # one is waited for briefly.
        for serve, kind, timeout in (
            (plain_http, httpx.ConnectError, 30.0),
            (reset, httpx.ConnectError, 30.0),
            (silent, httpx.ConnectTimeout, 0.5),
        ):
            with pytest.raises(kind) as handshake:
                httpx.get(f"https://127.0.0.1:{raw_peer(serve)}/metadata", timeout=timeout)
            assert not never_connected(handshake.value), serve.__name__
        with pytest.raises(httpx.ReadTimeout) as unanswered:
            httpx.get(f"http://127.0.0.1:{raw_peer(silent)}/metadata", timeout=0.5)
        assert not never_connected(unanswered.value)
    finally:
        released.set()

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(httpx.ConnectError) as refused:
            httpx.get(f"https://127.0.0.1:{closed.getsockname()[1]}/metadata", timeout=30)
    assert never_connected(refused.value)
    with pytest.raises(httpx.ConnectError) as unknown:
        httpx.get("https://no-such-host.invalid/metadata", timeout=30)
    assert never_connected(unknown.value)


def test_with_no_pause_checks_are_still_apart() -> None:
    clock = Clock()
    outages = Outages(0, clock=clock, wall=clock)
    outages.failed("hl7", "connection refused", unreached=True)
    assert outages.holding_off("hl7") is None  # notices try every time, as configured
    assert outages.next_check_in() == CHECKS_APART_SECONDS
    clock.now += CHECKS_APART_SECONDS
    [due] = outages.unreached_due()
    outages.still_unreached(due, "connection refused")
    assert outages.next_check_in() == CHECKS_APART_SECONDS  # the longest pause is no longer


def test_notices_and_checks_go_through_the_same_proxy(
    monkeypatch: pytest.MonkeyPatch, raw_peer: RawPeer, positive: ResultNotice
) -> None:
    """A proxy named without a scheme, as many hospitals' environments do: the check
    connects to it, and the webhook and FHIR go through it (the proxy answers each CONNECT
    502)."""
    asked: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        asked.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    port = raw_peer(proxy)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{port}")
    monkeypatch.setenv("https_proxy", f"127.0.0.1:{port}")
    pager = WebhookEndpoint(url="https://pager.example/alerts", secret="k", retries=0)
    fhir = FhirEndpoint(base_url="https://fhir.example/fhir", retries=0)
    assert connect_target(pager) == connect_target(fhir) == ("127.0.0.1", port)
    with Notifier(NotificationSettings(webhook=pager, fhir=fhir)) as notifier:
        outcomes = notifier.notify(positive)
    assert not any(outcome.ok for outcome in outcomes) and len(outcomes) == 2
    assert not any(outage.unreached for outage in notifier.outages.down().values())
    with pytest.raises(DeliveryFailed):
        post_fhir(build_transaction(positive, fhir), fhir)  # with a client of its own
    assert sorted(request.split(b"\r\n")[0] for request in asked) == [
        b"CONNECT fhir.example:443 HTTP/1.1",
        b"CONNECT fhir.example:443 HTTP/1.1",
        b"CONNECT pager.example:443 HTTP/1.1",
    ]

    # NO_PROXY names the pager's domain: checks and notices go to it directly, not one of
    # them to the proxy (httpx, left to read the environment itself, would take
    # `.hospital.invalid` not to cover `hospital.invalid`; curl and Python take it to).
    monkeypatch.setenv("NO_PROXY", ".hospital.invalid")
    monkeypatch.setenv("no_proxy", ".hospital.invalid")
    inside = WebhookEndpoint(url="https://hospital.invalid/alerts", secret="k", retries=0)
    assert connect_target(inside) == ("hospital.invalid", 443)
    with Notifier(NotificationSettings(webhook=inside)) as notifier:
        [direct] = notifier.notify(positive)
    assert not direct.ok and notifier.outages.down()["webhook"].unreached  # no such name
    assert len(asked) == 3


def due_for_a_check(hold_off_seconds: float = 30) -> tuple[Clock, Outages, Outage]:
    """Outages on a test clock, with the RIS's connection refused and its pause over: the
    clock, the outages and the outage due a check."""
    clock = Clock()
    outages = Outages(hold_off_seconds, clock=clock, wall=clock)
    outages.failed("hl7", "connection refused", unreached=True)
    clock.now += max(hold_off_seconds, CHECKS_APART_SECONDS)
    [due] = outages.unreached_due()
    return clock, outages, due


def test_a_check_gives_way_to_a_notice_that_failed_meanwhile() -> None:
    """A notice that got as far as a connection, and failed, while a check was under way
    knows more than the check: the outage stays as that notice left it, and is no longer
    one for a connection to end."""
    clock, outages, due = due_for_a_check()
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


def test_a_try_that_began_soon_after_the_check_continues_the_outage_however_long_it_took() -> None:
    """A notice to a RIS whose port is open and engine not (yet) answering waits out its
    timeouts and retries: judged by when it began, not when it gave up."""
    clock, outages, due = due_for_a_check(0)  # the longest pause: 10 s, the least
    first = outages.down()["hl7"]
    assert outages.connected(due)
    began = clock.now + 1
    clock.now += 30  # the try's four timeouts and its back-offs
    assert outages.standing("hl7", began) and not outages.standing("hl7")
    outage = outages.failed("hl7", "no acknowledgement within 5 s", began=began)
    assert (outage.failures, outage.since) == (2, first.since)


def test_a_notice_taken_after_a_check_leaves_nothing_to_continue() -> None:
    clock, outages, due = due_for_a_check()
    outages.connected(due)
    outages.answered("hl7")  # a notice got through: the check was borne out
    assert not outages.standing("hl7") and outages.recoveries == 1
    outage = outages.failed("hl7", "no acknowledgement within 5 s")
    assert (outage.failures, outage.since) == (1, clock.now)


def test_a_further_failure_reschedules_the_check_by_its_own_pause() -> None:
    clock, outages, due = due_for_a_check()
    outages.still_unreached(due, "cannot connect: connection refused")
    assert outages.next_check_in() == 60
    outages.failed("hl7", "connection refused", unreached=True)  # a notice's try: 60 s
    clock.now += 10
    outages.failed("hl7", "connection refused", unreached=True)  # a STAT try: 120 s
    assert outages.next_check_in() == 120


@pytest.fixture
def untrusted_https(raw_peer: RawPeer, tmp_path: Path) -> tuple[int, Path]:
    """An https server whose certificate a CA of the test's own issued, answering 503: its
    port, and that CA's file (which nothing trusts unless told)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)

    def serve(conn: socket.socket) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                read_request(tls)
                tls.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        except (ssl.SSLError, OSError):
            pass  # the client would not trust it

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return raw_peer(serve), tmp_path / "ca.pem"


def test_notices_verify_the_receivers_certificate(
    untrusted_https: tuple[int, Path], positive: ResultNotice
) -> None:
    port, ca_file = untrusted_https
    pager = WebhookEndpoint(url=f"https://127.0.0.1:{port}/alerts", secret="k", retries=0)
    fhir = FhirEndpoint(base_url=f"https://127.0.0.1:{port}/fhir", retries=0)
    with Notifier(NotificationSettings(webhook=pager, fhir=fhir)) as notifier:
        outcomes = {o.channel: o for o in notifier.notify(positive)}
    for channel in ("webhook", "fhir"):
        assert "CERTIFICATE_VERIFY_FAILED" in outcomes[channel].detail, channel
    assert not any(outage.unreached for outage in notifier.outages.down().values())

    trusted = fhir.model_copy(update={"verify_tls": ca_file})
    with Notifier(NotificationSettings(fhir=trusted)) as notifier:
        [outcome] = notifier.notify(positive)
    assert "HTTP 503" in outcome.detail  # through TLS to the server's own answer


def test_a_check_that_meets_the_same_tells_the_journal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, outages, due = due_for_a_check()
    with caplog.at_level(logging.DEBUG, logger="aifi.gateway.notify.outages"):
        for problem in ("connection refused", "connection refused", "no route to host"):
            outages.still_unreached(due, f"cannot connect to ris:2575: {problem}")
    levels = [record.levelno for record in caplog.records if "still down" in record.message]
    assert levels == [logging.INFO, logging.DEBUG, logging.INFO]
