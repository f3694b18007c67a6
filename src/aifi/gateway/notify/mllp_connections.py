"""How the gateway's HL7 messages reach the receiver: a connection of each message's own (the
default), or one connection held open between messages (`keep_open`).

Many interface engines expect a sender to keep its connection, take one inbound connection at
a time, or log every connection opened and closed. On one connection MLLP tells
acknowledgements apart only by their order, so an attempt has the connection to itself: one
message in flight at a time, the next message's attempt going as soon as this one has its
answer, failed, or timed out. While a STAT send is under way (its retry pauses too) no routine
attempt starts, so a STAT notice waits at most for the one routine attempt in flight as it
came, normally milliseconds, and never for a routine notice's retry pauses or next attempt.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

from aifi.gateway.notify.settings import Hl7Endpoint

log = logging.getLogger(__name__)

#: A standing connection's keepalive probes (Linux): the first after this long idle, then every
#: `_KEEPALIVE_EVERY` seconds, `_KEEPALIVE_PROBES` unanswered ones ending it. They keep a
#: firewall's or NAT's idle timer from dropping the connection silently, and find a receiver
#: that vanished without closing it, before a message is sent into it.
_KEEPALIVE_IDLE = 60
_KEEPALIVE_EVERY = 10
_KEEPALIVE_PROBES = 3
#: The control ids acknowledged on a standing connection that are remembered: a second
#: acknowledgement of one of them, arriving late, is skipped, not taken for another message's.
_REMEMBERED = 64


class LineClosed(ConnectionError):
    """The gateway closed its standing connection: it is stopping, and the send ends now
    rather than after its retry pauses (the notice is tried again after the restart)."""

    def __init__(self) -> None:
        super().__init__("the standing connection was closed as the gateway stopped")


def connect(endpoint: Hl7Endpoint) -> socket.socket:
    return socket.create_connection(
        (endpoint.host, endpoint.port), timeout=endpoint.timeout_seconds
    )


class ConnectionPerMessage:
    """Each attempt connects anew and closes after its answer (the default)."""

    def __init__(self, endpoint: Hl7Endpoint) -> None:
        self.endpoint = endpoint

    def wanted(self, urgent: bool = False) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def turn(self, urgent: bool = False) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def open(self) -> tuple[socket.socket, bool]:
        """A connection to send on, and whether it is new (it is)."""
        return connect(self.endpoint), True

    def answered_before(self, control_id: str) -> bool:
        return False

    def done(self, sock: socket.socket, answered: str | None) -> None:
        sock.close()


class StandingConnection:
    """One connection to an HL7 receiver, held open between messages (`keep_open`).

    An idle connection the receiver closed, or that holds bytes nobody asked for, is replaced
    before the message is sent (when the receiver's close has arrived by then). One on which
    an attempt failed, or that answered for another message, is closed, and the next attempt
    connects anew. A second acknowledgement of another message this connection carried,
    arriving late, is skipped (`send_mllp`): taken for the next message's answer, it would
    have that message sent twice.
    """

    def __init__(self, endpoint: Hl7Endpoint) -> None:
        self.endpoint = endpoint
        self._sock: socket.socket | None = None
        #: Guards the turn: whether an attempt has the connection, and how many STAT sends
        #: are under way (a routine attempt waits while any is: waiting for the connection,
        #: on it, or in a retry's pause).
        self._turns = threading.Condition()
        self._busy = False
        self._urgent_sends = 0
        self._closed = threading.Event()
        self._answered: deque[str] = deque(maxlen=_REMEMBERED)
        self._where = f"{endpoint.host}:{endpoint.port}"
        #: Connections opened so far; each is logged, so a receiver that keeps closing the
        #: connection shows in the gateway's log.
        self.opened = 0

    @contextlib.contextmanager
    def wanted(self, urgent: bool = False) -> Iterator[None]:
        """A send's claim on the connection, from its first attempt to its last: while an
        `urgent` (STAT) send is under way, waiting, sending or pausing before its retry, no
        routine attempt starts, so a STAT notice never waits for a routine notice's next
        attempt. STAT sends share the connection among themselves, one attempt at a time."""
        if not urgent:
            yield
            return
        with self._turns:
            self._urgent_sends += 1
        try:
            yield
        finally:
            with self._turns:
                self._urgent_sends -= 1
                # Also after a send cut short: routine waiters held back by it look again.
                self._turns.notify_all()

    @contextlib.contextmanager
    def turn(self, urgent: bool = False) -> Iterator[None]:
        """One attempt's turn on the connection: the connection is its alone meanwhile. A
        routine attempt waits while a STAT send is under way (`wanted`)."""
        taken = False
        try:
            with self._turns:
                self._turns.wait_for(lambda: not self._busy and (urgent or not self._urgent_sends))
                self._busy = taken = True
            yield
        finally:
            with self._turns:
                if taken:
                    self._busy = False
                self._turns.notify_all()

    def pause(self, seconds: float) -> None:
        """A retry's pause, cut short when the gateway closes the connection."""
        self._closed.wait(seconds)

    def open(self) -> tuple[socket.socket, bool]:
        """The connection to send on, and whether it is new. Within :meth:`turn`.

        Raises
        ------
        LineClosed
            The gateway closed the connection (it is stopping).
        """
        if self._closed.is_set():
            raise LineClosed()
        if self._sock is not None and not _fit(self._sock):
            log.info("HL7 receiver %s: the standing connection was closed by it, or holds "
                     "bytes nobody asked for: connecting anew", self._where)  # fmt: skip
            self._drop()
        sock, new = self._sock, self._sock is None
        if sock is None:
            sock = connect(self.endpoint)
            try:
                _keep_alive(sock)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self.opened += 1
            log.info("HL7 receiver %s: standing connection opened (%d so far)",
                     self._where, self.opened)  # fmt: skip
        sock.settimeout(self.endpoint.timeout_seconds)  # as a new one's, to send
        return sock, new

    def answered_before(self, control_id: str) -> bool:
        return control_id in self._answered

    def done(self, sock: socket.socket, answered: str | None) -> None:
        """After an attempt: keep the connection if the receiver answered the attempt's
        message (`answered`: its control id), remembering it; else close it (its stream may be
        out of step). Within :meth:`turn`."""
        if answered is None:
            self._drop()
        else:
            self._answered.append(answered)

    def close(self) -> None:
        """Close the connection for good (the gateway stops), once the attempt in flight, if
        any, is over; a send waiting for its turn or in a retry's pause fails at once, and its
        notice is tried again after the restart."""
        self._closed.set()
        with self.turn(urgent=True):
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
            self._answered.clear()


def _fit(sock: socket.socket) -> bool:
    """Whether an idle standing connection can take the next message: still open, with
    nothing waiting to be read (a second acknowledgement of an earlier message, or noise)."""
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
