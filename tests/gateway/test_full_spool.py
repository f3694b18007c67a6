"""A gateway whose disk fills up: each sender hears that its instances were not stored (C-STORE
status A700, STOW-RS 507 or A700), nothing half-kept is left, and nothing accepted before is
lost: once space is freed, the study sent before and the study sent again each become one job.

The gateway's working folder sits on a real 4 MiB tmpfs, so the disk really fills: the spool,
the state database and `incoming/` alike.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from scale.servers import wait_for
from support.national import National, gateway_gauge, gateway_without_pacs
from support.peers import fill, require_executable, small_disk

pytestmark = pytest.mark.peer

SENDER = "VNA"


def ct_study(folder: Path, seed: int) -> list[Path]:
    write_study("ct-head", folder, seed=seed, size="small")
    return sorted(folder.rglob("*.dcm"))


def uid_of(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def send_by_c_store(files: list[Path], port: int) -> str:
    """storescu's log, each store's status in it (-v); it stops at the first refusal, as by
    default."""
    exe = require_executable("storescu", "dcmtk")
    sent = subprocess.run(
        [exe, "-v", "-aet", "CT_SCANNER", "-aec", "AIFI_GW", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return sent.stdout + sent.stderr


@pytest.fixture
def gateway_on_a_small_disk(national: National, tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    secrets_folder = tmp_path / "secrets"
    secrets_folder.mkdir()
    password = secrets.token_urlsafe(16)
    password_file = secrets_folder / "stow-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    web = {
        "host": "127.0.0.1",
        "port": 0,
        "senders": [{"name": SENDER, "password_file": str(password_file)}],
    }
    with small_disk(tmp_path / "disk", "4m") as disk, gateway_without_pacs(
        tmp_path / "gw", national, workdir=str(disk / "gateway"), dicomweb=web,
        metrics_port=0,
    ) as gateway:  # fmt: skip
        yield gateway, password


def stow(gateway: Gateway, password: str, files: list[Path]) -> httpx.Response:
    boundary = "full" + secrets.token_hex(6)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in files
    )
    return httpx.post(
        f"{gateway.stow_url}/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        auth=(SENDER, password),
        timeout=60,
    )


def test_a_full_disk_refuses_what_comes_and_loses_nothing_accepted(
    gateway_on_a_small_disk: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, password = gateway_on_a_small_disk
    before = ct_study(tmp_path / "before", seed=61)
    by_dimse = ct_study(tmp_path / "dimse", seed=62)
    by_stow = ct_study(tmp_path / "stow", seed=63)
    studies = [uid_of(files[0], "StudyInstanceUID") for files in (before, by_dimse, by_stow)]
    assert "Refused" not in send_by_c_store(before, gateway.port)
    assert len(gateway.state.study_instances(studies[0])) == len(before)

    filler = fill(gateway.config.workdir.parent)
    # C-STORE: the instance that finds no room gets its status, not an aborted association
    # (storescu stops at the first refusal, as it does by default).
    log = send_by_c_store(by_dimse, gateway.port)
    assert "Received Store Response (Refused: OutOfResources)" in log, log
    assert "Abort" not in log, log
    refused = stow(gateway, password, by_stow)
    assert refused.status_code == 507, refused.text
    assert "No space left on device" in refused.json()["error"]
    assert "stored" not in refused.json()  # none was
    # Nothing of either is kept, half or whole; the study accepted before is all there.
    assert not gateway.state.study_instances(studies[1])
    assert not gateway.state.study_instances(studies[2])
    assert not list(gateway.incoming.iterdir())
    assert not (gateway.spool / studies[1]).exists() and not (gateway.spool / studies[2]).exists()
    assert len(gateway.state.study_instances(studies[0])) == len(before)
    assert gateway.refusals.instances()[("dimse", "CT_SCANNER", "cannot-store")] == 1

    filler.unlink()  # room again: the senders send again, as they do after a refusal
    assert "Refused" not in send_by_c_store(by_dimse, gateway.port)
    again = stow(gateway, password, by_stow)
    assert again.status_code == 200, again.text
    # Each study becomes one job, and each job's result comes home: the study accepted before
    # the disk filled was not lost while it was full.
    assert gateway.wait_until(
        lambda: (
            sorted(job["study_uid"] for job in gateway.jobs()) == sorted(studies)
            and all(job["state"] == "delivered" for job in gateway.jobs())
        ),
        timeout=120,
    ), gateway.jobs()
    for study, files in zip(studies, (before, by_dimse, by_stow), strict=True):
        assert len(gateway.state.study_instances(study)) == len(files)


def test_instances_arrive_in_the_gateways_own_folder_not_the_systems_temporary_one(
    national: National, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identifiable instance is written as it arrives into the gateway's `incoming/`, on
    the spool's disk, never into the system's temporary folder: with that folder gone, every
    instance is still stored."""
    files = ct_study(tmp_path / "study", seed=64)
    with gateway_without_pacs(tmp_path / "gw", national) as gateway:
        with monkeypatch.context() as patched:
            patched.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
            log = send_by_c_store(files, gateway.port)
        assert "Refused" not in log and "Abort" not in log, log
        study = uid_of(files[0], "StudyInstanceUID")
        assert len(gateway.state.study_instances(study)) == len(files)
        assert not list(gateway.incoming.iterdir())


def test_an_instance_that_fits_but_cannot_be_indexed_is_refused_and_not_kept(
    gateway_on_a_small_disk: tuple[Gateway, str], tmp_path: Path
) -> None:
    """The disk has room for the instance's bytes but not for the state database to grow:
    the sender hears A700, and no file is left in the spool that the index does not know."""
    gateway, _ = gateway_on_a_small_disk
    before = ct_study(tmp_path / "before", seed=65)
    assert "Refused" not in send_by_c_store(before, gateway.port)
    late = ct_study(tmp_path / "late", seed=66)[:1]
    filler = fill(gateway.config.workdir.parent)
    page = 4096
    room = -(-(late[0].stat().st_size + 1024) // page) * page  # the instance, and less than a page
    with filler.open("r+b") as out:
        out.truncate(filler.stat().st_size - room)
    log = send_by_c_store(late, gateway.port)
    study = uid_of(late[0], "StudyInstanceUID")
    assert "Received Store Response (Refused: OutOfResources)" in log, log
    assert not gateway.state.study_instances(study)
    assert not list(gateway.spool.glob(f"{study}/*"))
    assert gateway.refusals.instances()[("dimse", "CT_SCANNER", "cannot-store")] == 1
    filler.unlink()
    assert "Refused" not in send_by_c_store(late, gateway.port)
    assert len(gateway.state.study_instances(study)) == 1


def test_a_study_held_up_by_the_full_disk_shows_in_the_figures_until_it_goes_on(
    gateway_on_a_small_disk: tuple[Gateway, str], tmp_path: Path
) -> None:
    """Before any job exists no job figure sees a study; `GatewayNotAssembling` watches this."""
    gateway, _ = gateway_on_a_small_disk
    study = ct_study(tmp_path / "study", seed=67)
    uid = uid_of(study[0], "StudyInstanceUID")
    assert "Refused" not in send_by_c_store(study, gateway.port)
    filler = fill(gateway.config.workdir.parent)

    def overdue() -> float:
        return gateway_gauge(gateway, "aifi_gateway_assembly_overdue_seconds")

    # The quiet time passes with no room to write: the study waits, and the figure grows.
    wait_for(lambda: overdue() > 1.0, timeout=30, what="the study to show as overdue")
    (row,) = gateway.state.query("SELECT state FROM studies WHERE study_uid = ?", (uid,))
    assert row["state"] == "receiving" and not gateway.jobs()
    filler.unlink()
    assert gateway.wait_until(
        lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=60
    ), gateway.jobs()
    assert overdue() == 0.0
