"""A gateway's disk is lost and its databases are put back from a backup taken while it ran
(`aifi gateway-backup`, `aifi gateway-restore`): what the backup held comes home under the
patient's own identity, and what was done after the backup is neither lost nor done twice.

Against a real exchange and vendor worker; the gateway driven as its threads drive it
(support.hospital), or started whole with Orthanc as the PACS and dcmtk's storescu as the
modality.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from typer.testing import CliRunner

from aifi.cli import app
from aifi.exchange.clock import utcnow
from aifi.file_lock import held_alone
from aifi.gateway import backup as backup_module
from aifi.gateway import service as service_module
from aifi.gateway.backup import (
    COPY_LOCK,
    MANIFEST,
    WORKDIR_LOCK,
    BackupError,
    BackupManifest,
    back_up,
    restore,
)
from aifi.gateway.config import load_config
from aifi.gateway.preflight import preflight
from aifi.gateway.service import Gateway
from aifi.gateway.state import ReceivedInstance
from aifi.http import ExchangeHTTPError
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductResult
from support.hospital import Hospital
from support.national import National, gateway_config, national_path
from support.peers import OrthancPeer, free_port, storescu
from support.restore import bring_home, lose_the_disk, restored

pytestmark = pytest.mark.peer

IDENTITY = {"patient_id": "HOSP-0815", "patient_name": "de^Vries^Els", "accession_number": "ACC9"}


def sent_then_backed_up(hospital: Hospital, tmp_path: Path) -> Path:
    """The study received, routed and its job sent; then the gateway backed up. The backup."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    return backup


# the backup itself ----------------------------------------------------------------------------


def test_a_backup_taken_while_the_state_is_written_holds_one_moment_of_it(
    hospital: Hospital, tmp_path: Path
) -> None:
    """A file copy of a WAL database misses what only its `-wal` holds; the backup does not,
    and each copy passes SQLite's check while the gateway goes on writing."""
    state = hospital.gateway.state
    workdir = load_config(hospital.path).workdir
    spool = hospital.gateway.spool / "1.2.3"
    spool.mkdir(parents=True)
    stop, enough = threading.Event(), threading.Event()
    written = [0]

    def receive_for_ever() -> None:
        while not stop.is_set():
            n = written[0]
            path = spool / f"{n}.dcm"
            path.write_bytes(b"\0" * 10)
            state.record_instance(
                ReceivedInstance(
                    sop_instance_uid=f"1.2.3.{n}", study_uid="1.2.3", series_uid="1.2.3.0",
                    sop_class_uid="1.2", modality="CT", body_part="", study_description="",
                    series_description="", path=path, size=10, calling_ae="CT_SCANNER",
                ),
                quiet_seconds=60,
            )  # fmt: skip
            written[0] = n + 1
            if n + 1 >= 200:
                enough.set()

    # A reader that stays (the exporter's, say) keeps SQLite from moving the pages written
    # after it began into the database file: they stay in the `-wal`.
    reader = sqlite3.connect(workdir / "state.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM instances").fetchone()
    writer = threading.Thread(target=receive_for_ever)
    writer.start()
    try:
        assert enough.wait(60)
        manifest = back_up(load_config(hospital.path), tmp_path / "backup")
        during = written[0]
        shutil.copy(workdir / "state.db", tmp_path / "file-copy.db")  # what a file backup takes
    finally:
        stop.set()
        writer.join()
        reader.close()
    file_copy = sqlite3.connect(tmp_path / "file-copy.db")
    copied = sqlite3.connect(tmp_path / "backup" / "state.db")
    try:
        # Not even the tables: a first start's schema is in the `-wal` too.
        tables = file_copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        in_file_copy = (
            file_copy.execute("SELECT count(*) FROM instances").fetchone()[0]
            if ("instances",) in tables.fetchall()
            else 0
        )
        in_backup = copied.execute("SELECT count(*) FROM instances").fetchone()[0]
        assert copied.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copied.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        file_copy.close()
        copied.close()
    assert in_file_copy == 0 and 200 <= in_backup <= during
    assert not (tmp_path / "backup" / "state.db-wal").exists()
    assert [item.name for item in manifest.databases] == ["state.db", "vault.db", "disclosures.db"]
    assert BackupManifest.read(tmp_path / "backup") == manifest
    assert oct((tmp_path / "backup" / "vault.db").stat().st_mode & 0o777) == "0o600"


def test_a_restore_refuses_what_would_lose_or_mix_up_data(
    hospital: Hospital, tmp_path: Path
) -> None:
    config = load_config(hospital.path)
    hospital.receive(*hospital.files)
    backup = tmp_path / "backup"
    back_up(config, backup)
    # Not under a gateway, started or not: it holds its workdir from before its databases open.
    with pytest.raises(BackupError, match="a gateway is running on"):
        restore(config, backup, replace=True)
    hospital.close()
    workdir = config.workdir
    before = {p.name: p.read_bytes() for p in workdir.glob("*.db")}

    # Over the databases a workdir holds, only when told to, and then nothing is deleted.
    with pytest.raises(BackupError, match="holds databases already .*--replace"):
        restore(config, backup)
    # Not another hospital's backup.
    other = config.model_copy(update={"hospital": "another-hospital"})
    with pytest.raises(BackupError, match="not of another-hospital's"):
        restore(other, backup)
    # Not beside another secret: every pseudonym would change.
    secret = tmp_path / "other.key"
    secret.write_text("ab" * 32)
    with pytest.raises(BackupError, match="not the one this backup was made with"):
        restore(config.model_copy(update={"secret_file": secret}), backup)
    # Not a file changed since the backup wrote it.
    vault = backup / "vault.db"
    original = vault.read_bytes()
    vault.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(BackupError, match="vault.db is not as the backup wrote it"):
        restore(config, backup, replace=True)
    vault.write_bytes(original)
    # Not a backup cut off before its manifest.
    cut_off = tmp_path / "cut-off"
    shutil.copytree(backup, cut_off)
    (cut_off / MANIFEST).unlink()
    with pytest.raises(BackupError, match="holds no complete backup"):
        restore(config, cut_off, replace=True)
    assert {p.name: p.read_bytes() for p in workdir.glob("*.db")} == before

    assert not list(workdir.glob(".restore-*"))  # nor a staged copy left behind

    (workdir / "results" / "1").mkdir(parents=True)  # a result of the lost timeline's job 1
    done = restore(config, backup, replace=True)
    [replaced] = done.replaced
    assert {p.name for p in replaced.iterdir()} >= {
        "state.db", "vault.db", "disclosures.db", "results"
    }  # fmt: skip
    assert {p.name: p.read_bytes() for p in replaced.glob("*.db")} == before
    assert not (workdir / "results").exists() and not list(workdir.glob(".restore-*"))


# what the backup held, brought home -----------------------------------------------------------


def test_a_job_sent_before_the_backup_comes_home_after_the_restore_under_the_patients_identity(
    hospital: Hospital, tmp_path: Path
) -> None:
    backup = sent_then_backed_up(hospital, tmp_path)
    lose_the_disk(hospital)
    restored(hospital, backup)

    [job] = hospital.jobs()
    assert job["state"] == "submitted"
    bring_home(hospital, job["exchange_job_id"])
    [job] = hospital.jobs()
    assert job["state"] == "delivered", job
    # Mapped back with the restored vault: the result names the study's own UIDs.
    [result] = (hospital.gateway.results_dir / str(job["id"]) / "reidentified").glob("*.dcm")
    header = pydicom.dcmread(result, stop_before_pixels=True)
    original = pydicom.dcmread(hospital.files[0], stop_before_pixels=True)
    assert header.StudyInstanceUID == original.StudyInstanceUID
    assert header.PatientID == original.PatientID
    actions = [entry.action for entry in hospital.gateway.disclosures.entries()]
    assert actions == ["disclosed", "restored", "reidentified", "delivered"]


def test_a_job_brought_home_after_the_backup_is_not_brought_home_again(
    hospital: Hospital, tmp_path: Path
) -> None:
    backup = sent_then_backed_up(hospital, tmp_path)
    [job] = hospital.jobs()
    bring_home(hospital, job["exchange_job_id"])  # on the disk that is then lost
    lose_the_disk(hospital)
    gateway = restored(hospital, backup)
    assert [j["state"] for j in hospital.jobs()] == ["submitted"]

    gateway.reconcile_restore()
    [job] = hospital.jobs()
    assert job["state"] == "delivered" and job["exchange_state"] == "completed"
    assert "brought home before the gateway was restored from a backup" in job["reason"]
    assert job["acknowledged_at"] is not None  # not listed as waiting (`aifi gateway-jobs`)
    assert not (gateway.results_dir / str(job["id"])).exists()  # nothing fetched again
    assert "reidentified" not in [entry.action for entry in gateway.disclosures.entries()]
    gateway.reconcile_restore()  # once per restore
    assert gateway.state.restore_to_reconcile() is None


def test_a_job_whose_results_the_lost_disk_could_not_file_is_not_taken_as_delivered(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lost disk brought the job home without its results (they could not be filed),
    and said so with its acknowledgement: the restored gateway reads that back, and the job
    ends undelivered, not delivered with nothing in the PACS."""
    backup = sent_then_backed_up(hospital, tmp_path)
    [job] = hospital.jobs()

    def unfileable(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError("a result this gateway cannot read")

    with monkeypatch.context() as patched:  # on the disk that is then lost
        patched.setattr(service_module, "reidentify_file", unfileable)
        bring_home(hospital, job["exchange_job_id"])
    [lost] = hospital.jobs()
    assert lost["state"] == "ended" and "cannot be filed in the PACS" in lost["reason"]
    assert hospital.gateway.client.job(job["exchange_job_id"])["delivery"] == "unfileable"
    lose_the_disk(hospital)
    gateway = restored(hospital, backup)

    gateway.reconcile_restore()
    [job] = hospital.jobs()
    assert job["state"] == "ended" and job["exchange_state"] == "completed", job
    assert job["delivered_at"] is None
    assert job["reason"].startswith(
        "results not delivered: they could not be filed in the PACS as they are; brought "
        "home before the gateway was restored from a backup"
    ), job["reason"]
    assert not (gateway.results_dir / str(job["id"])).exists()  # nothing fetched again


@pytest.mark.parametrize("spool", [True, False], ids=["with-spool", "spool-lost"])
def test_a_job_sent_and_brought_home_after_the_backup_is_found_and_not_sent_again(
    hospital: Hospital, tmp_path: Path, spool: bool
) -> None:
    """Found at the exchange by its key, whether its instances are back in the spool or not
    (then the job cannot be sent, and stands as it opened)."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=spool)  # the job not sent yet
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    [job] = hospital.jobs()
    bring_home(hospital, job["exchange_job_id"])
    lose_the_disk(hospital)
    gateway = restored(hospital, backup)
    [pending] = hospital.jobs()
    assert pending["state"] == "pending" and pending["exchange_job_id"] is None

    assert hospital.send_due() == [pending["id"]]
    [settled] = hospital.jobs()
    assert settled["state"] == "delivered", settled["reason"]
    assert "brought home before the gateway was restored from a backup" in settled["reason"]
    assert settled["exchange_job_id"] == job["exchange_job_id"]
    assert len(hospital.exchange_jobs()) == 1  # not sent as a second job
    # The restored log lacked the send; it has it once now.
    [sent] = hospital.disclosed()
    assert f"exchange job {job['exchange_job_id']}: {len(hospital.files)} instance(s)" in sent
    assert not (gateway.results_dir / str(settled["id"])).exists()


@pytest.mark.parametrize(
    ("lost_disk", "second_round"),
    [
        ("sent-nothing", "skipped"),
        ("sent-round-1", "skipped"),
        ("sent-round-1-purged", "submitted"),
    ],
)
def test_two_rounds_with_the_same_instances_run_the_product_once_after_a_restore(
    hospital: Hospital, tmp_path: Path, lost_disk: str, second_round: str
) -> None:
    """Round 1 waits for the exchange while a late slice opens round 2: both would send the
    same instances, and one is skipped. So after a restore too, whether the lost disk sent
    nothing after the backup or sent round 1 (skipping round 2) and brought it home. Once the
    exchange has purged round 1's inputs, what it was sent with cannot be known: round 2 is
    sent, never skipped on a guess that could lose its result."""
    hospital.late_slice_while_unsent(back_off=0.5)
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)
    if lost_disk != "sent-nothing":
        first, second = hospital.jobs()
        assert hospital.send_due(time.time() + 600) == [first["id"], second["id"]]
        first, second = hospital.jobs()
        assert (first["state"], second["state"]) == ("submitted", "skipped")
        bring_home(hospital, first["exchange_job_id"])
        if lost_disk == "sent-round-1-purged":
            retention = hospital.national.exchange.app.state.retention
            assert (
                first["exchange_job_id"] in retention.sweep(now=utcnow() + timedelta(days=8)).jobs
            )
    lose_the_disk(hospital)
    restored(hospital, backup)

    first, second = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [first["id"], second["id"]]
    first, second = hospital.jobs()
    assert second["state"] == second_round, second
    assert first["state"] == ("submitted" if lost_disk == "sent-nothing" else "delivered"), first
    remote = hospital.exchange_jobs()
    assert len(remote) == (2 if second_round == "submitted" else 1)
    assert remote[-1]["input_count"] == len(hospital.files) + 1


def test_results_left_under_a_job_id_the_restore_gives_out_again_are_never_delivered(
    hospital: Hospital, tmp_path: Path
) -> None:
    """A restore gives the state's ids out again: a folder of the lost disk's job with the
    same id (another patient's study) must not pass for this job's results."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    [job] = hospital.jobs()
    exchange_id = job["exchange_job_id"]
    gateway = hospital.gateway
    deadline = time.monotonic() + 60
    while exchange_id not in (ended := {j["id"]: j for j in gateway.client.ended_jobs(wait=1)}):
        assert time.monotonic() < deadline, "the vendor did not end the job within 60 s"
    write_study("ct-head", tmp_path / "other", seed=9, size="small", identity=IDENTITY)
    someone_else = sorted((tmp_path / "other").rglob("*.dcm"))[0]
    for result in gateway.client.results(exchange_id):  # as the lost disk's job 1 left them
        for folder in (gateway.fetched_results(job["id"]), gateway.results_dir / str(job["id"])
                       / "reidentified"):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(someone_else, folder / result["name"])

    assert gateway.collect(ended[exchange_id])
    [result] = (gateway.results_dir / str(job["id"]) / "reidentified").glob("*.dcm")
    header = pydicom.dcmread(result, stop_before_pixels=True)
    original = pydicom.dcmread(hospital.files[0], stop_before_pixels=True)
    assert header.PatientID == original.PatientID != IDENTITY["patient_id"]
    assert header.Modality == "SR"


def test_a_job_whose_instances_the_restore_lacks_is_refused_with_what_to_do(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restored without the spool, and the study's files not put back: the job says to send
    the study again, rather than failing on each try for ever."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    lose_the_disk(hospital)
    restored(hospital, backup)
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "pending" and "in case the spool is put back" in job["reason"]
    assert hospital.send_due(job["next_attempt_at"]) == [job["id"]]
    assert hospital.jobs()[0]["state"] == "pending"  # within the window, counted from then
    # The window over (here at once), the next try refuses the job.
    monkeypatch.setattr(service_module, "SPOOL_GONE_SECONDS", 0.0)
    [job] = hospital.jobs()
    assert hospital.send_due(job["next_attempt_at"]) == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "refused", job["reason"]
    assert (
        f"{len(hospital.files)} of the study's {len(hospital.files)} instance(s) are gone"
        in (job["reason"])
    )
    assert "send the study again from the PACS" in job["reason"]
    assert hospital.exchange_jobs() == []
    # Sent again, the study opens a new round, which goes.
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    assert again["round"] == 2
    assert hospital.send_due() == [again["id"]]
    assert hospital.gateway.state.job(again["id"])["state"] == "submitted"


def test_a_job_refused_for_its_lost_spool_tells_the_exchange_nothing_of_the_hospital_s(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's try broke off half uploaded after the backup, and the restore came without
    the spool: the exchange's job is cancelled with a reason in the gateway's own words. The
    spool path that says what is missing (it holds the study's own UIDs) stays in the local
    reason; nothing the exchange keeps names the hospital's study."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    opened = hospital.send_broken_off()
    assert 0 < opened["input_count"] < len(hospital.files)
    lose_the_disk(hospital)
    restored(hospital, backup)
    monkeypatch.setattr(service_module, "SPOOL_GONE_SECONDS", 0.0)
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]

    [job] = hospital.jobs()
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in hospital.files]
    study_uid = str(headers[0].StudyInstanceUID)
    assert job["state"] == "refused", job["reason"]
    assert f"gone from the spool (such as {hospital.gateway.spool / study_uid}" in job["reason"]
    [cancelled] = hospital.exchange_jobs()
    assert cancelled["id"] == opened["id"] and cancelled["state"] == "cancelled", cancelled
    assert cancelled["reason"] == "instances missing at the gateway after a restore"
    identifiers = {
        study_uid, str(headers[0].SeriesInstanceUID), str(headers[0].PatientID),
        *(str(header.SOPInstanceUID) for header in headers),
    }  # fmt: skip
    data = hospital.national.exchange.app.state.services.settings.data_dir
    database = sqlite3.connect(data / "exchange.db")
    try:
        kept = "\n".join(database.iterdump())
    finally:
        database.close()
    assert "instances missing at the gateway after a restore" in kept
    assert {name for name in identifiers if name in kept} == set()


def test_a_backup_with_its_spool_needs_nothing_sent_again(
    hospital: Hospital, tmp_path: Path
) -> None:
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    manifest = back_up(load_config(hospital.path), backup, spool=True)
    assert manifest.spool is not None and len(manifest.spool) == len(hospital.files)
    lose_the_disk(hospital)
    put_back = CliRunner().invoke(
        app, ["gateway-restore", "--config", str(hospital.path), "--from", str(backup)]
    )
    assert put_back.exit_code == 0, put_back.output
    # Said when none is missing too: silence would leave the engineer to wonder.
    assert "0 instances missing" in put_back.output, put_back.output
    hospital.gateway = hospital.open()
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "submitted"
    [remote] = hospital.exchange_jobs()
    assert remote["input_count"] == len(hospital.files)


def test_the_log_and_its_anchors_say_where_a_restore_lost_entries(
    hospital: Hospital, tmp_path: Path
) -> None:
    """An anchor the journal has from after the backup names an entry the restored log
    lacks: the check says so, and why, rather than calling it tampering."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    lost_anchor = hospital.gateway.disclosures.anchor()
    assert lost_anchor is not None
    lose_the_disk(hospital)
    restored(hospital, backup)
    hospital.close()
    problems_run = CliRunner().invoke(
        app, ["disclosures", "--config", str(hospital.path), "--anchor", str(lost_anchor)]
    )
    assert problems_run.exit_code == 1
    assert "restored from a backup at entry 1" in " ".join(problems_run.output.split())
    listed = CliRunner().invoke(app, ["disclosures", "--config", str(hospital.path)])
    assert listed.exit_code == 0
    assert "the log was restored from a backup on" in " ".join(listed.output.split())
    hospital.gateway = hospital.open()


# the whole gateway, with a PACS -----------------------------------------------------------------


@pytest.fixture
def held() -> Iterator[threading.Event]:
    """Released by the test: until then the vendor's product holds each job it runs."""
    release = threading.Event()
    yield release
    release.set()


@pytest.fixture
def held_national(tmp_path: Path, held: threading.Event) -> Iterator[National]:
    def holds(context: JobContext) -> ProductResult:
        assert held.wait(120)
        return tissue_volume.run(context)

    with national_path(tmp_path / "national", product=holds) as path:
        yield path


def pacs_results(pacs: OrthancPeer, study_uid: str) -> list[dict[str, Any]]:
    found = httpx.post(
        pacs.url + "/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
    ).json()
    assert len(found) == 1
    instances = httpx.get(f"{pacs.url}/studies/{found[0]}/instances").json()
    tags = [httpx.get(f"{pacs.url}/instances/{i['ID']}/simplified-tags").json() for i in instances]
    return [t for t in tags if t["Modality"] == "SR"]


def test_a_running_gateway_backed_up_and_restored_on_a_new_disk_delivers_its_result_once(
    held_national: National, held: threading.Event, orthanc_factory: Any, tmp_path: Path
) -> None:
    gateway_port = free_port()
    pacs: OrthancPeer = orthanc_factory(
        {"aifi": ("AIFI_GW", gateway_port), "modality": ("CT_SCANNER", free_port())}
    )
    config_file = gateway_config(tmp_path, held_national, gateway_port, pacs.dicom_port)
    write_study("ct-head", tmp_path / "study", seed=4, size="small", identity=IDENTITY)
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files, pacs.dicom_port, called="ORTHANC")
    runner = CliRunner()

    gateway = Gateway(load_config(config_file))
    gateway.start()
    try:
        storescu(files, gateway_port)
        assert gateway.wait_until(
            lambda: [job["state"] for job in gateway.jobs()] == ["submitted"], timeout=60
        ), gateway.jobs()
        # A second gateway on the same workdir would send everything twice: it cannot start.
        with pytest.raises(OSError, match="another gateway, or a restore, is running"):
            Gateway(load_config(config_file))
        backed_up = runner.invoke(
            app, ["gateway-backup", "--config", str(config_file), "--to", str(tmp_path / "bk")]
        )
        assert backed_up.exit_code == 0, backed_up.output
        assert "1 submitted" in backed_up.output
        refused = runner.invoke(
            app,
            ["gateway-restore", "--config", str(config_file), "--from", str(tmp_path / "bk")],
        )
        assert refused.exit_code == 1 and "a gateway is running on" in refused.output
    finally:
        gateway.stop()

    workdir = load_config(config_file).workdir
    lost = workdir.with_name("lost-disk")
    workdir.rename(lost)  # the disk is gone; the secret comes back from the key escrow
    workdir.mkdir(mode=0o700)
    shutil.copy(lost / "secret.key", workdir / "secret.key")
    put_back = runner.invoke(
        app, ["gateway-restore", "--config", str(config_file), "--from", str(tmp_path / "bk")]
    )
    assert put_back.exit_code == 0, put_back.output
    assert "send the studies the PACS sent it after" in " ".join(put_back.output.split())

    held.set()
    gateway = Gateway(load_config(config_file))
    gateway.start()
    try:
        assert gateway.wait_until(
            lambda: [job["state"] for job in gateway.jobs()] == ["delivered"], timeout=120
        ), gateway.jobs()
    finally:
        gateway.stop()
    [sr] = pacs_results(pacs, study_uid)
    assert sr["PatientID"] == IDENTITY["patient_id"]
    assert sr["AccessionNumber"] == IDENTITY["accession_number"]
    with held_national.api() as api:
        [remote] = api.get("/jobs").json()
    assert remote["acknowledged_at"] is not None
    listed = runner.invoke(
        app, ["disclosures", "--config", str(config_file), "--json", str(tmp_path / "d.json")]
    )
    assert listed.exit_code == 0, listed.output
    entries = json.loads((tmp_path / "d.json").read_text())
    assert [e["action"] for e in entries] == ["disclosed", "restored", "reidentified", "delivered"]
    assert os.stat(workdir / "vault.db").st_mode & 0o777 == 0o600


def test_no_gateway_opens_a_workdir_a_restore_holds_or_was_cut_off_in(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway started while a restore works makes no database of its own there (it would be
    put back over, and its `-wal` replayed into the restored one); a restore cut off while it
    puts the backup in place keeps every gateway away until it is run again."""
    config = load_config(hospital.path)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(config, backup)
    lose_the_disk(hospital)
    workdir = config.workdir
    with held_alone(workdir / WORKDIR_LOCK) as alone:  # as the restore holds it
        assert alone
        with pytest.raises(OSError, match="another gateway, or a restore, is running"):
            Gateway(config)
    assert sorted(p.name for p in workdir.iterdir()) == [WORKDIR_LOCK, "secret.key"]
    restore(config, backup)  # the disk's first restore: the databases are there now
    originals = {p.name: p.read_bytes() for p in workdir.glob("*.db")}

    real_replace = os.replace

    def disk_full_at_the_vault(source: Any, target: Any) -> None:
        if Path(target) == workdir / "vault.db":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(backup_module.os, "replace", disk_full_at_the_vault)
    with pytest.raises(BackupError, match="cut off while it put the backup in place"):
        restore(config, backup, replace=True)
    monkeypatch.undo()
    with pytest.raises(OSError, match="a restore into .* was cut off: run `aifi gateway-restore"):
        Gateway(config)
    with pytest.raises(BackupError, match="nothing to back up: a restore into .* was cut off"):
        back_up(config, tmp_path / "mixed")  # the daily backup would hold half of each
    with pytest.raises(BackupError, match="was cut off"):
        restore(config, backup)  # without --replace: it would replace what the first put back
    done = restore(config, backup, replace=True)
    # The workdir's own databases are in the folder the cut-off restore moved them to, and
    # the restore says so first, before the folder of what it replaced itself.
    first, second = done.replaced
    assert {p.name: p.read_bytes() for p in first.glob("*.db")} == originals
    assert second != first and (second / "state.db").exists()
    hospital.gateway = hospital.open()
    [job] = hospital.jobs()
    assert job["state"] == "pending"
    assert hospital.gateway.state.restore_to_reconcile() is not None


def test_a_backup_and_a_restore_putting_files_in_place_never_overlap(
    hospital: Hospital, tmp_path: Path
) -> None:
    config = load_config(hospital.path)
    with held_alone(config.workdir / COPY_LOCK) as alone:  # as a restore's renames hold it
        assert alone
        with pytest.raises(BackupError, match="another backup, or a restore putting files"):
            back_up(config, tmp_path / "backup")
    back_up(config, tmp_path / "backup")
    hospital.close()
    with held_alone(config.workdir / COPY_LOCK) as alone:  # as a backup's copying holds it
        assert alone
        with pytest.raises(BackupError, match="a backup of .* is running"):
            restore(config, tmp_path / "backup", replace=True)
    assert not list(config.workdir.glob(".restore-*"))  # its copy gone, the workdir as it was
    assert not list(config.workdir.glob("replaced-*"))


def test_a_restore_killed_while_it_copied_leaves_no_copy_of_the_vault_behind(
    hospital: Hospital, tmp_path: Path
) -> None:
    """A copy of the vault (patients' identities) left by a restore killed before it changed
    the workdir is removed when a gateway next opens the workdir."""
    config = load_config(hospital.path)
    hospital.close()
    left = config.workdir / ".restore-20261205T000000"
    left.mkdir()
    shutil.copy(config.workdir / "vault.db", left / "vault.db")
    hospital.gateway = hospital.open()
    assert not left.exists()


def test_the_gateway_command_and_its_check_say_why_a_workdir_is_not_free(
    hospital: Hospital,
) -> None:
    """While the harness's gateway holds the workdir: a second `aifi gateway` says why it
    cannot start (no traceback), and `aifi gateway --check` fails the workdir's row."""
    ran = CliRunner().invoke(app, ["gateway", "--config", str(hospital.path)])
    assert ran.exit_code == 1
    assert "cannot start: another gateway, or a restore, is running" in " ".join(ran.output.split())
    [row] = [check for check in preflight(load_config(hospital.path)) if check.name == "workdir"]
    assert not row.ok and "a gateway, or a restore, is running on it" in row.detail


def test_a_study_the_spool_brings_back_without_its_sender_is_not_run_twice(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Routes by sender; the spool put back from a file backup taken after the gateway's
    holds a study received after that backup, which the lost disk sent and brought home.
    Indexed from the spool it has no sender, so no route matches; sent again from the PACS,
    it takes its sender and is routed as the same round, whose key finds the job at the
    exchange: one job, one result."""
    config = yaml.safe_load(hospital.path.read_text())
    config["routes"] = [{**config["routes"][0], "calling_aes": ["CT_SCANNER"]}]
    hospital.path.write_text(yaml.safe_dump(config))
    hospital.close()
    hospital.gateway = hospital.open()
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)  # before the study came
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    bring_home(hospital, hospital.jobs()[0]["exchange_job_id"])
    file_backup = tmp_path / "spool-backup"
    shutil.copytree(hospital.gateway.spool, file_backup)  # the hospital's, after the gateway's
    lose_the_disk(hospital)
    workdir = load_config(hospital.path).workdir
    shutil.copytree(file_backup, workdir / "spool")
    gateway = restored(hospital, backup)

    assert gateway.recover_spool() == len(hospital.files)  # as its start does
    assert hospital.route() == 0  # no sender on record: no route matches
    hospital.receive(*hospital.files)  # the PACS sends it again (guide, section 9)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert job["round"] == 1
    assert hospital.send_due() == [job["id"]]
    assert hospital.jobs()[0]["state"] == "delivered"  # brought home before the restore
    assert len(hospital.exchange_jobs()) == 1


def test_nothing_is_sent_before_the_exchange_said_what_the_lost_disk_did(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The exchange, asked after a restore, answers 429: the sender's pass sends nothing and
    raises, for the sender loop's back-off (not a pass that returns at once, again and again)."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)
    lose_the_disk(hospital)
    restored(hospital, backup)
    passing = hospital.network.handle_request
    asked = []

    def busy(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("idempotency_key"):
            asked.append(request.url)
            return httpx.Response(429, json={"detail": "slow down"}, request=request)
        return passing(request)

    hospital.network.handle_request = busy  # type: ignore[method-assign]
    with pytest.raises(ExchangeHTTPError):
        hospital.send_due()
    assert len(asked) == 1 and hospital.exchange_jobs() == []
    assert hospital.jobs()[0]["state"] == "pending"
    hospital.network.handle_request = passing  # type: ignore[method-assign]
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    assert hospital.jobs()[0]["state"] == "submitted", hospital.jobs()[0]["reason"]


@pytest.mark.parametrize("brought_home", [False, True], ids=["open", "brought-home"])
def test_a_later_round_the_lost_disk_sent_first_keeps_the_earlier_one_from_going_too(
    hospital: Hospital, tmp_path: Path, brought_home: bool
) -> None:
    """Round 1 in a long back-off when a late slice opens round 2; the backup holds both. The
    lost disk sent round 2 (round 1 still waiting), then skipped round 1. After the restore
    round 2 is sent first, found at the exchange, so round 1 is skipped again: one job."""
    first, second = hospital.late_slice_while_unsent(back_off=120)
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)
    assert hospital.send_due() == [second["id"]]
    if brought_home:
        bring_home(hospital, hospital.gateway.state.job(second["id"])["exchange_job_id"])
    assert hospital.send_due(time.time() + 600) == [first["id"]]
    assert hospital.gateway.state.job(first["id"])["state"] == "skipped"
    lose_the_disk(hospital)
    restored(hospital, backup)

    assert hospital.send_due(time.time() + 600) == [second["id"], first["id"]]
    first, second = hospital.jobs()
    assert first["state"] == "skipped", first["reason"]
    assert second["state"] == ("delivered" if brought_home else "submitted"), second["reason"]
    assert len(hospital.exchange_jobs()) == 1


def test_spool_files_missing_without_a_restore_keep_their_job_waiting_not_refused(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool volume not mounted, say: the job waits with the reason, however long, and goes
    once the files are back; only a restore's lost spool leads to a refusal."""
    monkeypatch.setattr(service_module, "SPOOL_GONE_SECONDS", 0.0)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    spool = hospital.gateway.spool
    spool.rename(spool.with_name("spool-unmounted"))
    spool.mkdir()
    for _ in range(3):
        assert hospital.send_due(time.time() + 3600) == [job["id"]]
        [job] = hospital.jobs()
        assert job["state"] == "pending" and "tried again until they are back" in job["reason"]
    spool.rmdir()
    spool.with_name("spool-unmounted").rename(spool)
    assert hospital.send_due(time.time() + 3600) == [job["id"]]
    assert hospital.jobs()[0]["state"] == "submitted"
