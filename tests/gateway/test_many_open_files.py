"""A gateway process with more than 1,024 files open still takes and sends DICOM.

`select.select()` cannot watch a file descriptor numbered 1,024 or above (FD_SETSIZE).
pynetdicom asked it whether an association's socket had data, took its ValueError for a closed
connection, and so every association of such a process was aborted as it began: a modality's
C-STORE refused, results never reaching the PACS. A busy gateway (many associations, spool
files and database connections at once) can get there; the national demo did, late in a long
test run, and lost every C-STORE study while the STOW-RS one (asyncio, epoll) came through.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import evt

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.gateway.dimse import send_files, start_scp, storage_scp_ae
from aifi.phantoms import write_study
from scale.servers import missing_peer
from support.national import OPERATOR_KEY
from support.peers import storescu

pytestmark = pytest.mark.peer

#: Descriptors held open so that every socket the test makes is numbered above FD_SETSIZE.
HIGH = 1100


@pytest.fixture
def many_files_open() -> Iterator[None]:
    """Open /dev/null until the next descriptor is above 1,024, as a busy process has them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HIGH + 200
    try:
        if soft != resource.RLIM_INFINITY and soft < wanted:
            raised_hard = hard if hard == resource.RLIM_INFINITY else max(hard, wanted)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, raised_hard))
    except (ValueError, OSError) as exc:
        missing_peer(f"cannot allow {wanted} open files (ulimit -n {soft}, hard {hard}): {exc}")
    held: list[int] = []
    try:
        while not held or held[-1] < HIGH:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_process_with_many_files_open_takes_and_sends_dicom(
    tmp_path: Path, many_files_open: None
) -> None:
    write_study("ct-head", tmp_path / "study", seed=3, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))[:4]
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    received: list[str] = []

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.file_meta.MediaStorageSOPInstanceUID))
        return 0x0000

    (tmp_path / "incoming").mkdir()
    ae = storage_scp_ae("AIFI_GW", tmp_path / "incoming")
    server = start_scp(ae, "127.0.0.1", 0, [(evt.EVT_C_STORE, handle_store)])
    port = int(server.server_address[1])
    assert server.socket is not None and server.socket.fileno() > 1024
    try:
        # A modality (dcmtk's storescu) sends to the gateway's acceptor: a socket above 1,024.
        storescu(files, port)
        assert set(received) == uids
        # The gateway sends, as to a PACS: its requestor's socket is above 1,024 too.
        outcomes = send_files(files, "127.0.0.1", port, "AIFI_GW")
        assert [o.error for o in outcomes if not o.ok] == []
        assert sorted(received) == sorted([*uids, *uids])
    finally:
        server.shutdown()


def test_an_exchange_served_in_process_leaves_no_file_open_when_it_stops(tmp_path: Path) -> None:
    """The demo and a test serve the exchange in-process; each one stopped left its database's
    connections to the garbage collector, holding the files open: a long run piled them up
    towards the limit above."""
    settings = ExchangeSettings(data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY)
    with ExchangeThread(settings, port=0) as exchange:
        headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
        httpx.get(exchange.url + "/organisations", headers=headers).raise_for_status()
        assert open_under(tmp_path / "exchange")  # it was using its database
    assert open_under(tmp_path / "exchange") == []


def open_under(folder: Path) -> list[str]:
    """Files under `folder` this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held
