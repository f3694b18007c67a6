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
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.dimse import NoDelayAE
from aifi.gateway.exchange_client import GatewayClient
from aifi.gateway.reidentify import reidentify_file
from aifi.gateway.service import Gateway
from aifi.gateway.vault import Vault
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import JobContext, VendorClient, Worker
from scale.exchange_api import pseudonymised_ct
from scale.servers import wait_for
from support.national import VENDOR, National, gateway_config, gateway_gauge, started_gateway
from support.peers import OrthancPeer, fill, free_port, require_executable, small_disk

pytestmark = pytest.mark.peer

SENDER = "VNA"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


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
    with small_disk(tmp_path / "disk", "4m") as disk, started_gateway(
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
    with started_gateway(tmp_path / "gw", national) as gateway:
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
    gateway_on_a_small_disk: tuple[Gateway, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before any job exists no job figure sees a study; `GatewayNotAssembling` watches this.
    The assembler waits between tries, rather than trying again at once for as long as the
    disk is full (and filling the journal as fast as it can)."""
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
    tries = [r for r in caplog.records if r.getMessage().startswith("study assembly failed")]
    assert 1 <= len(tries) <= 3, f"{len(tries)} tries in the study's first second overdue"
    filler.unlink()
    assert gateway.wait_until(
        lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=60
    ), gateway.jobs()
    assert overdue() == 0.0


def test_a_sender_that_leaves_while_the_disk_is_full_still_has_its_study_assembled(
    gateway_on_a_small_disk: tuple[Gateway, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender's leaving restarts its studies' quiet timers, a write. Refused by the full disk,
    the study keeps the timer it had, and the assembler still hears that its sender left:
    before, it slept for an hour, since it had last seen the study being sent."""
    gateway, _ = gateway_on_a_small_disk
    files = ct_study(tmp_path / "study", seed=68)
    modality = NoDelayAE(ae_title="CT_SCANNER")
    modality.add_requested_context(uid_of(files[0], "SOPClassUID"), [EXPLICIT_LE])
    association = modality.associate("127.0.0.1", gateway.port, ae_title="AIFI_GW")
    assert association.is_established
    for file in files:
        assert association.send_c_store(file).Status == 0
    filler = fill(gateway.config.workdir.parent)
    association.release()
    wait_for(
        lambda: any("quiet timer could not restart" in r.getMessage() for r in caplog.records),
        timeout=30,
        what="the sender's leaving to find the disk full",
    )
    filler.unlink()
    assert gateway.wait_until(lambda: len(gateway.jobs()) == 1, timeout=60), gateway.jobs()
    [job] = gateway.jobs()
    assert job["study_uid"] == uid_of(files[0], "StudyInstanceUID")


#: A product no worker serves until the test does its job, so the job waits while the disk fills.
HELD = "held-volume"


def test_a_result_that_comes_home_to_a_full_disk_waits_at_the_exchange_and_arrives_once(
    national: National, orthanc_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The vendor's result reaches an exchange whose gateway has no room to fetch it: nothing
    half-fetched is left on the gateway's disk, the job stays unacknowledged (the exchange keeps
    the result), and once there is room the result is fetched, re-identified and stored in the
    PACS exactly once."""
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product({**tissue_volume.manifest(VENDOR), "id": HELD})
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": HELD}).raise_for_status()
    files = ct_study(tmp_path / "study", seed=68)
    study = uid_of(files[0], "StudyInstanceUID")
    gateway_port = free_port()
    pacs = orthanc_factory({"aifi": ("AIFI_GW", gateway_port)})
    config = yaml.safe_load(
        gateway_config(tmp_path / "gw", national, gateway_port, pacs.dicom_port).read_text()
    )
    with small_disk(tmp_path / "disk", "4m") as disk:
        config.update(
            workdir=str(disk / "gateway"), routes=[{"product": HELD, "modalities": ["CT"]}]
        )
        (tmp_path / "gw" / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = Gateway(load_config(tmp_path / "gw" / "gateway.yaml"))
        gateway.start()
        try:
            assert "Refused" not in send_by_c_store(files, gateway.port)
            assert gateway.wait_until(
                lambda: [job["state"] for job in gateway.jobs()] == ["submitted"], timeout=60
            ), gateway.jobs()
            [job] = gateway.jobs()
            exchange_id = job["exchange_job_id"]

            filler = fill(disk)
            worker = Worker(vendor, tissue_volume.run, product_ids=[HELD], workdir=tmp_path)
            assert worker.run_once(wait_seconds=10) == exchange_id
            wait_for(
                lambda: any(
                    "collecting results failed" in record.getMessage()
                    and "disk is full" in record.getMessage()
                    for record in caplog.records
                ),
                60,
                "the gateway to find no room for the result",
            )
            # Nothing half-written stays to fill the disk or pass for the result later.
            results = gateway.results_dir / str(job["id"])
            written = [path for path in results.rglob("*") if path.is_file()]
            assert not written, written
            with national.api() as api:
                remote = api.get(f"/jobs/{exchange_id}").json()
            assert remote["state"] == "completed" and remote["acknowledged_at"] is None
            assert not pacs_results(pacs, study)

            filler.unlink()
            assert gateway.wait_until(
                lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=120
            ), gateway.jobs()
            [job] = gateway.jobs()
            assert job["results_delivered"] == 1
            with national.api() as api:
                wait_for(
                    lambda: api.get(f"/jobs/{exchange_id}").json()["acknowledged_at"] is not None,
                    30,
                    "the gateway to acknowledge the job it brought home",
                )
        finally:
            gateway.stop()
            vendor.close()
    assert len(pacs_results(pacs, study)) == 1


def pacs_results(pacs: OrthancPeer, study_uid: str) -> list[dict[str, Any]]:
    """The structured reports the PACS holds in the original study."""
    found = httpx.post(
        pacs.url + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
    ).json()
    return list(found)


def sr_to_restore(folder: Path) -> tuple[Path, Vault]:
    """The reference product's SR for a pseudonymised CT, and a vault that knows its study."""
    [ct] = pseudonymised_ct(folder / "ct", slices=1)
    (folder / "out").mkdir()
    result = tissue_volume.run(JobContext(job={}, inputs=[ct], output_dir=folder / "out"))
    pseudonym = uid_of(ct, "StudyInstanceUID")
    vault = Vault(folder / "vault.db")
    original = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.78", "PatientID": "HOSP-0100"}
    vault.remember(
        {original["StudyInstanceUID"]: pseudonym},
        original_study_uid=original["StudyInstanceUID"],
        pseudonym_study_uid=pseudonym,
        patient_pseudonym="PSEUDO",
        original_attributes=original,
    )
    return result.files[0].path, vault


@pytest.mark.parametrize("writer", ["download", "re-identification"])
def test_a_result_that_finds_no_room_leaves_no_half_written_file(
    writer: str, tmp_path: Path
) -> None:
    """A half-written result would keep its room on the full disk; under its final name it
    would pass for the result. Neither the download nor the re-identified copy leaves one."""
    body = b"DICM" * 25_000
    sr, vault = sr_to_restore(tmp_path / "result")
    exchange = httpx.MockTransport(lambda _request: httpx.Response(200, content=body))
    client = GatewayClient("http://exchange", "aifi_k", transport=exchange)
    with small_disk(tmp_path / "disk", "1m") as disk:
        filler = fill(disk)
        with pytest.raises(OSError, match="No space left on device"):
            if writer == "download":
                client.download_result("job-1", "sr.dcm", disk / "sr.dcm")
            else:
                reidentify_file(sr, disk / "reidentified-sr.dcm", vault)
        assert sorted(path.name for path in disk.iterdir()) == ["filler"]
        filler.unlink()
        # With room again the same call writes the whole file, under its final name.
        if writer == "download":
            assert client.download_result("job-1", "sr.dcm", disk / "sr.dcm") == len(body)
            assert (disk / "sr.dcm").read_bytes() == body
        else:
            reidentify_file(sr, disk / "reidentified-sr.dcm", vault)
            restored = pydicom.dcmread(disk / "reidentified-sr.dcm")
            assert restored.PatientID == "HOSP-0100"
        assert len(list(disk.iterdir())) == 1
    vault.close()
    client.close()


def test_a_disk_that_fills_while_a_job_is_sent_delays_the_job_and_doubles_nothing(
    gateway_on_a_small_disk: tuple[Gateway, str],
    national: National,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exchange opens the job, and then the gateway's disk has no room to record it, nor
    the pseudonymised copies, nor even the retry: the gateway keeps trying, and once there is
    room the study goes out as the one job the exchange already opened."""
    gateway, _ = gateway_on_a_small_disk
    files = ct_study(tmp_path / "study", seed=69)
    opened = gateway.client.create_job
    filled: list[Path] = []

    def open_then_fill(*args: Any, **kwargs: Any) -> dict[str, Any]:
        created = opened(*args, **kwargs)
        if not filled:
            filled.append(fill(gateway.config.workdir.parent))
        return created

    monkeypatch.setattr(gateway.client, "create_job", open_then_fill)
    assert "Refused" not in send_by_c_store(files, gateway.port)
    wait_for(
        lambda: any("sending jobs failed" in record.getMessage() for record in caplog.records),
        60,
        "the gateway to find no room to record the job",
    )
    assert [job["state"] for job in gateway.jobs()] == ["pending"]
    filled[0].unlink()
    assert gateway.wait_until(
        lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=120
    ), gateway.jobs()
    with national.api() as api:
        remote = api.get("/jobs").json()
    assert [job["id"] for job in remote] == [gateway.jobs()[0]["exchange_job_id"]]
    assert remote[0]["input_count"] == len(files)
