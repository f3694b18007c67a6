"""The national demo (what `make demo` runs) brings every study back, and says so in figures."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import evt
from rich.console import Console

from aifi.demo import (
    DEMO_PRODUCTS,
    HOSPITALS,
    MODALITY_AE,
    MODALITY_RESENDS,
    STOW_HOSPITAL,
    STOW_SENDER,
    _send_as_a_modality,
    run_demo,
)
from aifi.gateway.dimse import start_scp, storage_scp_ae
from aifi.phantoms import write_study
from support.peers import free_port


@pytest.mark.peer
def test_the_demo_brings_everything_back(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    console = Console(file=(tmp_path / "out.txt").open("w"), width=160)
    code = run_demo(
        studies=1,
        workdir=tmp_path / "work",
        summary=summary,
        keep_running=False,
        port=free_port(),
        console=console,
    )
    figures = json.loads(summary.read_text())
    reasons = {r["hospital"]: r["failure_reasons"] for r in figures["rows"] if r["failure_reasons"]}
    assert code == 0, (reasons, (tmp_path / "out.txt").read_text())
    assert figures["studies_sent"] == len(HOSPITALS)
    assert figures["lost"] == 0 and figures["jobs_failed"] == 0
    assert figures["jobs_completed"] == figures["jobs_total"] > 0
    assert figures["results_delivered"] >= figures["jobs_completed"]
    assert figures["e2e_seconds"]["p50"] > 0
    assert set(figures["products"]) == set(DEMO_PRODUCTS)
    for product in figures["products"].values():
        if product["studies"]:
            assert all(t["met"] for t in product["accuracy"]["targets"].values()), product
    # Every hospital's PACS holds its results, under the hospital's own folder; one
    # hospital's studies came by STOW-RS from its VNA, the others' by C-STORE.
    for hospital in HOSPITALS:
        assert any((tmp_path / "work" / "pacs" / hospital.id).rglob("*.dcm"))
        state = tmp_path / "work" / "gateways" / hospital.id / "state.db"
        with contextlib.closing(sqlite3.connect(state)) as db:
            senders = {row[0] for row in db.execute("SELECT DISTINCT calling_ae FROM instances")}
        assert senders == {STOW_SENDER if hospital.id == STOW_HOSPITAL else MODALITY_AE}
    text = (tmp_path / "out.txt").read_text()
    assert "per hospital and product" in text and "not for clinical use" in text


class Refusing:
    """A DICOM node that refuses the first `refusals` C-STOREs of each instance (0xA700, out
    of resources), then stores it; counts every attempt by SOP Instance UID."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts: Counter[str] = Counter()
        self._server = start_scp(
            storage_scp_ae("AIFI_GW"), "127.0.0.1", 0, [(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self._server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.attempts[uid] += 1
        return 0xA700 if self.attempts[uid] <= self.refusals else 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    write_study("ct-head", tmp_path / "study", seed=3, size="small")
    return sorted((tmp_path / "study").rglob("*.dcm"))


@pytest.fixture
def node_refusing_twice() -> Iterator[Refusing]:
    node = Refusing(refusals=2)
    yield node
    node.stop()


def test_a_demo_modality_sends_again_what_was_not_stored(
    study: list[Path], node_refusing_twice: Refusing
) -> None:
    out = io.StringIO()
    failed = _send_as_a_modality(Console(file=out), "kustkliniek", study, node_refusing_twice.port)
    assert failed == []
    assert sorted(node_refusing_twice.attempts.values()) == [3] * len(study)
    assert "instances not stored (C-STORE status 0xA700); the modality sends them again" in (
        out.getvalue().replace("\n", " ")
    )


def test_a_demo_modality_gives_up_after_its_resends_and_says_what_failed(
    study: list[Path],
) -> None:
    node = Refusing(refusals=MODALITY_RESENDS + 1)
    try:
        failed = _send_as_a_modality(Console(file=io.StringIO()), "kustkliniek", study, node.port)
    finally:
        node.stop()
    assert sorted(outcome.path for outcome in failed) == study
    assert {outcome.error for outcome in failed} == {"C-STORE status 0xA700"}
    assert sorted(node.attempts.values()) == [1 + MODALITY_RESENDS] * len(study)
