"""Ended exchange jobs a gateway has no record of (`aifi gateway-unknown-jobs`): made by a disk a
restore replaced, they are listed with the patient the vault knows them by, and the hospital
adopts them (their results come home once, under the patient's identity) or lets them go
(acknowledged unbrought); either way the disclosure log gets back what left.

Against a real exchange and vendor worker, the gateway driven as its threads drive it
(support.hospital).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway.backup import RESTORING, back_up
from aifi.gateway.config import load_config
from aifi.gateway.state import ADOPTED
from aifi.gateway.unknown_jobs import UnknownJobsError, decide, unknown_jobs
from support.hospital import Hospital
from support.restore import bring_home, lose_the_disk, restored, until_ended

pytestmark = pytest.mark.peer


def command(hospital: Hospital, *options: str) -> tuple[int, str]:
    """`aifi gateway-unknown-jobs` as a hospital IT engineer runs it: its exit code and what
    it printed."""
    result = CliRunner().invoke(
        app,
        ["gateway-unknown-jobs", "--config", str(hospital.path), *options],
        env={"COLUMNS": "200"},
    )
    return result.exit_code, " ".join(result.output.split())


def late_round_made_by_the_lost_disk(hospital: Hospital, tmp_path: Path) -> str:
    """Round 1 sent and brought home, then backed up with the spool; after the backup the
    late slice opened round 2, which the lost disk sent. The restored gateway has no record of
    round 2's job, whose study the vault knows (from round 1). That exchange job, ended."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [first] = hospital.jobs()
    assert hospital.send_due() == [first["id"]]
    bring_home(hospital, hospital.jobs()[0]["exchange_job_id"])
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup, spool=True)
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    second = hospital.jobs()[1]
    assert hospital.send_due() == [second["id"]]
    exchange_id = str(hospital.gateway.state.job(second["id"])["exchange_job_id"])
    lose_the_disk(hospital)
    restored(hospital, backup)
    hospital.gateway.reconcile_restore()
    until_ended(hospital, exchange_id)
    return exchange_id


def test_a_round_the_lost_disk_made_is_listed_and_once_adopted_comes_home_once(
    hospital: Hospital, tmp_path: Path
) -> None:
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    gateway = hospital.gateway
    config = load_config(hospital.path)
    original = pydicom.dcmread(hospital.files[0], stop_before_pixels=True)

    # Met by the results thread, it is left unacknowledged: the gateway does not know it.
    gateway._bring_home()
    assert all(job["exchange_job_id"] != exchange_id for job in hospital.jobs())
    assert gateway._retry_at[exchange_id] > time.time() + 200  # met again in five minutes
    [listed] = unknown_jobs(config, gateway.client)
    assert listed.exchange_job_id == exchange_id and listed.decision is None
    assert (listed.study_uid, listed.patient_id) == (original.StudyInstanceUID, original.PatientID)
    assert listed.instances == len(hospital.files) + 1
    code, shown = command(hospital)
    assert code == 0 and exchange_id in shown and original.StudyInstanceUID in shown, shown

    code, shown = command(hospital, "--adopt", exchange_id, "--by", "pacs admin")
    assert code == 0, shown
    assert f"decided: adopt exchange job {exchange_id}" in shown
    assert "adopt" in shown.split(exchange_id)[-1]  # listed as decided, not done yet

    # The next pass does it, without waiting for the five minutes an unknown job waits.
    gateway._bring_home()
    adopted = [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    assert len(adopted) == 1, hospital.jobs()
    [job] = adopted
    assert (job["state"], job["round"], job["reason"]) == ("delivered", 0, ADOPTED)
    assert job["study_uid"] == original.StudyInstanceUID
    [result] = (gateway.results_dir / str(job["id"]) / "reidentified").glob("*.dcm")
    header = pydicom.dcmread(result, stop_before_pixels=True)
    assert (header.StudyInstanceUID, header.PatientID) == (
        original.StudyInstanceUID,
        original.PatientID,
    )
    [remote] = [j for j in hospital.exchange_jobs() if j["id"] == exchange_id]
    assert remote["acknowledged_at"] is not None
    # What left the hospital for it, lost with the restore, is on the log again: once.
    entries = gateway.disclosures.entries(study_uid=original.StudyInstanceUID)
    [disclosed] = [e for e in entries if e.detail.startswith(f"exchange job {exchange_id}:")]
    assert disclosed.action == "disclosed" and disclosed.patient_id == original.PatientID
    assert "adopted (decided by pacs admin)" in disclosed.detail
    assert [e.action for e in entries][-2:] == ["disclosed", "reidentified"]

    gateway._bring_home()  # nothing more: adopted once, brought home once
    assert len([j for j in hospital.jobs() if j["exchange_job_id"] == exchange_id]) == 1
    assert unknown_jobs(config, gateway.client) == []
    code, shown = command(hospital)
    assert code == 0 and "none: every ended job" in shown


def test_a_job_whose_study_the_vault_lacks_is_let_go_and_its_study_sent_again_runs_anew(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The backup predates the study: the vault cannot map the job's results back, so it
    cannot be adopted. Let go, it is acknowledged unbrought, and on the log without a
    patient. Sent again from the PACS afterwards, the study goes as a new job, whose results
    come home: the one let go is not taken as brought home."""
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    exchange_id = str(hospital.gateway.state.job(job["id"])["exchange_job_id"])
    lose_the_disk(hospital)
    gateway = restored(hospital, backup)
    gateway.reconcile_restore()
    until_ended(hospital, exchange_id)

    [listed] = unknown_jobs(load_config(hospital.path), gateway.client)
    assert listed.study_uid is None
    code, shown = command(hospital)
    assert "not in the vault" in shown
    code, shown = command(hospital, "--adopt", exchange_id)
    assert code == 1 and "the vault does not know the study" in shown, shown
    code, shown = command(hospital, "--adopt", "no-such-job")
    assert code == 1 and "not an ended job of this hospital" in shown, shown
    code, shown = command(hospital, "--adopt", exchange_id, "--let-go", exchange_id)
    assert code == 1 and "both adopted and let go" in shown, shown
    assert unknown_jobs(load_config(hospital.path), gateway.client)[0].decision is None

    code, shown = command(hospital, "--let-go", exchange_id, "--by", "pacs admin")
    assert code == 0 and f"decided: let go exchange job {exchange_id}" in shown, shown
    gateway._bring_home()
    assert hospital.jobs() == []
    [remote] = hospital.exchange_jobs()
    assert remote["acknowledged_at"] is not None
    [entry] = [e for e in gateway.disclosures.entries() if e.action == "disclosed"]
    assert (entry.patient_id, entry.study_uid) == ("(not in the vault)", remote["study_uid"])
    assert "let go: its results are not brought home (decided by pacs admin)" in entry.detail

    hospital.receive(*hospital.files)  # sent again from the PACS
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]  # finds the job let go by its key
    job = gateway.state.job(job["id"])
    assert job["state"] == "pending" and "was let go unbrought" in job["reason"], job
    assert hospital.send_due() == [job["id"]]
    first, again = hospital.exchange_jobs()
    assert first["id"] == exchange_id and again["id"] != exchange_id
    bring_home(hospital, again["id"])
    assert gateway.state.job(job["id"])["state"] == "delivered"


def test_a_job_a_round_sent_again_may_link_is_left_until_that_round_is_sent(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Adopted while the late slice, sent again from the PACS, waits as a round of its own
    whose key is the unknown job's: adopted then, and then found by that round's send, it
    would come home twice. It waits, the round's send links it, and it comes home once."""
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    gateway = hospital.gateway
    code, shown = command(hospital, "--adopt", exchange_id)
    assert code == 0, shown
    hospital.receive(hospital.late)
    assert hospital.route() == 1  # round 2, its job pending

    gateway._bring_home()
    assert not [j for j in hospital.jobs() if j["exchange_job_id"] == exchange_id]
    [listed] = unknown_jobs(load_config(hospital.path), gateway.client)
    assert listed.decision == "adopt" and "waiting to be sent" in listed.note

    second = hospital.jobs()[-1]
    assert hospital.send_due() == [second["id"]]
    assert gateway.state.job(second["id"])["exchange_job_id"] == exchange_id
    gateway._retry_at.clear()  # its retry come round
    gateway._bring_home()
    [job] = [j for j in hospital.jobs() if j["exchange_job_id"] == exchange_id]
    assert job["id"] == second["id"] and job["state"] == "delivered", job
    assert len(hospital.jobs()) == 2


def test_no_decision_is_taken_while_a_restore_holds_the_workdir(
    hospital: Hospital, tmp_path: Path
) -> None:
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    config = load_config(hospital.path)
    marker = config.workdir / RESTORING
    marker.write_text(json.dumps({"backup": "/backups/monday", "replaced": "replaced-x"}))
    with pytest.raises(UnknownJobsError, match="a restore into .* was cut off"):
        decide(config, adopt=[exchange_id], let_go=[], by="test", client=hospital.gateway.client)
    marker.unlink()
    (config.workdir / "state.db").rename(config.workdir / "elsewhere.db")
    with pytest.raises(UnknownJobsError, match="state.db does not exist"):
        decide(config, adopt=[exchange_id], let_go=[], by="test", client=hospital.gateway.client)
    assert not (config.workdir / "state.db").exists()  # not made by the command
