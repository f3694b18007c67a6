"""The gateway's DICOM associations: a C-STORE response always reaches the send that waits for
it, even when the association's reactor thread is held up at the worst moment.

pynetdicom runs a reactor thread beside every association and pauses it while a send waits for
its response. A reactor that had just passed its pause point when the send began could take the
response itself; the send then waited out the DIMSE timeout and the association was aborted
(seen on a busy machine as "Received unexpected C-STORE service message"). The test below holds
the reactor in exactly that gap, with no timing left to chance.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.association import Association

from aifi.gateway.dimse import NoDelayAE, PromptAssociation, start_scp, storage_scp_ae
from aifi.phantoms import write_study

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class ReactorGap:
    """Holds an association's reactor just past its pause point until a send has begun and its
    response has arrived, then lets the send take its response only after the reactor has had
    its look at the queue and come back to the pause point."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.armed = False
        self.in_gap = threading.Event()
        self.held = threading.Event()
        self.back = threading.Event()
        gap = self

        class Checkpoint(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                reactor = threading.current_thread() is gap.assoc
                if reactor and gap.held.is_set():
                    gap.back.set()
                passed = super().wait(timeout)
                if reactor and gap.armed and not gap.held.is_set():
                    gap.hold(self)
                return passed

        class Messages(queue.Queue[Any]):
            def get(self, block: bool = True, timeout: float | None = None) -> Any:
                if block and threading.current_thread() is not gap.assoc:
                    gap.back.wait(10)
                return super().get(block, timeout)

        assoc._reactor_checkpoint.__class__ = Checkpoint
        assoc.dimse.msg_queue.__class__ = Messages

    def hold(self, checkpoint: threading.Event) -> None:
        """Keep the reactor past its pause point until the send has cleared the checkpoint and
        the send's response is queued."""
        messages = self.assoc.dimse.msg_queue
        self.in_gap.set()
        deadline = time.monotonic() + 10
        while checkpoint.is_set() or not messages.qsize():
            if time.monotonic() > deadline:
                return  # the send never came: the test fails on `held`
            time.sleep(0.0005)  # polls a state no event announces
        self.held.set()


@pytest.fixture
def scp_port() -> Iterator[int]:
    def on_store(_event: evt.Event) -> int:
        return 0x0000

    server = start_scp(storage_scp_ae("AIFI_GW"), "127.0.0.1", 0, [(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_a_response_is_never_taken_by_a_reactor_held_in_its_pause_gap(
    scp_port: int, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=9, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))[:3]
    ae = NoDelayAE(ae_title="SLOW_CT")
    ae.dimse_timeout = 30  # what the send would wait out if its response were taken
    ae.add_requested_context(CT, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", scp_port, ae_title="AIFI_GW")
    assert assoc.is_established
    try:
        assert isinstance(assoc, PromptAssociation)
        assert assoc.send_c_store(files[0]).Status == 0
        gap = ReactorGap(assoc)
        gap.armed = True
        assert gap.in_gap.wait(10), "the reactor never came to its pause point"
        status = assoc.send_c_store(files[1])
        assert gap.held.is_set() and gap.back.is_set(), "the reactor was not held in the gap"
        assert status.get("Status") == 0, "the reactor took the C-STORE response"
        assert assoc.is_established
        assert assoc.send_c_store(files[2]).Status == 0
    finally:
        if assoc.is_established:
            assoc.release()
