"""Fixtures for notification tests: notices for a positive and a negative result, for a job
that brings none and for a STAT job late, and the three loopback receivers (hl7apy's MLLP
server, a FHIR server and a webhook receiver, both FastAPI under uvicorn)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from aifi.gateway.notify import (
    FrameDecoder,
    Hl7Endpoint,
    NotificationSettings,
    Notifier,
    OriginalStudy,
    ResultNotice,
    build_notice,
    frame,
)
from aifi.gateway.notify.outages import Outages
from aifi.gateway.notify.receivers import FhirReceiver, Hl7Listener, WebhookReceiver
from aifi.results.summary import (
    AlgorithmSummary,
    FindingSummary,
    MeasuredValue,
    Priority,
    ResultSummary,
    Triage,
    TriageFlag,
)

WEBHOOK_KEY = b"test-webhook-key"
#: The hospital's own identity of the study, as the vault returns it.
ORIGINAL_STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
ORIGINAL_ATTRIBUTES = {
    "PatientID": "MRN-000123",
    "IssuerOfPatientID": "RIVIERENLAND",
    "PatientName": "Jansen^Anna^Maria^Dr^",
    "PatientBirthDate": "19620314",
    "PatientSex": "F",
    "AccessionNumber": "ACC-2025-0042",
    "StudyDate": "20250301",
    "StudyTime": "101502",
    "StudyInstanceUID": ORIGINAL_STUDY_UID,
}
PSEUDONYM_STUDY_UID = "2.25.1234567890123456789"
RESULT_UIDS = ("2.25.900000000000000000001", "2.25.900000000000000000002")


def make_summary(
    flag: TriageFlag = TriageFlag.POSITIVE,
    *,
    findings: list[FindingSummary] | None = None,
    label: str | None = "reference algorithm, not for clinical use",
) -> ResultSummary:
    default = [
        FindingSummary(
            finding="Hemorrhage",
            finding_code="SCT:50960005",
            site="Brain",
            tracking_id="lesion 1",
            tracking_uid="2.25.5551",
            measurements={
                "Volume": MeasuredValue(value=12.5, unit="mL"),
                "Midline shift": MeasuredValue(value=4.25, unit="mm"),
            },
            evaluations={"Severity": "Severe"},
        ),
        FindingSummary(
            finding="Brain tissue",
            finding_code="SCT:12738006",
            tracking_id="tissue",
            tracking_uid="2.25.5552",
            measurements={"Volume": MeasuredValue(value=1180.0, unit="mL")},
        ),
    ]
    return ResultSummary(
        product_id="aifi-ich",
        product_version="1.2.0",
        study_instance_uid=PSEUDONYM_STUDY_UID,
        algorithm=AlgorithmSummary(name="AIFI ICH", version="1.2.0", manufacturer="AIFI"),
        findings=default if findings is None else findings,
        triage=Triage(flag=flag, priority=Priority.HIGH if flag is TriageFlag.POSITIVE else None),
        label=label,
    )


def make_notice(
    summary: ResultSummary | None = None,
    *,
    job: str = "job-0001",
    attributes: dict[str, str] | None = None,
    after_delay: bool = False,
) -> ResultNotice:
    return build_notice(
        hospital="rivierenland",
        exchange_job_id=job,
        product_id="aifi-ich",
        summary=summary,
        study=OriginalStudy.from_vault(
            ORIGINAL_STUDY_UID, ORIGINAL_ATTRIBUTES if attributes is None else attributes
        ),
        result_sop_instance_uids=RESULT_UIDS,
        completed_at=datetime(2025, 3, 1, 10, 30, 0, tzinfo=UTC),
        after_delay=after_delay,
    )


#: What the gateway says when the job failed at the vendor (its own words, no patient data).
REASON = "the product could not analyse the study"


def make_unavailable(
    reason: str = REASON,
    *,
    job: str = "job-0001",
    attributes: dict[str, str] | None = None,
    stat_study: bool = False,
    after_delay: bool = False,
) -> ResultNotice:
    """The notice that `job` will bring no result: same job, product and study as the result
    notices above, no summary and no result UIDs; `stat_study`: the study was routed STAT;
    `after_delay`: its delay was told before."""
    return _without_result(
        job,
        attributes,
        completed_at=datetime(2025, 3, 1, 10, 45, 0, tzinfo=UTC),
        unavailable=reason,
        stat_study=stat_study,
        after_delay=after_delay,
    )


def _without_result(job: str, attributes: dict[str, str] | None, **said: Any) -> ResultNotice:
    """A notice of the job with no result in it (none will come, or it is late)."""
    return build_notice(
        hospital="rivierenland",
        exchange_job_id=job,
        product_id="aifi-ich",
        product_name="AIFI ICH",
        product_version="1.2.0",
        summary=None,
        study=OriginalStudy.from_vault(
            ORIGINAL_STUDY_UID, ORIGINAL_ATTRIBUTES if attributes is None else attributes
        ),
        **said,
    )


@pytest.fixture
def unavailable() -> ResultNotice:
    return make_unavailable()


#: Why the gateway says a STAT study's result is late (its own words).
WHY = "no result 10 minutes after the study was sent"


def make_delayed(
    why: str = WHY, *, job: str = "job-0001", attributes: dict[str, str] | None = None
) -> ResultNotice:
    """The notice that the result of `job`, a study run STAT, is late: same job, product and
    study as the notices above, no summary and no result UIDs."""
    return _without_result(
        job,
        attributes,
        completed_at=datetime(2025, 3, 1, 10, 20, 0, tzinfo=UTC),
        stat_study=True,
        delayed=why,
    )


@pytest.fixture
def delayed() -> ResultNotice:
    return make_delayed()


@pytest.fixture
def positive() -> ResultNotice:
    return make_notice(make_summary(TriageFlag.POSITIVE))


@pytest.fixture
def negative() -> ResultNotice:
    return make_notice(make_summary(TriageFlag.NEGATIVE), job="job-0002")


@pytest.fixture
def hl7_listener() -> Iterator[Hl7Listener]:
    with Hl7Listener() as listener:
        yield listener


@pytest.fixture
def fhir_receiver() -> Iterator[FhirReceiver]:
    with FhirReceiver() as receiver:
        yield receiver


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_KEY) as receiver:
        yield receiver


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound for the whole test but not listening,
    so no receiver the test starts can be given it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def raw_peer() -> Iterator[Callable[[Callable[[socket.socket], Any]], int]]:
    """Start a one-off TCP peer on loopback that runs `serve(conn)` for each connection it
    accepts (on a thread); returns its port. Lets a test answer in ways no well-behaved
    receiver would: in pieces, with a wrong control id, or not at all."""
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(serve: Callable[[socket.socket], Any]) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)

        def loop() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    serve(conn)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return int(server.getsockname()[1])

    yield start
    for server in servers:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        server.close()
    for thread in threads:
        thread.join(timeout=5)


RawPeer = Callable[[Callable[[socket.socket], Any]], int]


def ack_of(control_id: str) -> bytes:
    return frame(f"MSH|^~\\&|RIS|H|AIFI|X|20250301||ACK^R01^ACK|A{control_id}|P|2.5\r"
                 f"MSA|AA|{control_id}\r")  # fmt: skip


def control_id_in(block: bytes) -> str:
    return block.split(b"\r")[0].split(b"|")[9].decode()


class StandingReceiver:
    """An interface engine that keeps each connection: it answers every message AA on the
    connection it came by, until the sender closes it. It records the control ids each
    connection carried; `after(conn, taken)`, called once a message is answered, may send
    more, or return False to close the connection."""

    def __init__(self, after: Callable[[socket.socket, list[str]], bool] | None = None) -> None:
        self.connections: list[list[str]] = []
        self.sender_closed = threading.Event()
        self._after = after

    def __call__(self, conn: socket.socket) -> None:
        taken: list[str] = []
        self.connections.append(taken)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    taken.append(control_id_in(block))
                    conn.sendall(ack_of(taken[-1]))
                    if self._after is not None and not self._after(conn, taken):
                        return
        self.sender_closed.set()


class WatchedTurns(threading.Condition):
    """A standing connection's turns (`StandingConnection._turns`), telling when a sender has
    to wait for the connection (a STAT sender has by then counted itself among those
    waiting, so that routine ones let it go first)."""

    def __init__(self) -> None:
        super().__init__()
        self.someone_waits = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.someone_waits.set()
        return super().wait(timeout)


class HangsUpOn:
    """A receiver that answers every message AA but one (`control_id`): on that one it waits
    until another sender waits for the connection (`turns`), then hangs up without an answer.
    It records the control ids in the order they came, and `in_flight` is set while that
    message's attempt holds the connection; `nobody_waited` says if none came to wait."""

    def __init__(self, control_id: str, turns: WatchedTurns) -> None:
        self.control_id = control_id
        self.turns = turns
        self.order: list[str] = []
        self.in_flight = threading.Event()
        self.nobody_waited = False

    def __call__(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                for block in decoder.feed(chunk):
                    self.order.append(control_id_in(block))
                    if self.order[-1] == self.control_id:
                        self.in_flight.set()
                        self.nobody_waited |= not self.turns.someone_waits.wait(timeout=30)
                        return  # no ACK
                    conn.sendall(ack_of(self.order[-1]))


class Clock:
    """A clock the test moves: the pauses are minutes long, and no test waits for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hl7_settings(
    port: int, hold_off_seconds: float = 30.0, timeout_seconds: float = 30.0
) -> NotificationSettings:
    """The RIS at `port`. Its peers here answer or hang up at once, so the long wait for an
    acknowledgement costs nothing, and a loaded machine's late ACK is not taken for a RIS
    that is down (the message would be sent again, and the counts be off)."""
    endpoint = Hl7Endpoint(
        host="127.0.0.1",
        port=port,
        timeout_seconds=timeout_seconds,
        retries=1,
        retry_backoff_seconds=0.01,
    )
    return NotificationSettings(hl7=endpoint, hold_off_seconds=hold_off_seconds)


def messages_taken(listener: Hl7Listener) -> list[str]:
    """The control ids of the messages the listener filed, in order."""
    taken = []
    while not listener.received.empty():
        taken.append(str(listener.received.get_nowait().message.msh.msh_10.to_er7()))
    return taken


def routine(job: str) -> ResultNotice:
    return make_notice(make_summary(TriageFlag.NEGATIVE), job=job)


def with_clock(notifier: Notifier, clock: Clock) -> None:
    notifier.outages = Outages(notifier.settings.hold_off_seconds, clock=clock, wall=clock)
