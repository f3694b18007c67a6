"""MLLP, the Minimal Lower Layer Protocol: HL7 v2 messages over a TCP connection.

Each message travels in a block ``0x0B <message> 0x1C 0x0D`` and the receiver answers with an
acknowledgement (ACK) in the same framing (HL7 v2 original mode: MSA-1 AA accept, AE error,
AR reject; enhanced mode: CA, CE, CR). TCP may cut a block anywhere, so the reader assembles
blocks from whatever arrives (:class:`FrameDecoder`). The ACK is parsed with hl7apy.

The sender opens one connection per message, or (`keep_open`) holds one open between messages
for interface engines that expect a standing connection (:mod:`.mllp_connections`). It retries
what may pass (refused or dropped connection, no ACK in time) with a doubling backoff; a
negative ACK is not resent here, it is raised for the gateway to record (see
:class:`~aifi.gateway.notify.errors.Hl7Rejected`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from aifi.gateway.notify.errors import DeliveryFailed, Hl7Rejected
from aifi.gateway.notify.mllp_connections import (
    ConnectionPerMessage,
    LineClosed,
    StandingConnection,
)
from aifi.gateway.notify.settings import Hl7Endpoint

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
ENCODING = "utf-8"
#: A frame larger than this is not an acknowledgement: stop reading instead of filling memory.
MAX_FRAME_BYTES = 4 * 1024 * 1024
POSITIVE = frozenset({"AA", "CA"})
_MEANING = {
    "AE": "application error",
    "AR": "application reject",
    "CE": "commit error",
    "CR": "commit reject",
}


class FramingError(ValueError):
    """Bytes that are not an MLLP block (too large, or a block that never ends)."""


def frame(message: str) -> bytes:
    """The MLLP block for one ER7 message (segments ended by carriage returns)."""
    return START_BLOCK + message.encode(ENCODING) + END_BLOCK


class FrameDecoder:
    """Assembles MLLP blocks from chunks as TCP delivers them (a block may span many reads,
    one read may end one block and start the next). Bytes outside a block are dropped."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; returns the payloads of the blocks they completed.

        Raises
        ------
        FramingError
            If a block grows beyond the size limit.
        """
        self._buffer.extend(data)
        blocks: list[bytes] = []
        while True:
            start = self._buffer.find(START_BLOCK)
            if start < 0:
                self._buffer.clear()
                break
            end = self._buffer.find(END_BLOCK, start + 1)
            if end < 0:
                del self._buffer[:start]
                if len(self._buffer) > self._max:
                    raise FramingError(f"MLLP block larger than {self._max} bytes")
                break
            blocks.append(bytes(self._buffer[start + 1 : end]))
            del self._buffer[: end + len(END_BLOCK)]
        return blocks


@dataclass(frozen=True)
class Ack:
    """A parsed acknowledgement: MSA-1 code, MSA-2 the control id it answers, MSA-3 text."""

    code: str
    control_id: str
    text: str
    message: str

    @property
    def accepted(self) -> bool:
        return self.code in POSITIVE


def parse_ack(payload: bytes | str) -> Ack:
    """Parse an ACK (any HL7 v2 version hl7apy knows) and read its MSA segment.

    Raises
    ------
    FramingError
        If the payload is not an HL7 message with an MSA segment.
    """
    text = payload.decode(ENCODING, errors="replace") if isinstance(payload, bytes) else payload
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        ack = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        msa = ack.msa
        code = str(msa.msa_1.to_er7()).strip().upper()
        control_id = str(msa.msa_2.to_er7()).strip()
        detail = str(msa.msa_3.to_er7()).strip()
    except (HL7apyException, AttributeError, IndexError, KeyError, ValueError) as exc:
        raise FramingError(
            f"the answer is not an HL7 acknowledgement with an MSA segment: {exc}"
        ) from exc
    if code not in POSITIVE and code not in _MEANING:
        raise FramingError(f"MSA-1 acknowledgement code {code!r} is not one of AA/AE/AR/CA/CE/CR")
    return Ack(code=code, control_id=control_id, text=detail, message=text)


def control_id_of(message: Message) -> str:
    return str(message.msh.msh_10.to_er7())


def send_mllp(
    message: Message | str,
    endpoint: Hl7Endpoint,
    standing: StandingConnection | None = None,
    *,
    urgent: bool = False,
) -> Ack:
    """Send one HL7 message and return the receiver's positive acknowledgement.

    Tries ``1 + endpoint.retries`` times while the receiver is unreachable, drops the
    connection or sends no ACK within ``endpoint.timeout_seconds`` of the connection (which
    has as long to be made, at each of a host name's addresses in turn), waiting
    ``retry_backoff_seconds`` (doubling) in between; a resend keeps its control id.
    `standing`: send over that connection, kept open (`keep_open`), instead of one of the
    message's own; an `urgent` (STAT) send holds every routine attempt back until it is
    done, its retry pauses too.
    Once the gateway closes that connection (it is stopping), the send fails at once.

    Raises
    ------
    Hl7Rejected
        The receiver answered AE/AR (or CE/CR); not resent.
    DeliveryFailed
        No acknowledgement for the message after every attempt; `unreached` when none of
        them could connect, or reach the receiver over a connection kept open. Or `stopped`:
        the gateway closed the connection kept open as it stopped. `sent` False, either
        way, when no attempt had a connection to send on.
    """
    if isinstance(message, Message):
        control_id, text = control_id_of(message), str(message.to_er7()) + "\r"
    else:
        text = message
        control_id = _control_id_of_text(message)
    framed = frame(text)
    where = f"HL7 message {control_id} to {endpoint.host}:{endpoint.port}"
    line: StandingConnection | ConnectionPerMessage = standing or ConnectionPerMessage(endpoint)
    with line.wanted(urgent):  # a STAT send holds routine attempts back through its pauses
        return _attempts(framed, control_id, where, endpoint, line, urgent)


def _attempts(
    framed: bytes,
    control_id: str,
    where: str,
    endpoint: Hl7Endpoint,
    line: StandingConnection | ConnectionPerMessage,
    urgent: bool,
) -> Ack:
    """Send `framed` until it is acknowledged or the attempts are spent (`send_mllp`)."""
    attempts = endpoint.retries + 1
    problem = "not sent"
    connected = went = False
    for attempt in range(attempts):
        if attempt:
            line.pause(endpoint.retry_backoff_seconds * 2 ** (attempt - 1))
        with line.turn(urgent):
            try:
                sock, new = line.open()
            except LineClosed as exc:
                said = f"not sent: {exc}" if not attempt else (
                    f"no acknowledgement after {attempt} attempt(s) ({problem}), then {exc}"
                )  # fmt: skip
                raise DeliveryFailed("hl7", f"{where}: {said}", stopped=True, sent=went) from exc
            except OSError as exc:
                problem = _describe(exc)
                continue
            # The acknowledgement's own timeout, from the connection on, as HTTP's read
            # timeout is: a host name whose first address took the connect timeout leaves
            # the answer over its second one the whole of it.
            deadline = time.monotonic() + endpoint.timeout_seconds
            went = True  # sent over a connection, or tried to be
            connected = connected or new
            answered = None
            try:
                ack = _acknowledgement(sock, framed, control_id, deadline, endpoint, line)
                connected = True
                answered = ack.control_id if ack.control_id == control_id else None
            except (OSError, FramingError) as exc:
                problem = _describe(exc)
                continue
            finally:
                line.done(sock, answered)
        if answered is None:
            problem = f"the acknowledgement answers control id {ack.control_id!r}"
            continue
        return _accepted(ack, where, control_id)
    raise DeliveryFailed(
        "hl7",
        f"{where}: no acknowledgement after {attempts} attempt(s): {problem}",
        unreached=not connected,
        sent=went,
    )


def _accepted(ack: Ack, where: str, control_id: str) -> Ack:
    """The acknowledgement, if positive; else the receiver's refusal, raised (a connection
    kept open stays: the receiver answered the message it was sent)."""
    if ack.accepted:
        return ack
    raise Hl7Rejected(
        f"{where}: the receiver answered {ack.code} ({_MEANING[ack.code]})"
        + (f": {ack.text}" if ack.text else ""),
        code=ack.code,
        control_id=control_id,
        text=ack.text,
    )


def _control_id_of_text(text: str) -> str:
    try:
        parsed = parse_message(
            text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
        )
        return str(parsed.msh.msh_10.to_er7())
    except HL7apyException as exc:
        raise ValueError(f"not an HL7 v2 message: {exc}") from exc


def _acknowledgement(
    sock: socket.socket,
    framed: bytes,
    control_id: str,
    deadline: float,
    endpoint: Hl7Endpoint,
    line: StandingConnection | ConnectionPerMessage,
) -> Ack:
    """On one connection: send the block (message `control_id`), and read the receiver's
    answer to it. A second acknowledgement of another message the connection carried before
    is skipped; one of this message is its answer, though it was sent before (a notice sent
    again after an AR)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(framed)
    for block in _blocks(sock, deadline, endpoint):
        ack = parse_ack(block)
        if ack.control_id == control_id or not line.answered_before(ack.control_id):
            return ack
        log.info("HL7 receiver %s:%s acknowledged message %s a second time: skipped",
                 endpoint.host, endpoint.port, ack.control_id)  # fmt: skip
    raise AssertionError("unreachable: the blocks end by raising")


def _blocks(sock: socket.socket, deadline: float, endpoint: Hl7Endpoint) -> Iterator[bytes]:
    """The MLLP blocks the receiver sends, as each is whole, until the deadline."""
    decoder = FrameDecoder()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no acknowledgement within {endpoint.timeout_seconds} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise TimeoutError(f"no acknowledgement within {endpoint.timeout_seconds} s") from exc
        if not chunk:
            raise ConnectionError("the receiver closed the connection before acknowledging")
        yield from decoder.feed(chunk)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the receiver listening?)"
    return str(exc) or type(exc).__name__
