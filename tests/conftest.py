"""Shared fixtures: real peers are required under CI=true and skipped, with a reason, locally."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.peers import PORTS_FOLDER, OrthancPeer, require_executable, start_orthanc

# Test exchanges admit products as they register them (exchanges started as subprocesses
# inherit this too); the admission tests turn it off explicitly.
os.environ.setdefault("AIFI_ADMIT_ON_REGISTER", "true")


def pytest_configure(config: pytest.Config) -> None:
    """One folder of reserved ports for the whole run: pytest-xdist's workers inherit it."""
    if PORTS_FOLDER in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="aifi-test-ports-")
    os.environ[PORTS_FOLDER] = folder

    def forget() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ[PORTS_FOLDER]

    config.add_cleanup(forget)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    return require_executable("dciodvfy", "dicom3tools")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[object]:
    """Start Orthancs (each a hospital PACS) on loopback; all are stopped after the test."""
    started: list[OrthancPeer] = []

    def start(
        modalities: dict[str, tuple[str, int]],
        dicomweb_servers: dict[str, dict[str, str]] | None = None,
    ) -> OrthancPeer:
        peer = start_orthanc(tmp_path / f"orthanc{len(started)}", modalities, dicomweb_servers)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.kill()


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `aifi.durable` flushes, in order, read back from each descriptor it syncs."""
    from aifi import durable

    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    return flushed


@pytest.fixture
def quiet_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exchange replicas started in this test run none of their own rounds for an hour: no
    lease sweep (each second), no audit-chain link (each half second). For tests that count
    the statements a request sends, which a round running meanwhile would add to; such a test
    runs the rounds it needs itself. Name it before the exchange's fixture."""
    from aifi.exchange import app

    monkeypatch.setattr(app, "LEASE_SWEEP_SECONDS", 3600.0)
    monkeypatch.setattr(app, "AUDIT_LINK_SECONDS", 3600.0)
