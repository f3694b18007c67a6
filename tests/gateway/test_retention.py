"""Retention on the gateway: a study's instances (identifiable), its results and what the vault
kept to re-identify them leave the gateway `retain_hours` after its last job ended, never
while a job is still to send or under way; an instance that meets a purge is refused, not
lost; one that arrives after it opens a new round."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pydicom
import pytest

from aifi.gateway.service import Gateway
from aifi.gateway.state import GatewayState, ReceivedInstance, RoutedJob
from aifi.gateway.vault import Forgotten, Vault
from aifi.phantoms import write_study
from support.national import National, started_gateway
from support.peers import storescu

HOUR = 3600.0
STUDY = "1.2.826.0.1.3680043.10.1.1"


def vault_holds(gateway: Gateway, study_uid: str) -> bool:
    """Whether the vault keeps patient attributes for the study (read from its file)."""
    with sqlite3.connect(gateway.config.workdir / "vault.db") as vault:
        found = vault.execute(
            "SELECT COUNT(*) FROM studies WHERE original_study_uid = ?", (study_uid,)
        ).fetchone()
    return bool(found[0])


def vault_pairs(gateway: Gateway) -> int:
    """How many pseudonym → original UID pairs the vault keeps (read from its file)."""
    with sqlite3.connect(gateway.config.workdir / "vault.db") as vault:
        return int(vault.execute("SELECT COUNT(*) FROM uids").fetchone()[0])


@pytest.mark.peer
def test_a_study_leaves_the_gateway_retain_hours_after_its_job_ended(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=5, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    with started_gateway(tmp_path, national, retain_hours=2) as gateway:
        storescu(files, gateway.port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["delivered"], timeout=60
        ), gateway.jobs()
        [job] = gateway.jobs()
        spool = gateway.spool / job["study_uid"]
        results = gateway.results_dir / str(job["id"])
        assert len(list(spool.glob("*.dcm"))) == len(files)
        assert any(results.iterdir())
        held = sum(file.stat().st_size for file in spool.glob("*.dcm"))
        assert vault_holds(gateway, job["study_uid"])
        assert vault_pairs(gateway) > len(files)  # each instance's, its series', its study's

        # Not before its time...
        assert gateway.purge_expired(now=job["ended_at"] + 2 * HOUR - 1) == 0
        assert len(list(spool.glob("*.dcm"))) == len(files)
        # ...and all of it after.
        assert gateway.purge_expired(now=job["ended_at"] + 2 * HOUR + 1) == 1
        assert not spool.exists()
        assert not results.exists()
        assert not vault_holds(gateway, job["study_uid"])
        assert vault_pairs(gateway) == 0
        assert gateway.state.study_instances(job["study_uid"]) == []
        [study] = gateway.state.query("SELECT * FROM studies")
        assert study["state"] == "purged"
        # What was sent where stays on record, and the byte totals still count the study.
        assert [j["state"] for j in gateway.jobs()] == ["delivered"]
        # So does the disclosure log, by the patient it names: it outlives the study.
        patient = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)
        logged = gateway.disclosures.entries(patient_id=patient)
        assert [e.action for e in logged] == ["disclosed", "reidentified", "delivered"]
        assert gateway.disclosures.verify() == []
        totals = gateway.state.totals()
        assert totals["purged_bytes"] == totals["purged_uploaded_bytes"] == held
        assert totals["purged_instances"] == len(files)

        # The PACS sends part of the study again: a new round of what arrived, not the old one.
        storescu(files[:3], gateway.port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()][1:] in (["delivered"], ["ended"]),
            timeout=60,
        ), gateway.jobs()
        again = gateway.jobs()[1]
        assert again["round"] == 2
        with national.api() as api:
            sent = api.get(f"/jobs/{again['exchange_job_id']}").json()
        assert sent["input_count"] == 3


def _instance(folder: Path, sop: str) -> ReceivedInstance:
    path = folder / STUDY / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 100)
    return ReceivedInstance(
        sop_instance_uid=sop, study_uid=STUDY, series_uid=f"{STUDY}.1", sop_class_uid="1.2",
        modality="CT", body_part="HEAD", study_description="", series_description="",
        path=path, size=100, calling_ae="CT_SCANNER",
    )  # fmt: skip


def _route(state: GatewayState, jobs: list[RoutedJob]) -> None:
    [study] = state.query("SELECT round, due_at FROM studies WHERE study_uid = ?", (STUDY,))
    state.route_study(STUDY, study["round"], study["due_at"], jobs, study_pseudonym=STUDY)


def test_a_study_with_a_job_not_ended_is_kept_whatever_its_age(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    try:
        first = _instance(tmp_path / "spool", f"{STUDY}.1.1")
        state.record_instance(first, quiet_seconds=0)
        _route(state, [RoutedJob("product-a", None, frozenset())])
        [job] = state.query("SELECT id FROM jobs")
        far = time.time() + 1000 * HOUR
        for under_way in ("pending", "submitted"):
            state.update_job(job["id"], state=under_way)
            assert state.purgeable_studies(far, 0) == []
            assert state.purge_study(STUDY, far, 0) is None
            assert first.path.exists()
        ended = time.time()
        state.update_job(job["id"], state="ended", ended_at=ended)
        assert state.purgeable_studies(ended + HOUR - 1, HOUR) == []
        assert state.purgeable_studies(ended + HOUR, HOUR) == [STUDY]
        gone = state.purge_study(STUDY, ended + HOUR, HOUR)
        assert gone is not None and gone.instances == 1 and gone.job_ids == [job["id"]]
        assert not first.path.exists()
        # Sent, then failed at the exchange: its bytes count as uploaded, as before the purge.
        assert state.totals()["purged_uploaded_bytes"] == 100
    finally:
        state.close()


def test_a_study_that_matched_no_route_goes_after_retain_hours(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    try:
        instance = _instance(tmp_path / "spool", f"{STUDY}.1.1")
        state.record_instance(instance, quiet_seconds=0)
        _route(state, [])
        [study] = state.query("SELECT state, routed_at FROM studies")
        assert study["state"] == "unrouted"
        assert state.purge_study(STUDY, study["routed_at"] + HOUR - 1, HOUR) is None
        assert state.purge_study(STUDY, study["routed_at"] + HOUR, HOUR) is not None
        assert not instance.path.exists()
    finally:
        state.close()


def test_an_instance_that_meets_a_purge_is_refused_then_opens_a_new_round(
    tmp_path: Path,
) -> None:
    """The SCP stores an instance's file, then indexes it. A re-sent instance overwrites its
    old file; a purge between the two removes it. Indexing then fails (the C-STORE is answered
    Out of Resources and the sender sends again) instead of acknowledging an instance that is
    gone. A new instance stored meanwhile is not the purge's: it stays, and opens a new round."""
    state = GatewayState(tmp_path / "state.db")
    try:
        first = _instance(tmp_path / "spool", f"{STUDY}.1.1")
        state.record_instance(first, quiet_seconds=0)
        _route(state, [])
        [study] = state.query("SELECT routed_at FROM studies")
        resent = _instance(tmp_path / "spool", f"{STUDY}.1.1")  # stored again, not indexed
        new = _instance(tmp_path / "spool", f"{STUDY}.1.2")  # stored, not indexed
        assert state.purge_study(STUDY, study["routed_at"], 0) is not None
        assert not resent.path.exists()
        assert new.path.exists()
        with pytest.raises(FileNotFoundError, match="vanished"):
            state.record_instance(resent, quiet_seconds=0)
        state.record_instance(new, quiet_seconds=0)
        state.record_instance(_instance(tmp_path / "spool", f"{STUDY}.1.1"), quiet_seconds=0)
        [study] = state.query("SELECT state, round, note FROM studies")
        assert (study["state"], study["round"]) == ("receiving", 2)
        assert "purged" in study["note"]
        assert sorted(row["sop_instance_uid"] for row in state.study_instances(STUDY)) == [
            f"{STUDY}.1.1",
            f"{STUDY}.1.2",
        ]
    finally:
        state.close()


def _remember(vault: Vault, study: str, uids: dict[str, str]) -> None:
    vault.remember(
        {study: f"2.{study}", **uids},
        original_study_uid=study,
        pseudonym_study_uid=f"2.{study}",
        patient_pseudonym="PSEUDO",
        original_attributes={"PatientID": "12345"},
    )


def test_the_vault_forgets_a_purged_studys_pairs_but_not_those_another_study_needs(
    tmp_path: Path,
) -> None:
    """Two studies of one session share their Frame of Reference: purging the first must not
    leave the second's results with a pseudonymised UID in them."""
    vault = Vault(tmp_path / "vault.db")
    try:
        _remember(vault, "1.1", {"1.1.1": "2.1.1.1", "9.9": "2.9.9"})
        _remember(vault, "1.2", {"1.2.1": "2.1.2.1", "9.9": "2.9.9"})
        every = {"2.1.1", "2.1.1.1", "2.1.2", "2.1.2.1", "2.9.9"}
        assert vault.forget_study("1.1") == Forgotten(studies=1, uids=2)
        assert vault.study("2.1.1") is None
        assert vault.study("2.1.2") == ("1.2", {"PatientID": "12345"})
        assert vault.original_uids(every) == {"2.1.2": "1.2", "2.1.2.1": "1.2.1", "2.9.9": "9.9"}
        assert vault.forget_study("1.2") == Forgotten(studies=1, uids=3)
        assert vault.original_uids(every) == {}
        assert vault.forget_study("1.2") == Forgotten(studies=0, uids=0)
        # A later round of the study remembers its pairs again.
        _remember(vault, "1.1", {"1.1.1": "2.1.1.1"})
        assert vault.original_uid("2.1.1.1") == "1.1.1"
    finally:
        vault.close()


def test_a_vault_from_before_keeps_the_pairs_it_cannot_tie_to_a_study(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with sqlite3.connect(path) as old:
        old.executescript(  # the tables it had then
            "CREATE TABLE uids (pseudonym TEXT PRIMARY KEY, original TEXT NOT NULL);"
            "CREATE TABLE studies (pseudonym_study_uid TEXT PRIMARY KEY, original_study_uid "
            "TEXT NOT NULL, patient_pseudonym TEXT NOT NULL, original_attributes TEXT NOT NULL);"
        )
        old.execute("INSERT INTO uids VALUES ('2.5.5', '1.5.5')")
    vault = Vault(path)
    try:
        _remember(vault, "1.1", {"1.1.1": "2.1.1.1"})
        assert vault.forget_study("1.1") == Forgotten(studies=1, uids=2)
        assert vault.original_uid("2.5.5") == "1.5.5"
    finally:
        vault.close()


def test_a_study_reopened_before_its_turn_in_a_sweep_keeps_what_the_vault_holds(
    tmp_path: Path,
) -> None:
    """A sweep lists the purgeable studies, then purges them one by one. If an instance
    reopens one before its turn, its new round may already have remembered its pairs: the
    vault is told to forget only once the study is found purgeable, under the state's lock."""
    state = GatewayState(tmp_path / "state.db")
    forgotten: list[str] = []
    try:
        state.record_instance(_instance(tmp_path / "spool", f"{STUDY}.1.1"), quiet_seconds=0)
        _route(state, [])
        [study] = state.query("SELECT routed_at FROM studies")
        assert state.purgeable_studies(study["routed_at"], 0) == [STUDY]
        state.record_instance(_instance(tmp_path / "spool", f"{STUDY}.1.2"), quiet_seconds=0)
        assert state.purge_study(STUDY, study["routed_at"], 0, forget=forgotten.append) is None
        assert forgotten == []
        _route(state, [])
        [study] = state.query("SELECT routed_at FROM studies")
        assert state.purge_study(STUDY, study["routed_at"], 0, forget=forgotten.append)
        assert forgotten == [STUDY]
    finally:
        state.close()
