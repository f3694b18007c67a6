"""A RIS that is down costs one job its timeout, not every job: each job's results reach the
PACS at once, the other jobs' routine notices hold off the RIS (no try counted, nothing
disclosed, the exporter says it is down), and once the RIS is back each notice is sent once
and the jobs are acknowledged at the exchange."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aifi.gateway import service
from aifi.gateway.config import load_config
from aifi.gateway.notify import FrameDecoder, frame
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.gateway.service import Gateway
from gateway.test_refused_results import pacs_instances, studies
from support.national import National, gateway_config, samples
from support.peers import OrthancPeer, free_port, storescu

pytestmark = pytest.mark.peer


class SilentRis:
    """A RIS that takes connections and never acknowledges (hung after a restart, say):
    each notice tried on it costs the sender its whole timeout, until it is `up` and
    answers AA. Counts the connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.up = threading.Event()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = int(self._server.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
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
                while conn.recv(65536):  # until the sender gives up, or is done, and hangs up
                    pass

    @staticmethod
    def _acknowledge(conn: socket.socket) -> None:
        decoder, blocks = FrameDecoder(), []
        while not blocks:
            blocks = decoder.feed(conn.recv(65536))
        control = blocks[0].decode().split("\r")[0].split("|")[9]
        header = "MSH|^~\\&|RIS|H|AIFI|H|20250301||ACK^R01^ACK"
        conn.sendall(frame(f"{header}|A{control}|T|2.5\rMSA|AA|{control}\r"))

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=10)


@pytest.fixture
def silent_ris() -> Iterator[SilentRis]:
    ris = SilentRis()
    yield ris
    ris.close()


def configure(path: Path, ris_port: int, hold_off_seconds: float = 600) -> None:
    """Notices to the RIS at `ris_port`; by default a pause longer than the test, so that no
    notice after the first tries the RIS while it is down."""
    config = yaml.safe_load(path.read_text())
    config["metrics_port"] = 0
    config["notifications"] = {
        "hl7": {
            "host": "127.0.0.1",
            "port": ris_port,
            "processing_id": "T",
            "timeout_seconds": 1,
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


def test_a_ris_down_holds_up_no_result_and_loses_no_notice(
    national: National, orthanc_factory: Any, silent_ris: SilentRis, tmp_path: Path
) -> None:
    sent = studies(tmp_path / "studies", 3)
    port = free_port()
    pacs: OrthancPeer = orthanc_factory({"aifi": ("AIFI_GW", port)})
    path = gateway_config(tmp_path, national, port, pacs.dicom_port)
    configure(path, silent_ris.port)

    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        for n, (files, _study) in enumerate(sent, start=1):
            storescu(files, port)
            assert gateway.wait_until(lambda n=n: len(gateway.jobs()) == n, timeout=60)
        assert gateway.wait_until(lambda: len(hl7_rows(gateway)) == 3, timeout=120), gateway.jobs()
        rows = hl7_rows(gateway)
        jobs = gateway.jobs()
        entries = [e for e in gateway.disclosures.entries() if e.recipient == "hl7 notice"]
        assert gateway.metrics is not None
        figures = samples(httpx.get(gateway.metrics.url, timeout=10).text)
    finally:
        gateway.stop()
    filed = {study: pacs_instances(pacs, study) for _files, study in sent}

    # Every job's result is in the PACS while the RIS is down.
    assert all(len(instances) == 1 for instances in filed.values()), filed
    # One job tried the RIS; the two after it held off, which is no try and sent nothing.
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
    # Their notices not taken, the jobs wait for them, unacknowledged at the exchange.
    assert [job["state"] for job in jobs] == ["submitted"] * 3
    assert unacknowledged(national) == 3

    # The RIS is back (at another address, say): each notice is sent once, nothing is filed
    # twice, and the jobs are acknowledged.
    with Hl7Listener() as listener:
        configure(path, listener.port)
        gateway = Gateway(load_config(path))
        gateway.start()
        try:
            assert gateway.wait_until(
                lambda: [job["state"] for job in gateway.jobs()] == ["delivered"] * 3,
                timeout=120,
            ), gateway.jobs()
            assert gateway.wait_until(lambda: unacknowledged(national) == 0, timeout=30)
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


def test_once_the_ris_takes_a_notice_the_jobs_waiting_for_theirs_go_at_once(
    national: National,
    orthanc_factory: Any,
    silent_ris: SilentRis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The jobs held for their notices would next try in an hour (their back-off, made long
    here); the RIS takes a new job's notice, and theirs go in the same pass."""
    monkeypatch.setattr(service, "backoff", lambda _attempts: 3600.0)
    sent = studies(tmp_path / "studies", 3)
    port = free_port()
    pacs: OrthancPeer = orthanc_factory({"aifi": ("AIFI_GW", port)})
    path = gateway_config(tmp_path, national, port, pacs.dicom_port)
    configure(path, silent_ris.port, hold_off_seconds=0.2)
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        for n, (files, _study) in enumerate(sent[:2], start=1):
            storescu(files, port)
            assert gateway.wait_until(lambda n=n: len(hl7_rows(gateway)) == n, timeout=120)
        assert [job["state"] for job in gateway.jobs()] == ["submitted"] * 2
        silent_ris.up.set()
        # The pause is over, so the next notice tries the RIS.
        assert gateway.wait_until(
            lambda: gateway.notifier.outages.holding_off("hl7") is None, timeout=30
        )
        storescu(sent[2][0], port)
        assert gateway.wait_until(
            lambda: [job["state"] for job in gateway.jobs()] == ["delivered"] * 3, timeout=120
        ), gateway.jobs()
        rows = hl7_rows(gateway)
    finally:
        gateway.stop()
    assert all(row["ok"] for row in rows)
    assert gateway.notifier.outages.down() == {}
