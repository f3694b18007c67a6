"""MLLP, the Minimal Lower Layer Protocol: HL7 v2 messages over a TCP connection.

Each message travels in a block ``0x0B <message> 0x1C 0x0D`` and the receiver answers with an
acknowledgement (ACK) in the same framing (HL7 v2 original mode: MSA-1 AA accept, AE error,
AR reject; enhanced mode: CA, CE, CR). TCP may cut a block anywhere, so the reader assembles
blocks from whatever arrives (:class:`FrameDecoder`). The ACK is parsed with hl7apy.

The sender opens one connection per message, or (`keep_open`) holds one open between messages
for interface engines that expect a standing connection (:class:`StandingConnection`). It
retries what may pass (refused or dropped connection, no ACK in time) with a doubling backoff;
a negative ACK is not resent here, it is raised for the gateway to record (see
:class:`~aifi.gateway.notify.errors.Hl7Rejected`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from aifi.gateway.notify.errors import DeliveryFailed, Hl7Rejected
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


#: A standing connection's keepalive probes (Linux): the first after this long idle, then every
#: `_KEEPALIVE_EVERY` seconds, `_KEEPALIVE_PROBES` unanswered ones ending it. They keep a
#: firewall's or NAT's idle timer from dropping the connection silently, and find a receiver
#: that vanished without closing it, before a message is sent into it.
_KEEPALIVE_IDLE = 60
_KEEPALIVE_EVERY = 10
_KEEPALIVE_PROBES = 3


class StandingConnection:
    """One connection to an HL7 receiver, held open between messages (`keep_open`).

    Many interface engines expect a sender to keep its connection, or take one inbound
    connection at a time, and log each connection opened and closed per message. Messages go
    over it one at a time, whole (every attempt of one message before the next): MLLP has no
    way to tell two messages' acknowledgements apart on one connection but their order. So a
    STAT notice waits for a routine one being sent, normally milliseconds.

    A connection the receiver closed while idle, or that holds bytes nobody asked for, is
    replaced before the message is sent, not found out by a failed attempt; one that failed
    an attempt, or answered for another message, is closed and the next attempt connects
    anew.
    """

    def __init__(self, endpoint: Hl7Endpoint) -> None:
        self.endpoint = endpoint
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._where = f"{endpoint.host}:{endpoint.port}"
        #: Connections opened so far; each is logged, so a receiver that keeps closing the
        #: connection shows in the gateway's log.
        self.opened = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One message's turn on the connection, all its attempts."""
        with self._lock:
            yield

    def connection(self) -> socket.socket:
        """The open connection, or a new one if there is none fit to send on."""
        if self._sock is not None and not _fit(self._sock):
            log.info("HL7 receiver %s: the standing connection was closed by it, or holds "
                     "bytes nobody asked for: connecting anew", self._where)  # fmt: skip
            self.drop()
        if self._sock is None:
            self._sock = _connect(self.endpoint)
            _keep_alive(self._sock)
            self.opened += 1
            log.info("HL7 receiver %s: standing connection opened (%d so far)",
                     self._where, self.opened)  # fmt: skip
        self._sock.settimeout(self.endpoint.timeout_seconds)  # as a new one's, to send
        return self._sock

    def drop(self) -> None:
        """Close the connection (after a failed attempt: its stream may be out of step)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.drop()


def _fit(sock: socket.socket) -> bool:
    """Whether an idle standing connection can take the next message: still open, with
    nothing waiting to be read (a second acknowledgement of an earlier message, or noise,
    would be read as the next message's answer, and its attempt lost)."""
    try:
        sock.settimeout(0.0)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # b"": the receiver closed it; bytes: something nobody asked for


def _keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", _KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", _KEEPALIVE_EVERY),
        ("TCP_KEEPCNT", _KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _connect(endpoint: Hl7Endpoint) -> socket.socket:
    return socket.create_connection(
        (endpoint.host, endpoint.port), timeout=endpoint.timeout_seconds
    )


def send_mllp(
    message: Message | str, endpoint: Hl7Endpoint, standing: StandingConnection | None = None
) -> Ack:
    """Send one HL7 message and return the receiver's positive acknowledgement.

    Tries ``1 + endpoint.retries`` times while the receiver is unreachable, drops the
    connection or sends no ACK within ``endpoint.timeout_seconds``, waiting
    ``retry_backoff_seconds`` (doubling) in between; a resend keeps its control id.
    `standing`: send over that connection, kept open (`keep_open`), instead of one of the
    message's own.

    Raises
    ------
    Hl7Rejected
        The receiver answered AE/AR (or CE/CR); not resent.
    DeliveryFailed
        No acknowledgement for the message after every attempt; `unreached` when none of
        them could connect.
    """
    if isinstance(message, Message):
        control_id, text = control_id_of(message), str(message.to_er7()) + "\r"
    else:
        text = message
        control_id = _control_id_of_text(message)
    framed = frame(text)
    where = f"HL7 message {control_id} to {endpoint.host}:{endpoint.port}"
    attempts = endpoint.retries + 1
    problem = "not sent"
    connected = False
    with standing.turn() if standing is not None else contextlib.nullcontext():
        for attempt in range(attempts):
            if attempt:
                time.sleep(endpoint.retry_backoff_seconds * 2 ** (attempt - 1))
            deadline = time.monotonic() + endpoint.timeout_seconds
            try:
                sock = standing.connection() if standing is not None else _connect(endpoint)
            except OSError as exc:
                problem = _describe(exc)
                continue
            connected = True
            try:
                with sock if standing is None else contextlib.nullcontext():
                    ack = parse_ack(_exchange(sock, framed, deadline, endpoint))
            except (OSError, FramingError) as exc:
                problem = _describe(exc)
                if standing is not None:
                    standing.drop()
                continue
            if ack.control_id != control_id:
                problem = f"the acknowledgement answers control id {ack.control_id!r}"
                if standing is not None:
                    standing.drop()
                continue
            return _accepted(ack, where, control_id)
    raise DeliveryFailed(
        "hl7",
        f"{where}: no acknowledgement after {attempts} attempt(s): {problem}",
        unreached=not connected,
    )


def _accepted(ack: Ack, where: str, control_id: str) -> Ack:
    """The acknowledgement, if positive; else the receiver's refusal, raised (the connection
    stays fit: the receiver answered the message it was sent)."""
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


def _exchange(sock: socket.socket, framed: bytes, deadline: float, endpoint: Hl7Endpoint) -> bytes:
    """On one connection: send the block, read until one block has come back."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(framed)
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
        blocks = decoder.feed(chunk)
        if blocks:
            return blocks[0]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the receiver listening?)"
    return str(exc) or type(exc).__name__
