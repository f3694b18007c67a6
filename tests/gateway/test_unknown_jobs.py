"""Ended exchange jobs a gateway has no record of (`aifi gateway-unknown-jobs`): made by a disk a
restore replaced, they are listed with the patient the vault knows them by, and the hospital
adopts them (their results come home once, under the patient's identity) or lets them go
(acknowledged unbrought); either way the disclosure log gets back what left.

Against a real exchange and vendor worker, the gateway driven as its threads drive it
(support.hospital).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway import service as service_module
from aifi.gateway import unknown_jobs as unknown_jobs_module
from aifi.gateway.backup import RESTORING, back_up
from aifi.gateway.config import load_config
from aifi.gateway.metrics import gateway_registry
from aifi.gateway.service import Gateway
from aifi.gateway.state import ADOPTED, GatewayState, decide_unknown_jobs
from aifi.gateway.unknown_jobs import UnknownJobsError, decide, unknown_jobs
from support.hospital import Hospital, acknowledgements_lost, disclosure_log_full, refuses
from support.national import national_path
from support.restore import bring_home, lose_the_disk, restored, until_ended

pytestmark = pytest.mark.peer


@pytest.fixture(autouse=True)
def decided_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs here ended moments ago; a hospital waits an hour before deciding
    (`DECIDE_AFTER_SECONDS`), which one test keeps."""
    monkeypatch.setattr(unknown_jobs_module, "DECIDE_AFTER_SECONDS", 0.0)


def command(hospital: Hospital, *options: str) -> tuple[int, str]:
    """`aifi gateway-unknown-jobs` as a hospital IT engineer runs it: its exit code and what
    it printed."""
    result = CliRunner().invoke(
        app,
        ["gateway-unknown-jobs", "--config", str(hospital.path), *options],
        env={"COLUMNS": "200"},
    )
    return result.exit_code, " ".join(result.output.split())


def exported_unknown(gateway: Gateway) -> float | None:
    """What the gateway's exporter says of the exchange jobs it has no record of."""
    registry = gateway_registry(gateway.state, unknown_jobs=gateway.unknown_jobs_left)
    return registry.get_sample_value("aifi_gateway_unknown_exchange_jobs")


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


def decided(hospital: Hospital, tmp_path: Path, decision: str) -> str:
    """The lost disk's round 2 (`late_round_made_by_the_lost_disk`), and the hospital's
    decision for it (adopt | let_go) recorded by "pacs admin". That exchange job."""
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    decide(
        load_config(hospital.path),
        adopt=[exchange_id] if decision == "adopt" else [],
        let_go=[exchange_id] if decision == "let_go" else [],
        by="pacs admin",
        client=hospital.gateway.client,
    )
    return exchange_id


def adopted_then_refused_by_the_disk(hospital: Hospital, tmp_path: Path, write: str) -> str:
    """Adopted (`decided`), the adoption begun, and then the state's disk refuses `write`:
    `adopt` (the job row; its disclosure entry is written and marked) or `unknown_disclosed`
    (the mark of the entry, written). That exchange job."""
    exchange_id = decided(hospital, tmp_path, "adopt")
    state = hospital.gateway.state

    def disk_full(*_args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    setattr(state, write, disk_full)
    try:
        hospital.gateway._bring_home()
    finally:
        delattr(state, write)
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
    assert exported_unknown(gateway) == 1.0  # the monitoring sees it
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
    # Its turnaround counts from when the lost disk made it, not from the adoption.
    made = datetime.fromisoformat(listed.ended_at).timestamp()
    assert job["study_last_at"] < made
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
    assert [e.action for e in entries][-3:] == ["disclosed", "reidentified", "delivered"]

    assert exported_unknown(gateway) == 0.0
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
    assert remote["delivery"] == "let_go"  # the exchange knows its results stayed there
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


def test_a_job_let_go_is_acknowledged_again_if_its_acknowledgement_was_lost(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Done, a decision stands: the job let go is acknowledged at every pass until the
    exchange has it, listed meanwhile as done, and not to be decided again."""
    exchange_id = decided(hospital, tmp_path, "let_go")
    gateway, config = hospital.gateway, load_config(hospital.path)
    acknowledgements_lost(hospital)
    gateway._bring_home()
    del hospital.network.handle_request  # the exchange reachable again
    [listed] = unknown_jobs(config, gateway.client)
    assert listed.decision == "let_go" and "acknowledgement has not reached" in listed.note
    with pytest.raises(UnknownJobsError, match=r"let go \(decided by pacs admin\) is done"):
        decide(config, adopt=[exchange_id], let_go=[], by="someone else", client=gateway.client)
    code, shown = command(hospital, "--let-go", exchange_id)  # as decided: it stands
    assert code == 0 and f"decided: let go exchange job {exchange_id}" in shown, shown
    # The late slice sent again meanwhile: its round's key finds the job let go, not yet
    # acknowledged, and goes as a new job rather than take it.
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    assert hospital.send_due() == [again["id"]]
    assert "was let go unbrought" in gateway.state.job(again["id"])["reason"]

    gateway._retry_at.clear()
    gateway._bring_home()
    [remote] = [job for job in hospital.exchange_jobs() if job["id"] == exchange_id]
    assert remote["acknowledged_at"] is not None and remote["delivery"] == "let_go"
    assert unknown_jobs(config, gateway.client) == []
    assert len([e for e in gateway.disclosures.entries() if exchange_id in e.detail]) == 1
    assert hospital.send_due() == [again["id"]]
    assert gateway.state.job(again["id"])["exchange_job_id"] not in (None, exchange_id)


def test_a_decision_the_gateway_has_begun_to_do_is_not_changed(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Changed while the gateway does it (between its read and its record), a decision would
    be done one way and recorded the other: adopted, yet taken as let go when the round is
    sent again (run twice); or let go, yet taken as brought home (never delivered)."""
    exchange_id = decided(hospital, tmp_path, "adopt")
    gateway, config = hospital.gateway, load_config(hospital.path)
    looked_up = gateway.client.product
    refused: list[str] = []

    def second_thoughts(product_id: str) -> dict[str, object]:
        try:
            decide(config, adopt=[], let_go=[exchange_id], by="later", client=gateway.client)
        except UnknownJobsError as exc:
            refused.append(str(exc))
        return looked_up(product_id)

    gateway.client.product = second_thoughts  # type: ignore[method-assign]
    try:
        gateway._bring_home()
    finally:
        del gateway.client.product
    assert refused and "is being done by the gateway" in refused[0], refused
    [adopted] = [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    assert adopted["state"] == "delivered"
    assert not gateway.state.was_let_go(exchange_id)


def test_a_job_let_go_that_never_opened_went_to_the_exchange_alone_and_its_study_goes_anew(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The lost disk's job broke off half-uploaded and ended unopened (expired, say): let
    go, the log says its instances went to the exchange, not to a vendor; the study sent
    again goes as a new job, not refused for the one that ended."""
    backup = tmp_path / "backup"
    back_up(load_config(hospital.path), backup)
    opened = hospital.part_sent_then_broken_off()
    exchange_id = str(opened["id"])
    lose_the_disk(hospital)
    gateway = restored(hospital, backup)
    gateway.reconcile_restore()
    with hospital.national.api() as api:  # ended at the exchange, its inputs never complete
        api.post(f"/jobs/{exchange_id}/cancel", json={"reason": "expired"}).raise_for_status()
    ended = until_ended(hospital, exchange_id)
    assert not ended["inputs_complete"] and int(ended["input_count"]) > 0
    config = load_config(hospital.path)
    decide(config, adopt=[], let_go=[exchange_id], by="pacs admin", client=gateway.client)
    gateway._bring_home()
    [entry] = [e for e in gateway.disclosures.entries() if e.action == "disclosed"]
    assert entry.recipient == "the exchange" and "before it opened" in entry.detail, entry

    hospital.receive(*hospital.files)  # sent again from the PACS
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    assert "was let go unbrought" in gateway.state.job(job["id"])["reason"]
    assert hospital.send_due() == [job["id"]]
    sent = gateway.state.job(job["id"])
    assert sent["state"] == "submitted" and sent["exchange_job_id"] != exchange_id, sent
    disclosed = [e for e in gateway.disclosures.entries() if e.action == "disclosed"]
    assert [e.detail.split(":")[0] for e in disclosed] == [
        f"exchange job {exchange_id}",
        f"exchange job {sent['exchange_job_id']}",
    ]


def test_a_job_is_left_while_its_study_is_received_again(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The late slice sent again, not yet routed: its round's job may be the unknown one, and
    the decision waits."""
    exchange_id = decided(hospital, tmp_path, "adopt")
    gateway, config = hospital.gateway, load_config(hospital.path)
    hospital.receive(hospital.late)  # the study is being received again
    gateway._bring_home()
    assert not [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    [listed] = unknown_jobs(config, gateway.client)
    assert "being received again" in listed.note


def test_a_round_sent_after_its_job_was_adopted_is_skipped_not_linked_twice(
    hospital: Hospital, tmp_path: Path
) -> None:
    exchange_id = decided(hospital, tmp_path, "adopt")
    gateway = hospital.gateway
    acknowledgements_lost(hospital)  # the adopted job's end not acknowledged yet, too
    gateway._bring_home()
    del hospital.network.handle_request
    [adopted] = [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]

    hospital.receive(hospital.late)  # sent again from the PACS after the adoption
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    assert hospital.send_due() == [again["id"]]
    again = gateway.state.job(again["id"])
    assert again["state"] == "skipped" and f"job {adopted['id']}'s, adopted" in again["reason"]
    assert again["exchange_job_id"] is None
    assert len(hospital.exchange_jobs()) == 2  # round 1's and the adopted one: none new
    # Sent again unchanged, the study is nothing new, as after any round that succeeded.
    hospital.receive(*hospital.files, hospital.late)
    assert hospital.route() == 0
    assert len(hospital.exchange_jobs()) == 2


def test_a_round_with_more_instances_than_its_adopted_job_goes_as_a_new_job(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Skipped, the round's extra instance would never be sent."""
    exchange_id = decided(hospital, tmp_path, "adopt")
    gateway = hospital.gateway
    gateway._bring_home()
    extra = pydicom.dcmread(hospital.late)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra.InstanceNumber = int(extra.InstanceNumber) + 1
    extra.save_as(tmp_path / "extra.dcm")
    hospital.receive(hospital.late, tmp_path / "extra.dcm")
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    assert hospital.send_due() == [again["id"]]
    assert "holds other instances" in gateway.state.job(again["id"])["reason"]
    assert hospital.send_due() == [again["id"]]
    sent = gateway.state.job(again["id"])
    assert sent["state"] == "submitted" and sent["exchange_job_id"] != exchange_id
    assert hospital.pseudonyms(tmp_path / "extra.dcm") <= hospital.inputs(sent["exchange_job_id"])


def test_what_is_kept_of_jobs_another_gateway_brought_home_goes(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Met here, brought home by another gateway on the hospital's account: forgotten at
    the next full listing, not kept for ever (nor named in a query that would outgrow
    SQLite's limit)."""
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    gateway = hospital.gateway
    gateway._bring_home()
    assert exchange_id in gateway.adoptions.met and exchange_id in gateway._retry_at
    gateway.client.acknowledge(exchange_id)  # the other gateway brought it home
    gateway.adoptions.met.update({f"other-{n}": 1.0 for n in range(40_000)})
    gateway._bring_home()
    assert gateway.adoptions.met == {} and exchange_id not in gateway._retry_at


def test_a_decision_the_disk_refuses_is_tried_once_a_minute_not_in_a_loop(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    gateway, config = hospital.gateway, load_config(hospital.path)
    gateway._bring_home()  # met
    decide(config, adopt=[exchange_id], let_go=[], by="pacs admin", client=gateway.client)
    tries: list[str] = []

    def disk_full(exchange_job_id: str, decision: str, study_uid: str | None) -> bool:
        tries.append(exchange_job_id)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(gateway.state, "take_unknown_decision", disk_full)
    for _ in range(3):
        gateway._bring_home()
    assert tries == [exchange_id]
    assert gateway._retry_at[exchange_id] > time.time() + 30


def test_a_decision_begun_and_cut_short_is_finished_not_changed(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The adoption's entry written, its job row refused by the disk: the decision stays
    begun (its entry names it), the command cannot change it, and the next pass finishes it,
    even with a round of the study now waiting to be sent."""
    exchange_id = adopted_then_refused_by_the_disk(hospital, tmp_path, "adopt")
    gateway = hospital.gateway
    assert gateway.state.unknown_decision(exchange_id)["taken_at"] is not None
    code, shown = command(hospital, "--let-go", exchange_id)
    assert code == 1 and "is being done by the gateway" in shown, shown
    hospital.receive(hospital.late)
    assert hospital.route() == 1  # a round whose key is the job's, waiting to be sent
    gateway._retry_at.clear()
    gateway._bring_home()
    [adopted] = [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    assert adopted["state"] == "delivered" and adopted["round"] == 0
    assert hospital.send_due() == [hospital.jobs()[-2]["id"]]
    assert hospital.jobs()[-2]["state"] == "skipped"


def test_no_job_is_decided_for_within_an_hour_of_its_end(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second gateway on the hospital's account brings its own jobs home moments after
    they end; until then this one lists them too, and must not take them."""
    exchange_id = late_round_made_by_the_lost_disk(hospital, tmp_path)
    monkeypatch.setattr(unknown_jobs_module, "DECIDE_AFTER_SECONDS", 3600.0)
    code, shown = command(hospital, "--let-go", exchange_id)
    assert code == 1 and "ended less than 60 minutes ago" in shown, shown
    assert unknown_jobs(load_config(hospital.path), hospital.gateway.client)[0].decision is None


def test_a_let_go_begun_is_never_given_back_as_a_round_may_have_gone_anew_for_it(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The log's disk full as the let-go is written: it stays begun (a round sent meanwhile
    went as a new job for it, and an adoption now would run the product twice), and is
    finished once the log can be written."""
    exchange_id = decided(hospital, tmp_path, "let_go")
    gateway = hospital.gateway
    gateway.disclosures.record = disclosure_log_full  # type: ignore[method-assign,assignment]
    try:
        gateway._bring_home()
    finally:
        del gateway.disclosures.record
    assert gateway.state.unknown_decision(exchange_id)["taken_at"] is not None
    code, shown = command(hospital, "--adopt", exchange_id)
    assert code == 1 and "is being done by the gateway" in shown, shown
    gateway._retry_at.clear()
    gateway._bring_home()
    [remote] = [job for job in hospital.exchange_jobs() if job["id"] == exchange_id]
    assert remote["acknowledged_at"] is not None


def test_an_adoption_cut_short_whose_study_left_the_vault_is_let_go_with_one_entry(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Its entry written, its job row refused by the disk, and before the next pass the
    study's retention ends: its results can no longer be mapped back. Let go instead, and
    acknowledged; the log keeps the one entry, naming the adoption."""
    exchange_id = adopted_then_refused_by_the_disk(hospital, tmp_path, "adopt")
    gateway = hospital.gateway
    [study] = {job["study_uid"] for job in hospital.jobs()}
    gateway.vault.forget_study(study)  # its retention ended
    gateway._retry_at.clear()
    gateway._bring_home()
    assert not [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    [remote] = [job for job in hospital.exchange_jobs() if job["id"] == exchange_id]
    assert remote["acknowledged_at"] is not None and remote["delivery"] == "let_go"
    [entry] = [d for d in hospital.disclosed() if d.startswith(f"exchange job {exchange_id}:")]
    assert "adopted (decided by pacs admin)" in entry
    assert gateway.state.was_let_go(exchange_id)
    assert "left the vault" in gateway.state.unknown_decision(exchange_id)["note"]


def test_a_round_is_not_skipped_for_an_adopted_job_the_exchange_failed(tmp_path: Path) -> None:
    """The adopted job's end not recorded yet (its collect cut short by the disk), but failed
    at the exchange: a round sent meanwhile goes as a new job, not skipped for it."""
    with national_path(tmp_path, product=refuses) as national:
        hospital = Hospital(national, tmp_path)
        try:
            exchange_id = decided(hospital, tmp_path, "adopt")
            gateway = hospital.gateway
            updating = gateway.state.update_job

            def disk_hiccup(job_id: int, **values: object) -> None:
                if "result_seen_at" in values:
                    raise sqlite3.OperationalError("disk I/O error")
                updating(job_id, **values)

            gateway.state.update_job = disk_hiccup  # type: ignore[method-assign]
            try:
                gateway._bring_home()
            finally:
                del gateway.state.update_job
            [adopted] = [j for j in hospital.jobs() if j["exchange_job_id"] == exchange_id]
            assert adopted["state"] == "submitted"
            hospital.receive(hospital.late)
            assert hospital.route() == 1
            again = hospital.jobs()[-1]
            assert hospital.send_due() == [again["id"]]
            assert "ended without results" in gateway.state.job(again["id"])["reason"]
            assert gateway.state.job(again["id"])["state"] == "pending"
        finally:
            hospital.close()


def test_the_count_of_unknown_jobs_is_exported_when_the_state_does_not_answer(
    tmp_path: Path,
) -> None:
    state = GatewayState(tmp_path / "state.db")
    state.close()  # a state that does not answer (its disk failing, say)
    registry = gateway_registry(state, unknown_jobs=lambda: 3)
    assert registry.get_sample_value("aifi_gateway_state_up") == 0.0
    assert registry.get_sample_value("aifi_gateway_unknown_exchange_jobs") == 3.0


def sent_again_then_refused(hospital: Hospital, monkeypatch: pytest.MonkeyPatch) -> int:
    """The late slice sent again: its round's first create has no answer, and before its
    retry the product's manifest no longer takes the study, so the job is refused, looking
    up by its key what the lost answer may have made. That job."""
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    hospital.network.lose_creation_answers = True
    assert hospital.send_due() == [again["id"]]
    hospital.network.lose_creation_answers = False
    row = hospital.gateway.state.job(again["id"])
    assert (row["state"], row["may_be_open"], row["exchange_job_id"]) == ("pending", 1, None)
    monkeypatch.setattr(service_module, "_accepted", lambda *_args: False)
    assert hospital.send_due(time.time() + 86400) == [again["id"]]
    return int(again["id"])


@pytest.mark.parametrize("decision", ["adopt", "let_go"])
def test_a_refused_round_does_not_take_an_exchange_job_adopted_or_let_go(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decision: str
) -> None:
    """Its key finds the exchange job the hospital decided for: taken, it would stay
    submitted for ever (adopted), or count as brought home (let go). It is refused with
    nothing of its own at the exchange."""
    exchange_id = decided(hospital, tmp_path, decision)
    gateway = hospital.gateway
    gateway._bring_home()
    again = sent_again_then_refused(hospital, monkeypatch)
    refused = gateway.state.job(again)
    assert refused["state"] == "refused" and refused["exchange_job_id"] is None, refused
    assert len([j for j in hospital.jobs() if j["exchange_job_id"] == exchange_id]) == (
        1 if decision == "adopt" else 0
    )


def test_an_adoption_whose_entry_was_written_but_not_marked_gets_no_second_entry(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The entry written, the state's record of it not (its disk): when the study then leaves
    the vault, the adoption is let go under the study it was taken for, where the entry is
    found."""
    exchange_id = adopted_then_refused_by_the_disk(hospital, tmp_path, "unknown_disclosed")
    gateway, state = hospital.gateway, hospital.gateway.state
    held = state.unknown_decision(exchange_id)
    assert held["taken_at"] is not None and held["disclosed_at"] is None
    [study] = {job["study_uid"] for job in hospital.jobs()}
    gateway.vault.forget_study(study)
    gateway._retry_at.clear()
    gateway._bring_home()
    [entry] = [d for d in hospital.disclosed() if d.startswith(f"exchange job {exchange_id}:")]
    assert "adopted (decided by pacs admin)" in entry
    assert gateway.state.was_let_go(exchange_id)


def test_a_state_of_an_earlier_version_gets_the_decisions_columns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    GatewayState(path).close()
    db = sqlite3.connect(path)
    for column in ("taken_at", "disclosed_at", "study_uid"):
        db.execute(f"ALTER TABLE unknown_jobs DROP COLUMN {column}")
    db.execute(
        "INSERT INTO unknown_jobs (exchange_job_id, decision, decided_at, decided_by) "
        "VALUES ('x', 'let_go', 0, 'pacs admin')"
    )
    db.commit()
    db.close()
    decide_unknown_jobs(path, {"y": "adopt"}, "pacs admin")  # the command, before a start
    state = GatewayState(path)
    try:
        assert state.take_unknown_decision("x", "let_go", "2.25.1")
        state.unknown_disclosed("x")
        assert state.unknown_decision("x")["disclosed_at"] is not None
        assert state.unknown_decision("y")["decision"] == "adopt"
    finally:
        state.close()


def test_an_adoption_taken_by_an_earlier_version_keeps_its_one_entry(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Begun before the decision kept its study (NULL once the column is added), its entry
    written but not marked: it is found under the study the earlier version wrote it under."""
    exchange_id = adopted_then_refused_by_the_disk(hospital, tmp_path, "unknown_disclosed")
    gateway, state = hospital.gateway, hospital.gateway.state
    with state.transaction() as db:
        db.execute("UPDATE unknown_jobs SET study_uid = NULL")  # as the column is added
    gateway._retry_at.clear()
    gateway._bring_home()
    assert (
        len([d for d in hospital.disclosed() if d.startswith(f"exchange job {exchange_id}:")]) == 1
    )
    [adopted] = [job for job in hospital.jobs() if job["exchange_job_id"] == exchange_id]
    assert adopted["state"] == "delivered"


def test_a_job_a_second_restore_links_to_a_job_let_go_is_not_taken_as_brought_home(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The late slice received again after a let-go: its round's key is the let-go job's. A
    second restore, from a backup holding that round unsent, must not link it to the let-go
    job, which a refusal would then take as brought home (delivered, with nothing in the
    PACS)."""
    exchange_id = decided(hospital, tmp_path, "let_go")
    hospital.gateway._bring_home()
    assert hospital.gateway.state.was_let_go(exchange_id)
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    again = hospital.jobs()[-1]
    second = tmp_path / "second-backup"
    back_up(load_config(hospital.path), second, spool=True)
    shutil.rmtree(load_config(hospital.path).workdir.with_name("lost-disk"))
    lose_the_disk(hospital)
    restored(hospital, second).reconcile_restore()
    assert hospital.gateway.state.job(again["id"])["exchange_job_id"] is None
    monkeypatch.setattr(service_module, "_accepted", lambda *_args: False)
    assert hospital.send_due(time.time() + 86400) == [again["id"]]
    refused = hospital.gateway.state.job(again["id"])
    assert refused["state"] == "refused" and refused["exchange_job_id"] is None, refused
