"""A receiver that is down costs one timeout per pause, not one per job: routine notices hold
off trying it, STAT notices always try, and the first notice it takes ends the outage."""

from __future__ import annotations

import socket
import threading

from aifi.gateway.notify import (
    FhirEndpoint,
    Hl7Endpoint,
    NotificationSettings,
    Notifier,
    WebhookEndpoint,
    frame,
    message_control_id,
)
from aifi.gateway.notify.receivers import Hl7Listener

from .conftest import (
    Clock,
    RawPeer,
    hl7_settings,
    make_notice,
    make_summary,
    make_unavailable,
    messages_taken,
    routine,
    with_clock,
)
from .test_mllp import read_block


class Ris:
    """A RIS on a raw socket that counts the connections it is offered, and answers AA only
    once it is `up` (before, it hangs up without acknowledging, as a RIS restarting does)."""

    def __init__(self, raw_peer: RawPeer) -> None:
        self.connections = 0
        self.up = threading.Event()
        self._lock = threading.Lock()
        self.port = raw_peer(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        if not self.up.is_set():
            return
        control = read_block(conn).decode().split("\r")[0].split("|")[9]
        header = "MSH|^~\\&|RIS|H|AIFI|H|20250301||ACK^R01^ACK"
        conn.sendall(frame(f"{header}|A{control}|T|2.5\rMSA|AA|{control}\r"))


def test_routine_notices_hold_off_a_ris_that_is_down_and_count_no_try(raw_peer: RawPeer) -> None:
    ris, clock = Ris(raw_peer), Clock()
    with Notifier(hl7_settings(ris.port)) as notifier:
        with_clock(notifier, clock)
        [first] = notifier.notify(routine("job-1"))
        assert not first.ok and first.retryable and first.tried and first.counted
        assert ris.connections == 2  # the try and its one retry
        later = [notifier.notify(routine(f"job-{n}"))[0] for n in range(2, 6)]
        down = notifier.outages.down()
    assert ris.connections == 2  # four more jobs, not one more connection
    assert all(not o.ok and o.retryable and not o.tried and o.seconds == 0.0 for o in later)
    assert not any(o.counted for o in later)
    assert {o.message_id for o in later} == {
        message_control_id(routine(f"job-{n}")) for n in range(2, 6)
    }
    assert later[0].detail.startswith("not tried: the hl7 receiver has failed 1 notice(s)")
    assert first.detail in later[0].detail  # what went wrong, for the engineer
    assert list(down) == ["hl7"] and down["hl7"].failures == 1
    assert down["hl7"].retry_from == clock.now + 30


def test_a_stat_notice_tries_a_ris_held_off_and_ends_the_outage(raw_peer: RawPeer) -> None:
    ris, clock = Ris(raw_peer), Clock()
    with Notifier(hl7_settings(ris.port)) as notifier:
        with_clock(notifier, clock)
        notifier.notify(routine("job-1"))
        ris.up.set()
        for stat in (make_notice(make_summary(), job="job-2"), make_unavailable(stat_study=True)):
            assert stat.stat
            [outcome] = notifier.notify(stat)
            assert outcome.tried and outcome.ok, outcome.detail
        assert notifier.outages.down() == {}
        [after] = notifier.notify(routine("job-3"))  # the RIS is up: no holding off
    assert after.ok and after.tried
    assert ris.connections == 2 + 2 + 1


def test_the_pause_doubles_while_the_ris_stays_down_and_ends_when_it_answers(
    raw_peer: RawPeer,
) -> None:
    ris, clock = Ris(raw_peer), Clock()
    with Notifier(hl7_settings(ris.port, hold_off_seconds=30)) as notifier:
        with_clock(notifier, clock)
        pauses, counted = [], []
        for n in range(6):
            [outcome] = notifier.notify(routine(f"job-{n}"))
            assert outcome.tried and not outcome.ok  # every pause is over: each one tries
            counted.append(outcome.counted)
            outage = notifier.outages.down()["hl7"]
            pauses.append(outage.retry_from - clock.now)
            clock.now += pauses[-1] - 1
            [held] = notifier.notify(routine(f"held-{n}"))
            assert not held.tried, f"tried {held.detail} with {pauses[-1] - 1} s of {pauses[-1]}"
            clock.now += 1
        assert pauses == [30, 60, 120, 240, 300, 300]  # up to ten times the first
        # Only the failure that began the outage counts towards a notice's five tries.
        assert counted == [True, False, False, False, False, False]
        assert ris.connections == 6 * 2
        ris.up.set()
        [back] = notifier.notify(routine("job-back"))
        [next_one] = notifier.notify(routine("job-next"))
    assert back.ok and next_one.ok and next_one.tried
    assert ris.connections == 12 + 2


def test_a_ris_that_refuses_a_notice_is_up() -> None:
    """An AE or AR is an answer: whatever was wrong with that message, the RIS is there."""
    with Hl7Listener(ack_code="AR", ack_text="busy") as listener:
        notifier = Notifier(hl7_settings(listener.port))
        with notifier:
            [refused] = notifier.notify(routine("job-1"))
            [again] = notifier.notify(routine("job-2"))
            down = notifier.outages.down()
    assert not refused.ok and refused.retryable and refused.tried
    assert again.tried and down == {}
    taken = messages_taken(listener)
    assert len(taken) == len(set(taken)) == 2  # each notice once


def test_no_hold_off_tries_every_notice_yet_says_the_ris_is_down(raw_peer: RawPeer) -> None:
    ris = Ris(raw_peer)
    with Notifier(hl7_settings(ris.port, hold_off_seconds=0)) as notifier:
        outcomes = [notifier.notify(routine(f"job-{n}"))[0] for n in range(3)]
        down = notifier.outages.down()
    assert all(o.tried and not o.ok for o in outcomes)
    assert ris.connections == 3 * 2
    assert down["hl7"].failures == 3


def test_held_off_channels_leave_the_others_alone(hl7_listener: Hl7Listener) -> None:
    """The webhook down does not hold the RIS; outcomes come in the channels' order."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        settings = NotificationSettings(
            hl7=Hl7Endpoint(host="127.0.0.1", port=hl7_listener.port, timeout_seconds=30),
            webhook=WebhookEndpoint(
                url=f"http://127.0.0.1:{closed.getsockname()[1]}/hook",
                secret="k",
                only_stat=False,
                retries=0,
            ),
        )
        with Notifier(settings) as notifier:
            first = notifier.notify(routine("job-1"))
            second = notifier.notify(routine("job-2"))
    finally:
        closed.close()
    assert [(o.channel, o.ok, o.tried) for o in first] == [
        ("hl7", True, True),
        ("webhook", False, True),
    ]
    assert [(o.channel, o.ok, o.tried) for o in second] == [
        ("hl7", True, True),
        ("webhook", False, False),
    ]
    taken = messages_taken(hl7_listener)
    assert len(taken) == len(set(taken)) == 2  # each notice once


def test_a_stat_notice_holds_off_a_receiver_down_only_while_another_takes_it(
    raw_peer: RawPeer, hl7_listener: Hl7Listener
) -> None:
    """FHIR down, the RIS up: a second alert is not held up by FHIR's timeout (it is held
    off), yet reaches the RIS; with the RIS held off too, it tries both rather than nobody."""
    fhir, clock = Ris(raw_peer), Clock()  # it hangs up: FHIR's POST is never answered
    endpoint = FhirEndpoint(
        base_url=f"http://127.0.0.1:{fhir.port}/fhir", timeout_seconds=30, retries=0
    )
    settings = NotificationSettings(
        hl7=Hl7Endpoint(host="127.0.0.1", port=hl7_listener.port, timeout_seconds=30),
        fhir=endpoint,
    )
    with Notifier(settings) as notifier:
        with_clock(notifier, clock)
        first = {o.channel: o for o in notifier.notify(make_notice(make_summary(), job="a"))}
        second = {o.channel: o for o in notifier.notify(make_notice(make_summary(), job="b"))}
        notifier.outages.failed("hl7", "as if the RIS had failed too")
        third = {o.channel: o for o in notifier.notify(make_notice(make_summary(), job="c"))}
    assert first["hl7"].ok and first["fhir"].tried and not first["fhir"].ok
    assert second["hl7"].ok and not second["fhir"].tried
    assert fhir.connections == 2  # the first alert's, and the third's
    assert third["fhir"].tried and third["hl7"].tried and third["hl7"].ok
