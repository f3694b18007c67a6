"""DICOM networking for the gateway: a C-STORE SCP that streams to disk, and a C-STORE SCU.

Both set TCP_NODELAY: without it Nagle's algorithm holds back the small PDUs of each C-STORE
and caps a transfer near 20 instances/s.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

#: Transfer syntaxes the SCP accepts; compressed pixel data is kept as it came.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still seen)
]

# Received datasets go to a file as they arrive, so memory does not grow with their size.
_config.STORE_RECV_CHUNKED_DATASET = True


class ReceivedDataSet:
    """The file a C-STORE data set is written into as it arrives, in the receiving AE's own
    `incoming` folder rather than the system's temporary folder (pynetdicom has no option).

    The instance is identifiable until the gateway pseudonymises it, so it stays in the
    gateway's own folder (mode 0700, cleared at start) rather than a shared /tmp that nothing
    clears after a crash; and the spool is on the same file system, so taking it in is a
    rename. Where /tmp is a tmpfs (Debian 13's default) each instance was copied from memory
    to the spool, and a /tmp smaller than a study refused it while the spool had room.

    A disk that fills up while the data set arrives does not abort the association (pynetdicom
    would): the rest is read and dropped, `failed` says why, and the gateway answers that
    instance with A700 ("Out of Resources") while the sender may go on.
    """

    def __init__(self, folder: Path | None) -> None:
        self.failed: OSError | None = None
        self._file: Any = None
        try:
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (pynetdicom closes it)
                delete=False, mode="wb", suffix=".dcm", dir=folder
            )
            self.name = str(self._file.name)
            self._writer = self._file.file  # its own file object: no wrapper on every write
        except OSError as exc:
            self.failed = exc
            # A name no file has: pynetdicom removes the file by its name once handled.
            self.name = str((folder or Path(tempfile.gettempdir())) / f".unwritten-{id(self)}")

    @property
    def file(self) -> ReceivedDataSet:
        """What pynetdicom flushes after each fragment."""
        return self

    def write(self, data: bytes) -> int:
        if self.failed is None:
            try:
                self._writer.write(data)
            except OSError as exc:
                self.failed = exc
        return len(data)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self._writer.flush()
            except OSError as exc:
                self.failed = exc

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.failed = self.failed or exc


def _received_data_set_file(*_args: Any, **_kwargs: Any) -> ReceivedDataSet:
    """pynetdicom's NamedTemporaryFile for a received data set (it asks for delete=False,
    mode "wb", suffix ".dcm", as this always gives). Decoding runs on the association's DUL
    thread, which names the association and so the AE that receives."""
    association = getattr(threading.current_thread(), "assoc", None)
    return ReceivedDataSet(getattr(getattr(association, "ae", None), "incoming", None))


dimse_messages.NamedTemporaryFile = _received_data_set_file  # type: ignore[assignment]


def unwritten(event: evt.Event) -> OSError | None:
    """Why the data set of a C-STORE request could not be written down, if it could not."""
    received = getattr(event.request, "_dataset_file", None)
    return received.failed if isinstance(received, ReceivedDataSet) else None


# Files are sent as stored, in chunks, without decoding (needs an exactly matching context).
_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger(__name__)


def _no_delay(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PollingSocket(AssociationSocket):
    """Asks whether data came with poll(), which watches any descriptor.

    pynetdicom asks with select(), which cannot watch a descriptor numbered 1,024 or above
    (FD_SETSIZE): it then takes the ValueError for a closed connection, and every association
    of a process with that many files open is aborted as it begins.
    """

    @property
    def ready(self) -> bool:
        if self.socket is None or self._is_connected is False:
            return False
        try:
            poller = select.poll()
            poller.register(self.socket, select.POLLIN)
            events = poller.poll(0)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # the transport connection closed, as pynetdicom's
            return False
        if isinstance(self.socket, ssl.SSLSocket):  # data it holds decrypted already
            return bool(events) or bool(self.socket.pending())
        return bool(events)


class WholeReadSocket(PollingSocket):
    """Reads a PDU in as few system calls as the kernel allows.

    pynetdicom reads 4 KiB per call and grows a bytearray, about 130 calls for each 512 KiB
    CT slice; reading straight into one buffer of the PDU's length saves a quarter of the
    receive time.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        raw = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            count = raw.recv_into(view[read:], nr_bytes - read)
            if not count:  # connection broken: return what came, as pynetdicom does
                del view
                return buffer[:read]
            read += count
        return buffer


class PromptAssociation(Association):
    """An association whose reactor wakes promptly and never takes a response meant for a send.

    pynetdicom's reactor sleeps 1 ms before every look at its message queue, which adds
    0.5-1 ms to every C-STORE an acceptor receives. As acceptor this reactor waits on the
    queue itself (up to 1 ms, so that release, abort and the network timeout are still noticed
    as promptly). As requestor it sleeps as pynetdicom's does: a ``send_c_store`` waits on the
    same queue, and a second waiter could take the wake-up meant for it.

    pynetdicom pauses its reactor while a ``send_*`` method waits for its response, but the
    pause has a gap: a reactor that has just passed its checkpoint when the send starts still
    looks at the queue, and if the response has arrived by then it takes it ("Received
    unexpected C-STORE service message"). The send then waits out the DIMSE timeout and the
    association is aborted. A reactor delayed by a busy machine hits the gap, which is how a
    result delivery to the PACS stalled for the DIMSE timeout. This reactor looks again after
    its checkpoint and leaves the queue alone once a send has begun. Otherwise it does what
    pynetdicom's does, in the same order.
    """

    def _run_reactor(self) -> None:
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            if self.is_acceptor:
                with messages.not_empty:
                    if not messages._qsize():
                        messages.not_empty.wait(REACTOR_WAIT_SECONDS)
            else:
                time.sleep(REACTOR_WAIT_SECONDS)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            # A send that cleared the checkpoint after the wait above saw the reactor paused
            # and owns the next message; a send that clears it from here on waits for the
            # next pause, so looking now is safe.
            if self._reactor_checkpoint.is_set():
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                peer = self.acceptor if self.is_requestor else self.requestor
                log.error(
                    "network timeout reached: association with %s:%s aborted",
                    peer.address,
                    peer.port,
                )
                self.abort()
                self.kill()
                return


#: Longest the reactor waits for a message before it checks for release, abort and timeouts.
REACTOR_WAIT_SECONDS = 0.001


class PromptRequestHandler(RequestHandler):
    """Hands each accepted connection to a :class:`PromptAssociation` reading whole PDUs."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = PromptAssociation
        connection = cast(AssociationSocket, assoc.dul.socket)
        connection.__class__ = WholeReadSocket
        _no_delay(connection.socket)
        return assoc


class NoDelayServer(ThreadedAssociationServer):
    """The gateway's SCP server: TCP_NODELAY and prompt acceptors on every connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", PromptRequestHandler)
        super().__init__(*args, **kwargs)


class NoDelayAE(AE):
    """An AE whose outgoing associations set TCP_NODELAY (pynetdicom offers no option for it)
    and run a :class:`PromptAssociation` reactor, so that no response is lost to it."""

    #: Where data sets this AE receives are written as they arrive; None: the system's
    #: temporary folder, as pynetdicom has it (see :func:`_received_data_set_file`).
    incoming: Path | None = None

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
        assoc.__class__ = PromptAssociation
        sock = super()._create_socket(assoc, address, tls_args)
        sock.__class__ = PollingSocket
        _no_delay(getattr(sock, "socket", None))
        return sock


def storage_scp_ae(ae_title: str, incoming: Path | None = None) -> NoDelayAE:
    """An AE that accepts Verification and every storage SOP class in the common syntaxes,
    writing what it receives into `incoming` as it arrives."""
    ae = NoDelayAE(ae_title=ae_title)
    ae.incoming = incoming
    ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def start_scp(
    ae: AE, host: str, port: int, handlers: Sequence[tuple[Any, Any]]
) -> ThreadedAssociationServer:
    """Start a non-blocking SCP on `host:port` with TCP_NODELAY on every accepted connection."""
    server = ae.make_server((host, port), evt_handlers=list(handlers), server_class=NoDelayServer)
    ae._servers.append(server)  # so that ae.shutdown() and server.shutdown() find it
    thread = threading.Thread(target=server.serve_forever, name=f"scp-{port}", daemon=True)
    thread.start()
    return server


#: Seconds pynetdicom's DUL reactor sleeps between polls while an association is open. Its
#: default (1 ms) caps ingest near 280 instances/s; 0.1 ms reaches about 320/s with fsync, and
#: costs CPU only while a modality is sending.
DUL_POLL_SECONDS = 0.0001


def tighten_polling(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: poll the new association's socket more often."""
    event.assoc.dul._run_loop_delay = DUL_POLL_SECONDS


def handle_echo(_event: evt.Event) -> int:
    return 0x0000


@dataclass(frozen=True)
class StoreOutcome:
    path: Path
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status in (0x0000, 0xB000, 0xB006, 0xB007)


def send_files(
    paths: Iterable[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "AIFI_GW",
    *,
    timeout: float = 30.0,
) -> list[StoreOutcome]:
    """C-STORE files in one association, each in its own stored transfer syntax (not decoded)."""
    files = list(paths)
    headers = {
        path: pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        for path in files
    }
    contexts = sorted(
        {(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers.values()}
    )
    if len(contexts) > 128:
        raise ValueError("more than 128 SOP class / transfer syntax pairs in one send")
    ae = NoDelayAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        reason = "association rejected, aborted or never connected"
        return [StoreOutcome(path, None, f"{called_ae}@{host}:{port}: {reason}") for path in files]
    outcomes = []
    try:
        for path in files:
            try:
                status = assoc.send_c_store(path)
            except (OSError, ValueError, RuntimeError) as exc:
                outcomes.append(StoreOutcome(path, None, f"{type(exc).__name__}: {exc}"))
                continue
            code = int(status.Status) if status and "Status" in status else None
            error = (
                None
                if code is not None and code in (0, 0xB000, 0xB006, 0xB007)
                else (f"C-STORE status 0x{code:04X}" if code is not None else "no C-STORE response")
            )
            outcomes.append(StoreOutcome(path, code, error))
    finally:
        assoc.release()
    return outcomes


def echo(
    host: str, port: int, called_ae: str, calling_ae: str = "AIFI_GW", *, timeout: float = 10.0
) -> str | None:
    """C-ECHO a DICOM node as the gateway will call it; None when it answered, else why not,
    in the terms its administrator can act on."""
    ae = NoDelayAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_rejected:
        return (
            f"{called_ae}@{host}:{port} rejected the association: does it know the calling "
            f"AE title {calling_ae} (and this host's address)?"
        )
    if not assoc.is_established:
        return f"nothing answered as {called_ae} at {host}:{port} (address, port, firewall?)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or int(status.get("Status", -1)) != 0:
        return f"{called_ae}@{host}:{port} accepted the association but did not answer the echo"
    return None
