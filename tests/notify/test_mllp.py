"""MLLP delivery: framing, acknowledgements, retries, and a block split across TCP segments."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hl7apy.core import Message

from aifi.gateway.notify import (
    DeliveryFailed,
    FrameDecoder,
    Hl7Endpoint,
    Hl7Rejected,
    ResultNotice,
    build_oru_r01,
    frame,
    message_control_id,
    mllp,
    mllp_connections,
    send_mllp,
)
from aifi.gateway.notify.mllp import FramingError, control_id_of
from aifi.gateway.notify.mllp_connections import StandingConnection
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.results.summary import TriageFlag

from .conftest import (
    HangsUpOn,
    StandingReceiver,
    WatchedTurns,
    ack_of,
    control_id_in,
    make_notice,
    make_summary,
)

RawPeer = Callable[[Callable[[socket.socket], Any]], int]


def endpoint(port: int, **overrides: Any) -> Hl7Endpoint:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        # Long: every peer here answers or hangs up, and on a loaded machine a late ACK would
        # be taken for none and the message sent again. The test of the timeout sets its own.
        "timeout_seconds": 30.0,
        "retries": 2,
        "retry_backoff_seconds": 0.01,
    }
    return Hl7Endpoint(**(settings | overrides))


def read_block(conn: socket.socket) -> bytes:
    """What a receiver does: read until one MLLP block is complete."""
    decoder = FrameDecoder()
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("sender closed before a whole block arrived")
        blocks = decoder.feed(chunk)
        if blocks:
            return blocks[0]


def drain(conn: socket.socket) -> None:
    """Read until the sender hangs up (it times out waiting for an ACK that never comes)."""
    while conn.recv(4096):
        pass


# framing -------------------------------------------------------------------------------------


def test_frame_wraps_the_message_in_start_and_end_blocks() -> None:
    assert frame("MSH|x\r") == b"\x0bMSH|x\r\x1c\x0d"


def test_decoder_assembles_a_block_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    data = frame("MSH|^~\\&|A\rMSA|AA|1\r")
    found: list[bytes] = []
    for index in range(len(data)):
        found += decoder.feed(data[index : index + 1])
        if index < len(data) - 1:
            assert found == []
    assert found == [b"MSH|^~\\&|A\rMSA|AA|1\r"]


def test_decoder_splits_two_blocks_in_one_read_and_drops_noise() -> None:
    decoder = FrameDecoder()
    data = b"noise" + frame("ONE\r") + b"\r\n" + frame("TWO\r")[:4]
    assert decoder.feed(data) == [b"ONE\r"]
    assert decoder.feed(frame("TWO\r")[4:]) == [b"TWO\r"]


def test_decoder_refuses_a_block_that_never_ends() -> None:
    decoder = FrameDecoder(max_bytes=64)
    decoder.feed(b"\x0b" + b"x" * 60)
    with pytest.raises(FramingError, match="larger than 64 bytes"):
        decoder.feed(b"x" * 10)


# acknowledgements from hl7apy's MLLP server ---------------------------------------------------


def test_an_aa_returns_the_ack_and_the_listener_has_the_message(
    hl7_listener: Hl7Listener, positive: ResultNotice
) -> None:
    target = endpoint(hl7_listener.port)
    ack = send_mllp(build_oru_r01(positive, target), target)
    assert (ack.code, ack.accepted) == ("AA", True)
    assert ack.control_id == message_control_id(positive)
    got = hl7_listener.received.get(timeout=5)
    assert got.message.msh.msh_10.to_er7() == message_control_id(positive)
    assert hl7_listener.errors.empty()


def test_an_ae_is_a_clear_error_that_is_not_retried(
    hl7_listener: Hl7Listener, positive: ResultNotice
) -> None:
    hl7_listener.ack_code, hl7_listener.ack_text = "AE", "unknown order"
    target = endpoint(hl7_listener.port)
    with pytest.raises(Hl7Rejected) as caught:
        send_mllp(build_oru_r01(positive, target), target)
    error = caught.value
    assert (error.code, error.retryable, error.channel) == ("AE", False, "hl7")
    assert "AE (application error): unknown order" in str(error)
    assert message_control_id(positive) in str(error)
    assert "MRN-000123" not in str(error)
    hl7_listener.received.get(timeout=5)
    assert hl7_listener.received.empty()  # sent once: a content error is not resent


def test_an_ar_is_a_clear_error_marked_retryable(
    hl7_listener: Hl7Listener, positive: ResultNotice
) -> None:
    hl7_listener.ack_code = "AR"
    target = endpoint(hl7_listener.port)
    with pytest.raises(Hl7Rejected, match=r"AR \(application reject\)") as caught:
        send_mllp(build_oru_r01(positive, target), target)
    assert caught.value.retryable


def test_hl7apys_server_files_a_no_result_oru(
    hl7_listener: Hl7Listener, unavailable: ResultNotice
) -> None:
    """The strict ORU_R01 parse on the receiving side takes a cancelled order (OBR-25 X)."""
    target = endpoint(hl7_listener.port)
    ack = send_mllp(build_oru_r01(unavailable, target), target)
    assert (ack.code, ack.control_id) == ("AA", message_control_id(unavailable))
    got = hl7_listener.received.get(timeout=5)
    assert hl7_listener.errors.empty()
    order = got.message.oru_r01_patient_result.oru_r01_order_observation
    assert (order.orc.orc_5.to_er7(), order.obr.obr_25.to_er7()) == ("CA", "X")
    (observation,) = order.oru_r01_observation
    assert observation.obx.obx_3.to_er7() == "NO_AI_RESULT^AI result unavailable^99AIFI"
    assert observation.obx.obx_11.to_er7() == "X"


# failures that are retried --------------------------------------------------------------------


def test_a_listener_that_is_down_fails_after_the_retries(
    closed_port: int, positive: ResultNotice
) -> None:
    target = endpoint(closed_port, retries=2)
    with pytest.raises(DeliveryFailed, match="after 3 attempt") as caught:
        send_mllp(build_oru_r01(positive, target), target)
    assert "connection refused" in str(caught.value)
    assert caught.value.retryable


def test_each_attempt_reconnects_and_resends_the_same_message(
    raw_peer: RawPeer, positive: ResultNotice
) -> None:
    blocks: list[bytes] = []

    def hang_up_after_reading(conn: socket.socket) -> None:
        blocks.append(read_block(conn))

    target = endpoint(raw_peer(hang_up_after_reading), retries=3)
    with pytest.raises(DeliveryFailed, match="after 4 attempt"):
        send_mllp(build_oru_r01(positive, target), target)
    assert len(blocks) == 4
    control_ids = {block.split(b"\r")[0].split(b"|")[9] for block in blocks}
    assert control_ids == {message_control_id(positive).encode()}


def test_no_ack_within_the_timeout_is_an_error(raw_peer: RawPeer, positive: ResultNotice) -> None:
    target = endpoint(raw_peer(drain), timeout_seconds=0.2, retries=1)
    with pytest.raises(DeliveryFailed, match="no acknowledgement within 0.2 s"):
        send_mllp(build_oru_r01(positive, target), target)


def test_an_ack_for_another_message_is_not_taken(raw_peer: RawPeer, positive: ResultNotice) -> None:
    def answer_wrong_id(conn: socket.socket) -> None:
        read_block(conn)
        conn.sendall(frame("MSH|^~\\&|RIS|H|AIFI|X|20250301||ACK|1|P|2.5\rMSA|AA|SOMEONE-ELSE\r"))

    target = endpoint(raw_peer(answer_wrong_id), retries=0)
    with pytest.raises(DeliveryFailed, match="answers control id 'SOMEONE-ELSE'"):
        send_mllp(build_oru_r01(positive, target), target)


def test_an_ack_split_across_tcp_segments_is_assembled(
    raw_peer: RawPeer, positive: ResultNotice
) -> None:
    control_id = message_control_id(positive)
    ack = frame(f"MSH|^~\\&|RIS|H|AIFI|X|20250301||ACK^R01^ACK|9|P|2.5\rMSA|AA|{control_id}\r")
    pieces = [ack[:1], ack[1:7], ack[7:30], ack[30:-1], ack[-1:]]

    def answer_in_pieces(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        read_block(conn)
        for piece in pieces:
            conn.sendall(piece)

    target = endpoint(raw_peer(answer_in_pieces), retries=0)
    result = send_mllp(build_oru_r01(positive, target), target)
    assert (result.code, result.control_id) == ("AA", control_id)


def test_a_message_split_across_tcp_segments_reaches_hl7apys_server(
    hl7_listener: Hl7Listener, positive: ResultNotice
) -> None:
    """The other direction: hl7apy's server assembles a block sent in pieces."""
    message = build_oru_r01(positive, endpoint(hl7_listener.port))
    data = frame(str(message.to_er7()) + "\r")
    with socket.create_connection(("127.0.0.1", hl7_listener.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(data), 97):
            sock.sendall(data[start : start + 97])
        answer = read_block(sock)
    assert f"MSA|AA|{message_control_id(positive)}".encode() in answer
    got = hl7_listener.received.get(timeout=5)
    assert got.message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"


# a standing connection (keep_open) ----------------------------------------------------------


def notices(count: int) -> list[Message]:
    target = endpoint(1)
    return [build_oru_r01(make_notice(make_summary(TriageFlag.NEGATIVE), job=f"job-{n}"), target)
            for n in range(count)]  # fmt: skip


def until_readable(standing: StandingConnection) -> None:
    """Wait (on the socket, not the clock) until what the receiver did reached the sender."""
    # The test waits for the kernel to have it; nothing but a test needs the socket.
    sock = standing._sock
    assert sock is not None
    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "the receiver's close or bytes never arrived"


def test_kept_open_every_message_goes_over_one_connection_in_order(raw_peer: RawPeer) -> None:
    """Interface engines that expect a standing connection get one; without `keep_open`,
    each message has a connection of its own, as before."""
    receiver = StandingReceiver()
    target = endpoint(raw_peer(receiver), keep_open=True)
    messages = notices(3)
    standing = StandingConnection(target)
    for message in messages:
        assert send_mllp(message, target, standing).accepted
    assert receiver.connections == [[control_id_of(m) for m in messages]]
    assert standing.opened == 1
    standing.close()
    assert receiver.sender_closed.wait(timeout=30)  # the gateway closes it as it stops

    each_its_own = StandingReceiver()
    per_message = endpoint(raw_peer(each_its_own))
    for message in messages:
        send_mllp(message, per_message)
    assert each_its_own.connections == [[control_id_of(m)] for m in messages]


def test_a_connection_the_receiver_closed_while_idle_is_replaced_before_sending(
    raw_peer: RawPeer,
) -> None:
    """A receiver closing an idle connection costs no attempt: with none to spare, the next
    message still goes, once, over a new connection."""
    receiver = StandingReceiver(after=lambda conn, taken: False)  # closes after each message
    target = endpoint(raw_peer(receiver), keep_open=True, retries=0)
    first, second = notices(2)
    standing = StandingConnection(target)
    send_mllp(first, target, standing)
    until_readable(standing)
    assert send_mllp(second, target, standing).control_id == control_id_of(second)
    assert receiver.connections == [[control_id_of(first)], [control_id_of(second)]]
    assert standing.opened == 2
    standing.close()


def test_an_answer_nobody_asked_for_is_not_taken_for_the_next_messages(
    raw_peer: RawPeer,
) -> None:
    """A receiver that acknowledges a message twice leaves an ACK waiting on the connection;
    the next message is not sent into it (its ACK would be read first, for another control
    id, and the attempt lost), but over a new connection."""

    first_taken = threading.Event()

    def acknowledge_again(conn: socket.socket, taken: list[str]) -> bool:
        # Once the sender has read the first ACK: sent with it, the two would be read at once
        # and the second dropped with the rest of that read.
        assert first_taken.wait(timeout=30)
        conn.sendall(ack_of(taken[-1]))
        return True

    receiver = StandingReceiver(after=acknowledge_again)
    target = endpoint(raw_peer(receiver), keep_open=True, retries=0)
    first, second = notices(2)
    standing = StandingConnection(target)
    send_mllp(first, target, standing)
    first_taken.set()
    until_readable(standing)
    assert send_mllp(second, target, standing).control_id == control_id_of(second)
    assert receiver.connections == [[control_id_of(first)], [control_id_of(second)]]
    standing.close()


def test_a_kept_connection_that_fails_an_attempt_is_closed_and_the_next_connects_anew(
    raw_peer: RawPeer,
) -> None:
    """After an ACK for another message the stream is out of step: that connection is given
    up, and the resend goes over a new one."""
    answered: list[int] = []

    def wrong_first(conn: socket.socket) -> None:
        answered.append(len(answered))
        decoder = FrameDecoder()
        while chunk := conn.recv(65536):
            for block in decoder.feed(chunk):
                conn.sendall(ack_of("SOMEONE-ELSE" if len(answered) == 1 else control_id_in(block)))

    target = endpoint(raw_peer(wrong_first), keep_open=True, retries=1)
    [message] = notices(1)
    standing = StandingConnection(target)
    assert send_mllp(message, target, standing).control_id == control_id_of(message)
    assert (len(answered), standing.opened) == (2, 2)
    standing.close()


def test_a_late_second_ack_of_the_message_before_is_skipped_not_taken(raw_peer: RawPeer) -> None:
    """A receiver acknowledging a message twice, the second time late (after the next message
    left): that ACK is skipped, and the next message's own is taken, with no attempt spent.
    Taken for the next message's answer, it had that message sent twice."""

    connections: list[list[str]] = []

    def late_duplicate(conn: socket.socket) -> None:
        taken: list[str] = []
        connections.append(taken)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    taken.append(control_id_in(block))
                    if len(taken) == 2:
                        conn.sendall(ack_of(taken[0]))
                    conn.sendall(ack_of(taken[-1]))

    target = endpoint(raw_peer(late_duplicate), keep_open=True, retries=0)
    first, second = notices(2)
    standing = StandingConnection(target)
    send_mllp(first, target, standing)
    assert send_mllp(second, target, standing).control_id == control_id_of(second)
    standing.close()
    assert connections == [[control_id_of(first), control_id_of(second)]]


def test_a_half_answer_then_silence_drops_the_connection_and_the_next_message_is_clean(
    raw_peer: RawPeer,
) -> None:
    """An attempt timed out with half an ACK read: the connection is given up, so the rest of
    that ACK never reaches the next message."""
    connections: list[list[str]] = []

    def half_then_stall(conn: socket.socket) -> None:
        taken: list[str] = []
        connections.append(taken)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    taken.append(control_id_in(block))
                    answer = ack_of(taken[-1])
                    if len(connections) == 1:
                        conn.sendall(answer[:20])
                        while conn.recv(65536):  # until the sender gives the connection up
                            pass
                        conn.sendall(answer[20:])
                        return
                    conn.sendall(answer)

    target = endpoint(raw_peer(half_then_stall), keep_open=True, retries=1, timeout_seconds=0.5)
    first, second = notices(2)
    standing = StandingConnection(target)
    assert send_mllp(first, target, standing).control_id == control_id_of(first)
    assert send_mllp(second, target, standing).control_id == control_id_of(second)
    standing.close()
    assert standing.opened == 2
    assert connections == [[control_id_of(first)], [control_id_of(first), control_id_of(second)]]


def test_two_threads_at_once_share_the_connection_and_each_gets_its_own_answer(
    raw_peer: RawPeer,
) -> None:
    """The gateway's STAT and routine notice threads send at once over the one connection."""
    receiver = StandingReceiver()
    target = endpoint(raw_peer(receiver), keep_open=True, retries=0)
    standing = StandingConnection(target)
    messages = notices(40)
    lanes = [messages[::2], messages[1::2]]
    answers: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def lane(n: int) -> None:
        start.wait()
        for message in lanes[n]:
            answers[n].append(send_mllp(message, target, standing).control_id)

    threads = [threading.Thread(target=lane, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    standing.close()
    assert answers == [[control_id_of(m) for m in lane] for lane in lanes]
    assert standing.opened == 1 and len(receiver.connections) == 1
    assert sorted(receiver.connections[0]) == sorted(control_id_of(m) for m in messages)


def failing_on_a_lane(
    message: Message, target: Hl7Endpoint, standing: StandingConnection
) -> tuple[threading.Thread, list[DeliveryFailed]]:
    """`message` sent on a thread of its own, as a notice lane sends, expected to fail: the
    thread, started, and the list its failure lands in."""
    failed: list[DeliveryFailed] = []

    def send() -> None:
        with pytest.raises(DeliveryFailed) as caught:
            send_mllp(message, target, standing)
        failed.append(caught.value)

    lane = threading.Thread(target=send, daemon=True)
    lane.start()
    return lane, failed


def test_a_stat_message_goes_before_a_routine_ones_next_attempt(raw_peer: RawPeer) -> None:
    """An attempt has the connection to itself, its retry pauses do not, and a STAT attempt
    waiting goes before a routine one: a STAT notice behind a routine attempt goes as soon as
    that attempt fails, before its next attempt, even with no pause between them."""
    routine, stat = notices(2)
    turns = WatchedTurns()
    receiver = HangsUpOn(control_id_of(routine), turns)
    target = endpoint(raw_peer(receiver), keep_open=True, retries=1,
                      retry_backoff_seconds=0.0)  # fmt: skip
    standing = StandingConnection(target)
    standing._turns = turns
    routine_lane, failed = failing_on_a_lane(routine, target, standing)
    assert receiver.in_flight.wait(timeout=30)  # the routine attempt has the connection
    assert send_mllp(stat, target, standing, urgent=True).control_id == control_id_of(stat)
    routine_lane.join(timeout=60)
    standing.close()
    assert failed, "the routine notice's attempts did not fail as the receiver hung up"
    assert not receiver.nobody_waited
    assert receiver.order == [control_id_of(routine), control_id_of(stat), control_id_of(routine)]


class PausingConnection(StandingConnection):
    """A standing connection that tells when a send begins its retry pause."""

    def __init__(self, target: Hl7Endpoint) -> None:
        super().__init__(target)
        self.pausing = threading.Event()

    def pause(self, seconds: float) -> None:
        self.pausing.set()
        super().pause(seconds)


def stopped_in_its_pause(
    message: Message, target: Hl7Endpoint
) -> tuple[DeliveryFailed, PausingConnection]:
    """`message` sent on a lane of its own until its first retry pause begins, when the
    gateway stops (closes the connection): how it failed, at once, and the connection."""
    standing = PausingConnection(target)
    sending, failed = failing_on_a_lane(message, target, standing)
    assert standing.pausing.wait(timeout=30)  # the first attempt failed; the pause began
    standing.close()
    sending.join(timeout=30)
    assert not sending.is_alive(), "the send slept out its retry pause after the stop"
    [failure] = failed
    return failure, standing


def test_a_send_in_its_retry_pause_fails_at_once_when_the_gateway_stops(
    raw_peer: RawPeer,
) -> None:
    """The gateway stopping closes the connection: a routine notice pausing before its next
    attempt fails then, not after the pause, saying what its attempts met and that the stop
    cut it short (its notice is tried again after the restart)."""
    message = notices(1)[0]
    turns = WatchedTurns()
    receiver = HangsUpOn(control_id_of(message), turns)
    turns.someone_waits.set()  # the receiver hangs up at once
    target = endpoint(raw_peer(receiver), keep_open=True, retries=3,
                      retry_backoff_seconds=60.0)  # fmt: skip
    failed, standing = stopped_in_its_pause(message, target)
    assert str(failed) == (
        f"HL7 message {control_id_of(message)} to 127.0.0.1:{target.port}: no acknowledgement "
        "after 1 attempt(s) (the receiver closed the connection before acknowledging), then "
        "the standing connection was closed as the gateway stopped"
    )
    assert failed.stopped and failed.sent and not failed.unreached
    assert standing.opened == 1 and receiver.order == [control_id_of(message)]


def test_a_send_refused_until_the_stop_never_left_the_gateway(closed_port: int) -> None:
    """Every attempt refused, then the stop: the failure says so, and that the message never
    left (the notice is then not disclosed as sent)."""
    message = notices(1)[0]
    target = endpoint(closed_port, keep_open=True, retries=3, retry_backoff_seconds=60.0)
    failed, _ = stopped_in_its_pause(message, target)
    assert str(failed) == (
        f"HL7 message {control_id_of(message)} to 127.0.0.1:{closed_port}: no acknowledgement "
        "after 1 attempt(s) (connection refused (is the receiver listening?)), then the "
        "standing connection was closed as the gateway stopped"
    )
    assert failed.stopped and not failed.sent


def test_a_stat_waiter_cut_short_lets_the_routine_ones_behind_it_go() -> None:
    """A STAT send leaving its wait for the connection by an exception (the thread
    interrupted) wakes the routine sends it held back: none sleeps on with the connection
    free."""
    standing = StandingConnection(endpoint(1, keep_open=True))
    turns = InterruptedStatTurns()
    standing._turns = turns
    routine_went = threading.Event()
    stat_ended: list[BaseException] = []

    def stat() -> None:
        try:
            with standing.wanted(urgent=True), standing.turn(urgent=True):
                pass
        except Interrupted as exc:
            stat_ended.append(exc)

    def routine() -> None:
        with standing.turn():
            routine_went.set()

    with standing.turn():  # an attempt in flight
        stat_lane = threading.Thread(target=stat, daemon=True)
        turns.stat_thread = stat_lane
        stat_lane.start()
        assert turns.stat_waits.wait(timeout=30)
        routine_lane = threading.Thread(target=routine, daemon=True)
        routine_lane.start()
        assert turns.routine_waits.wait(timeout=30)
    stat_lane.join(timeout=30)
    routine_lane.join(timeout=30)
    assert stat_ended and not stat_lane.is_alive()
    assert routine_went.is_set() and not routine_lane.is_alive()
    assert (standing._busy, standing._urgent_sends) == (False, 0)


class Interrupted(BaseException):
    """Stands for an asynchronous exception (KeyboardInterrupt) in a wait for the connection."""


class InterruptedStatTurns(threading.Condition):
    """The STAT waiter, once woken, is interrupted, but only after the routine waiter has
    looked (seeing a STAT attempt waiting) and gone back to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.stat_thread: threading.Thread | None = None
        self.stat_waits = threading.Event()
        self.routine_waits = threading.Event()
        self.routine_waits_again = threading.Event()
        self._routine_waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self.stat_thread:
            self.stat_waits.set()
            super().wait(timeout)
            while not self.routine_waits_again.is_set():
                super().wait()
            raise Interrupted
        self._routine_waits += 1
        (self.routine_waits if self._routine_waits == 1 else self.routine_waits_again).set()
        if self._routine_waits == 2:
            self.notify_all()  # lets the interruption go on
        return super().wait(timeout)


def test_a_closed_standing_connection_opens_no_other(raw_peer: RawPeer) -> None:
    """Once the gateway closed it as it stops, a send still waiting for its turn fails (its
    notice is tried again after the restart); nothing opens a connection nobody would close."""
    receiver = StandingReceiver()
    target = endpoint(raw_peer(receiver), keep_open=True, retries=0)
    first, second = notices(2)
    standing = StandingConnection(target)
    send_mllp(first, target, standing)
    standing.close()
    with pytest.raises(DeliveryFailed) as caught:
        send_mllp(second, target, standing)
    assert str(caught.value) == (
        f"HL7 message {control_id_of(second)} to 127.0.0.1:{target.port}: not sent: the "
        "standing connection was closed as the gateway stopped"
    )
    assert caught.value.stopped
    assert standing.opened == 1
    assert receiver.sender_closed.wait(timeout=30)
    assert receiver.connections == [[control_id_of(first)]]


def test_a_receiver_gone_silent_then_refusing_is_unreached(raw_peer: RawPeer) -> None:
    """A receiver host gone without closing the connection, and refusing new ones: the
    attempt on the old connection times out, the others are refused. The failure says
    `unreached`, as sent per message, so the gateway checks the receiver's connection and
    sees it back."""
    answered = threading.Event()
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    held: list[socket.socket] = []

    def answer_once_then_go_silent() -> None:
        conn, _ = listening.accept()
        held.append(conn)
        block = read_block(conn)
        conn.sendall(ack_of(control_id_in(block)))
        answered.set()

    serving = threading.Thread(target=answer_once_then_go_silent)
    serving.start()
    target = endpoint(int(listening.getsockname()[1]), keep_open=True, retries=1,
                      timeout_seconds=0.5, retry_backoff_seconds=0.0)  # fmt: skip
    first, second = notices(2)
    standing = StandingConnection(target)
    send_mllp(first, target, standing)
    assert answered.wait(timeout=30)
    serving.join(timeout=30)
    listening.close()  # new connections refused; the old one open and silent
    with pytest.raises(DeliveryFailed, match="connection refused") as caught:
        send_mllp(second, target, standing)
    standing.close()
    for conn in held:
        conn.close()
    assert caught.value.unreached
    assert caught.value.sent  # over the old connection, which the receiver may have read


def test_a_message_refused_for_now_and_sent_again_takes_its_new_answer(raw_peer: RawPeer) -> None:
    """A notice the receiver answered AR goes again later with the same control id, over the
    same connection: its answer is taken, not skipped as a second ACK of the first send."""
    said: list[str] = []

    def refuse_once(conn: socket.socket) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    control_id = control_id_in(block)
                    code = "AA" if control_id in said else "AR"
                    said.append(control_id)
                    conn.sendall(ack_of(control_id).replace(b"MSA|AA|", f"MSA|{code}|".encode()))

    target = endpoint(raw_peer(refuse_once), keep_open=True, retries=0, timeout_seconds=5.0)
    [message] = notices(1)
    standing = StandingConnection(target)
    with pytest.raises(Hl7Rejected, match="AR"):
        send_mllp(message, target, standing)
    assert send_mllp(message, target, standing).code == "AA"
    standing.close()
    assert standing.opened == 1 and said == [control_id_of(message)] * 2


@pytest.mark.parametrize("keep_open", [False, True])
def test_the_acknowledgement_has_its_own_timeout_after_a_slow_connection(
    monkeypatch: pytest.MonkeyPatch, keep_open: bool
) -> None:
    """A RIS host name whose first address (IPv6 with no route, say) took the whole connect
    timeout before its second one connected: the ACK over that connection still has its own
    timeout, as HTTP's read timeout has, rather than none left. The clock the sender reads is
    moved on by the timeout as the connection is made; the receiver is real."""
    clock = [1000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0])
    real_connect = mllp_connections.connect

    def first_address_timed_out(target: Hl7Endpoint) -> socket.socket:
        clock[0] += target.timeout_seconds
        return real_connect(target)

    monkeypatch.setattr(mllp, "time", fake_time)
    monkeypatch.setattr(mllp_connections, "connect", first_address_timed_out)
    with Hl7Listener() as ris:
        target = endpoint(ris.port, retries=0, keep_open=keep_open)
        standing = StandingConnection(target) if keep_open else None
        try:
            ack = send_mllp(notices(1)[0], target, standing)
        finally:
            if standing is not None:
                standing.close()
        assert ack.accepted and ris.received.get(timeout=5)


class FailsBothFirstAttempts:
    """R's first attempt: held until a STAT sender waits, then hung up. S's first attempt:
    hung up at once. The rest: AA."""

    def __init__(self, routine: str, stat: str, turns: WatchedTurns) -> None:
        self.routine, self.stat, self.turns = routine, stat, turns
        self.order: list[str] = []
        self.routine_in_flight = threading.Event()

    def __call__(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    cid = control_id_in(block)
                    self.order.append(cid)
                    seen = self.order.count(cid)
                    if cid == self.routine and seen == 1:
                        self.routine_in_flight.set()
                        self.turns.someone_waits.wait(timeout=30)
                        return
                    if cid == self.stat and seen == 1:
                        return
                    conn.sendall(ack_of(cid))


def test_a_stat_notice_retrying_never_waits_for_a_routine_notices_next_attempt(
    raw_peer: RawPeer,
) -> None:
    """On a standing connection a routine attempt fails as a STAT notice comes, and the STAT
    notice's own first attempt fails too. Through the STAT notice's retry pause no routine
    attempt starts, though the routine one's pause, begun earlier, is over first: the
    receiver sees the STAT notice twice before the routine one again."""
    routine, stat = notices(2)
    turns = WatchedTurns()
    receiver = FailsBothFirstAttempts(control_id_of(routine), control_id_of(stat), turns)
    target = endpoint(raw_peer(receiver), keep_open=True, retries=1,
                      retry_backoff_seconds=0.2)  # fmt: skip
    standing = StandingConnection(target)
    standing._turns = turns
    ok: list[str] = []

    def routine_send() -> None:
        ok.append(send_mllp(routine, target, standing).code)

    lane = threading.Thread(target=routine_send, daemon=True)
    lane.start()
    assert receiver.routine_in_flight.wait(timeout=30)
    ack = send_mllp(stat, target, standing, urgent=True)
    lane.join(timeout=30)
    standing.close()
    assert ack.accepted and ok == ["AA"]
    r, s = control_id_of(routine), control_id_of(stat)
    assert receiver.order == [r, s, s, r]
