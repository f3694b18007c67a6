"""A RIS that is down holds no result back from the PACS: notices are queued and sent on
threads of their own, and only the jobs' acknowledgements wait for them. It costs one notice
its timeout, not every notice: the others hold off the RIS (no try counted, nothing
disclosed, the exporter says it is down), a study run STAT still tries it at once, and once
the RIS is back each notice is sent once and the jobs are acknowledged."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aifi.gateway import notice_queue
from aifi.gateway.config import load_config
from aifi.gateway.job_list import job_statuses
from aifi.gateway.notify import FrameDecoder, frame, outages
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.gateway.service import Gateway
from gateway.test_refused_results import pacs_instances, studies
from support.national import National, gateway_config, samples
from support.peers import OrthancPeer, free_port, storescu

pytestmark = pytest.mark.peer


class SilentRis:
    """A RIS that takes connections and never acknowledges (hung after a restart, say):
    each notice tried on it costs the sender its whole timeout, until it is `up` and
    answers AA. Counts the connections. With `hang_up`, it closes each connection at once
    while down instead (a RIS whose interface is restarting), so a notice fails without
    waiting for its timeout. Without `listening`, its port refuses connections until
    `listen()` (a RIS whose host is up and its interface not yet started). `messages` are
    those it acknowledged; `empty` counts connections closed with nothing sent."""

    def __init__(self, hang_up: bool = False, listening: bool = True) -> None:
        self.hang_up = hang_up
        self.connections = self.empty = 0
        self.messages: list[str] = []
        self.up = threading.Event()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        if listening:
            self.listen()

    def listen(self) -> None:
        self._server.listen(8)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.up.is_set():
                    self._acknowledge(conn)
                elif self.hang_up:
                    continue
                while conn.recv(65536):  # until the sender gives up, or is done, and hangs up
                    pass

    def _acknowledge(self, conn: socket.socket) -> None:
        decoder, blocks = FrameDecoder(), []
        while not blocks:
            chunk = conn.recv(65536)
            if not chunk:
                self.empty += 1
                return
            blocks = decoder.feed(chunk)
        self.messages.append(blocks[0].decode())
        control = blocks[0].decode().split("\r")[0].split("|")[9]
        header = "MSH|^~\\&|RIS|H|AIFI|H|20250301||ACK^R01^ACK"
        conn.sendall(frame(f"{header}|A{control}|T|2.5\rMSA|AA|{control}\r"))

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)


@pytest.fixture
def silent_ris() -> Iterator[SilentRis]:
    ris = SilentRis()
    yield ris
    ris.close()


def configure(
    path: Path,
    ris_port: int,
    hold_off_seconds: float = 600,
    timeout_seconds: float = 1,
    **route: Any,
) -> None:
    """Notices to the RIS at `ris_port`; by default a pause longer than the test, so that no
    routine notice after the first tries the RIS while it is down, and a short wait for an
    acknowledgement, so that a RIS that is silent fails a notice quickly."""
    config = yaml.safe_load(path.read_text())
    config["metrics_port"] = 0
    config["routes"][0].update(route)
    config["notifications"] = {
        "hl7": {
            "host": "127.0.0.1",
            "port": ris_port,
            "processing_id": "T",
            "timeout_seconds": timeout_seconds,
            "retries": 0,
        },
        "hold_off_seconds": hold_off_seconds,
    }
    path.write_text(yaml.safe_dump(config))


def hl7_rows(gateway: Gateway) -> list[dict[str, Any]]:
    rows = [gateway.state.notification_outcomes(int(job["id"])) for job in gateway.jobs()]
    return [row["hl7"] for row in rows if "hl7" in row]


def unacknowledged(national: National) -> int:
    with national.api() as api:
        waiting = api.get("/jobs", params={"acknowledged": "false", "limit": 10}).json()
    return sum(job["state"] == "completed" for job in waiting)


def started(
    national: National, orthanc_factory: Any, tmp_path: Path, ris_port: int, **settings: Any
) -> tuple[Gateway, OrthancPeer, int, Path]:
    """A gateway delivering to a real Orthanc, its notices to the RIS at `ris_port`
    (`configure`'s `settings`): the gateway, the PACS, the gateway's port and its YAML."""
    port = free_port()
    pacs: OrthancPeer = orthanc_factory({"aifi": ("AIFI_GW", port)})
    path = gateway_config(tmp_path, national, port, pacs.dicom_port)
    configure(path, ris_port, **settings)
    gateway = Gateway(load_config(path))
    gateway.start()
    return gateway, pacs, port, path


def settled(gateway: Gateway, jobs: int) -> bool:
    """Every job's results in the PACS and each job's notice tried, or held off, once."""
    states = [job["state"] for job in gateway.jobs()]
    return states == ["delivered"] * jobs and len(hl7_rows(gateway)) == jobs


def send(gateway: Gateway, port: int, studies: list[tuple[list[Path], str]]) -> None:
    """Send the studies one after the other, each once the one before has had its notice
    tried (or held off), so that the notices go in the studies' order."""
    for files, _study in studies:
        expected = len(gateway.jobs()) + 1
        storescu(files, port)
        assert gateway.wait_until(
            lambda n=expected: len(gateway.jobs()) == n and len(hl7_rows(gateway)) == n,
            timeout=120,
        ), gateway.jobs()


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert gateway.metrics is not None
    return samples(httpx.get(gateway.metrics.url, timeout=10).text)


def test_a_ris_down_holds_up_no_result_and_loses_no_notice(
    national: National, orthanc_factory: Any, silent_ris: SilentRis, tmp_path: Path
) -> None:
    sent = studies(tmp_path / "studies", 3)
    gateway, pacs, port, path = started(national, orthanc_factory, tmp_path, silent_ris.port)
    try:
        send(gateway, port, sent)
        assert gateway.wait_until(lambda: settled(gateway, 3), timeout=60), gateway.jobs()
        rows = hl7_rows(gateway)
        entries = [e for e in gateway.disclosures.entries() if e.recipient == "hl7 notice"]
        figures = scrape(gateway)
        listed = job_statuses(gateway.config.workdir / "state.db")  # `aifi gateway-jobs`
    finally:
        gateway.stop()
    filed = {study: pacs_instances(pacs, study) for _files, study in sent}
    # What the engineer is shown: three jobs in the PACS, each waiting for its notice.
    assert [(job.state, job.notices_queued) for job in listed] == [("delivered", 1)] * 3
    assert {job.notices[0].outcome for job in listed} <= {"retrying", "not tried"}
    assert all(job.waiting_for.startswith("its notice") for job in listed)

    # Every job's result is in the PACS while the RIS is down; the exchange's jobs wait.
    assert all(len(instances) == 1 for instances in filed.values()), filed
    assert unacknowledged(national) == 3
    # One notice tried the RIS; the two after it held off, which is no try and sent nothing.
    assert silent_ris.connections == 1
    assert sorted(row["attempts"] for row in rows) == [0, 0, 1]
    for row in rows:
        assert not row["ok"] and row["retryable"]
        if row["attempts"] == 0:
            assert row["detail"].startswith("not tried: the hl7 receiver has failed"), row
            assert "no acknowledgement within 1" in row["detail"]
    assert [entry.outcome for entry in entries] == ["failure"]  # only the try is disclosed
    assert figures[("aifi_gateway_notice_receiver_down", (("channel", "hl7"),))] == 1.0
    assert figures[("aifi_gateway_notice_receiver_down", (("channel", "fhir"),))] == 0.0
    assert figures[("aifi_gateway_notices_queued", (("priority", "routine"),))] == 3.0
    assert figures[("aifi_gateway_notice_queue_age_seconds", (("priority", "routine"),))] > 0

    # The RIS is back (at another address, say): each notice is sent once, from the queue
    # the gateway kept, nothing is filed twice, and the jobs are acknowledged.
    with Hl7Listener() as listener:
        # A RIS that answers gets time to: a late ACK would send a notice again.
        configure(path, listener.port, timeout_seconds=30)
        gateway = Gateway(load_config(path))
        gateway.start()
        try:
            assert gateway.wait_until(lambda: not gateway.notices_queued(), timeout=120)
            assert gateway.wait_until(lambda: not unacknowledged(national), timeout=60)
            rows = hl7_rows(gateway)
        finally:
            gateway.stop()
        received = [listener.received.get(timeout=10) for _ in range(3)]
        assert listener.received.empty()
    assert len({message.message.msh.msh_10.to_er7() for message in received}) == 3
    assert sorted(row["attempts"] for row in rows) == [1, 1, 2]
    assert all(row["ok"] for row in rows)
    assert {study: len(pacs_instances(pacs, study)) for _f, study in sent} == {
        study: 1 for _f, study in sent
    }
    assert silent_ris.connections == 1


def test_a_study_run_stat_tries_a_ris_held_off_and_does_not_wait_for_it(
    national: National, orthanc_factory: Any, silent_ris: SilentRis, tmp_path: Path
) -> None:
    """A study routed STAT whose result is not triage-positive: its notice is a routine
    message, yet it goes on the STAT thread and its first pass tries the RIS held off, and
    the job counts as done for the STAT figures once its result is in the PACS."""
    sent = studies(tmp_path / "studies", 2)
    gateway, _pacs, port, _path = started(
        national, orthanc_factory, tmp_path, silent_ris.port, priority="stat"
    )
    try:
        send(gateway, port, sent)
        assert gateway.wait_until(lambda: settled(gateway, 2), timeout=60), gateway.jobs()
        rows = hl7_rows(gateway)
        figures = scrape(gateway)
    finally:
        gateway.stop()
    # Each notice's first pass tried the RIS, the second though it was held off; their
    # retries hold off, as routine ones do, so that they never hold up a new alert.
    assert silent_ris.connections == 2
    assert [row["stat"] for row in rows] == [0, 0]  # the message itself is routine
    assert figures[("aifi_gateway_notices_queued", (("priority", "stat"),))] == 2.0
    assert figures[("aifi_gateway_stat_waiting_seconds", ())] == 0.0
    # Only the failure that began the outage counts: it spends none of the second's tries.
    assert sorted(row["attempts"] for row in rows) == [0, 1]


def test_once_the_ris_takes_a_notice_the_notices_waiting_go_at_once(
    national: National,
    orthanc_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notices queued while the RIS was down would next be tried in an hour (made long
    here); the RIS takes a new job's notice, and theirs go at once."""
    monkeypatch.setattr(notice_queue, "retry_in", lambda _passes: 3600.0)
    sent = studies(tmp_path / "studies", 3)
    # The RIS hangs up while down, so the wait for an acknowledgement can be long enough for
    # a loaded machine once it answers: a late one would queue its notice again for an hour.
    silent_ris = SilentRis(hang_up=True)
    gateway, _pacs, port, _path = started(
        national,
        orthanc_factory,
        tmp_path,
        silent_ris.port,
        hold_off_seconds=0.2,
        timeout_seconds=30,
    )
    try:
        send(gateway, port, sent[:2])
        assert gateway.notices_queued() == 2
        silent_ris.up.set()
        # The pause is over, so the next notice tries the RIS.
        assert gateway.wait_until(
            lambda: gateway.notifier.outages.holding_off("hl7") is None, timeout=30
        )
        storescu(sent[2][0], port)
        assert gateway.wait_until(
            lambda: len(gateway.jobs()) == 3 and not gateway.notices_queued(), timeout=120
        ), gateway.jobs()
        rows = hl7_rows(gateway)
    finally:
        gateway.stop()
        silent_ris.close()
    assert len(rows) == 3 and all(row["ok"] for row in rows)
    assert gateway.notifier.outages.down() == {}


@pytest.mark.parametrize("priority", ["routine", "stat"])
def test_a_ris_that_refused_connections_is_seen_back_with_no_new_job(
    national: National,
    orthanc_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    priority: str,
) -> None:
    """The RIS's port was closed when the notice was tried, and the notice's retry is an hour
    off (made long here). Once the port takes connections, the gateway's check of it (a
    connection, nothing sent) ends the outage, so the exporter says the RIS is up and the
    notice goes at once, with no other job's notice to try the RIS first. The check is made
    on the routine notices' thread, also when the STAT one met the RIS down; well before
    that thread's idle minute is up."""
    monkeypatch.setattr(notice_queue, "retry_in", lambda _passes: 3600.0)
    monkeypatch.setattr(outages, "CHECKS_APART_SECONDS", 0.5)
    sent = studies(tmp_path / "studies", 1)
    ris = SilentRis(listening=False)
    gateway, pacs, port, _path = started(
        national,
        orthanc_factory,
        tmp_path,
        ris.port,
        hold_off_seconds=0.2,
        timeout_seconds=30,
        priority=priority,
    )
    assert notice_queue.IDLE_SECONDS >= 60
    try:
        send(gateway, port, sent)
        assert gateway.notices_queued() == 1
        down = gateway.notifier.outages.down()["hl7"]
        assert down.unreached and "connection refused" in down.detail
        queued = scrape(gateway)
        assert queued[("aifi_gateway_notice_receiver_down", (("channel", "hl7"),))] == 1
        assert queued[("aifi_gateway_notices_queued", (("priority", priority),))] == 1
        ris.up.set()
        ris.listen()
        assert gateway.wait_until(lambda: not gateway.notices_queued(), timeout=30)
        figures = scrape(gateway)
        rows = hl7_rows(gateway)
    finally:
        gateway.stop()
        ris.close()
    assert figures[("aifi_gateway_notice_receiver_down", (("channel", "hl7"),))] == 0
    assert [row["ok"] for row in rows] == [1]
    assert ris.empty >= 1 and len(ris.messages) == 1  # the check sent nothing; the notice, once
    assert len(pacs_instances(pacs, sent[0][1])) == 1
