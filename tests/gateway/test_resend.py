"""A study sent to the gateway again — by the PACS's forwarding rule, or a technologist who was
not sure it went — is analysed once: one study, one result in the PACS. A re-send tries again
only where that helps: the last round failed, or the study matched no route. New instances
always open a follow-up round."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from aifi.gateway.config import Route
from aifi.gateway.routing import route_study
from aifi.gateway.state import GatewayState, ReceivedInstance, RoutedJob
from aifi.phantoms import write_study
from support.hospital import Hospital
from support.national import National, started_gateway
from support.peers import storescu

STUDY = "1.2.826.0.1.3680043.10.1.2"
FIRST, SECOND = f"{STUDY}.1.1", f"{STUDY}.1.2"


@pytest.mark.peer
def test_a_study_sent_again_after_its_result_was_delivered_is_not_analysed_again(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=6, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    with started_gateway(tmp_path, national) as gateway:
        storescu(files, gateway.port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["delivered"], timeout=60
        ), gateway.jobs()
        storescu(files, gateway.port)  # every instance acknowledged again
        # Each instance is indexed before its C-STORE is answered: the study's state is final.
        [study] = gateway.state.query("SELECT state, round, note FROM studies")
        assert (study["state"], study["round"]) == ("routed", 1), study
        assert "sent again" in study["note"]
        assert len(gateway.jobs()) == 1
        assert len(gateway.state.study_instances(gateway.jobs()[0]["study_uid"])) == len(files)
    with national.api() as api:
        assert len(api.get("/jobs").json()) == 1


def _instance(folder: Path, sop: str, calling_ae: str = "PACS") -> ReceivedInstance:
    """An instance of the study received from `calling_ae` (none: as the gateway's start
    indexes it from the spool)."""
    path = folder / STUDY / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 10)
    return ReceivedInstance(
        sop_instance_uid=sop, study_uid=STUDY, series_uid=f"{STUDY}.1", sop_class_uid="1.2",
        modality="CT", body_part="HEAD", study_description="", series_description="",
        path=path, size=10, calling_ae=calling_ae,
    )  # fmt: skip


def _store(state: GatewayState, folder: Path, sop: str) -> None:
    state.record_instance(_instance(folder, sop), quiet_seconds=0)


def _study(state: GatewayState) -> tuple[str, int]:
    [row] = state.query("SELECT state, round FROM studies WHERE study_uid = ?", (STUDY,))
    return row["state"], row["round"]


@pytest.mark.parametrize(
    ("job_state", "opens_a_round"),
    [
        ("pending", False),  # not sent yet: it will send what the spool holds
        ("submitted", False),  # its result is on the way
        ("delivered", False),  # its result is in the PACS
        ("ended", True),  # failed, expired or cancelled at the exchange: try again
        ("refused", True),  # refused by the exchange: try again (the cause may be fixed)
        (None, True),  # matched no route: the routes may have changed since
    ],
)
def test_a_resend_opens_a_round_only_where_that_helps(
    tmp_path: Path, job_state: str | None, opens_a_round: bool
) -> None:
    state = GatewayState(tmp_path / "state.db")
    try:
        _store(state, tmp_path, FIRST)
        [row] = state.query("SELECT round, due_at FROM studies")
        jobs = [] if job_state is None else [RoutedJob("product-a", None, frozenset())]
        state.route_study(STUDY, row["round"], row["due_at"], jobs, study_pseudonym=STUDY)
        if job_state is not None:
            [job] = state.query("SELECT id FROM jobs")
            state.update_job(job["id"], state=job_state)
        routed = _study(state)
        _store(state, tmp_path, FIRST)  # the same instance again
        assert _study(state) == (("receiving", 2) if opens_a_round else routed)
    finally:
        state.close()


def test_a_new_instance_after_a_delivered_result_opens_a_follow_up_round(
    tmp_path: Path,
) -> None:
    state = GatewayState(tmp_path / "state.db")
    try:
        _store(state, tmp_path, FIRST)
        [row] = state.query("SELECT round, due_at FROM studies")
        routed = [RoutedJob("product-a", None, frozenset())]
        state.route_study(STUDY, 1, row["due_at"], routed, study_pseudonym=STUDY)
        [job] = state.query("SELECT id FROM jobs")
        state.update_job(job["id"], state="delivered")
        _store(state, tmp_path, SECOND)
        assert _study(state) == ("receiving", 2)
        assert len(state.study_instances(STUDY)) == 2  # the follow-up sends the whole study
    finally:
        state.close()


def test_a_study_indexed_from_the_spool_takes_its_sender_when_it_is_sent_again(
    tmp_path: Path,
) -> None:
    """Recovered from the spool (after a crash, or a restore with the spool put back), a study
    has no sender on record, and a route by sender matches nothing; sent again by the PACS,
    it takes that sender for the rounds to come (a sender on record stays)."""
    state = GatewayState(tmp_path / "state.db")
    try:
        recovered = _instance(tmp_path, FIRST, calling_ae="")
        state.record_instance(recovered, quiet_seconds=0)
        [study] = state.query("SELECT calling_ae FROM studies")
        assert study["calling_ae"] == ""
        state.record_instance(replace(recovered, calling_ae="PACS"), quiet_seconds=0)
        [study] = state.query("SELECT calling_ae FROM studies")
        assert study["calling_ae"] == "PACS"
        state.record_instance(replace(recovered, calling_ae="OTHER"), quiet_seconds=0)
        [study] = state.query("SELECT calling_ae FROM studies")
        assert study["calling_ae"] == "PACS"  # a sender on record stays
    finally:
        state.close()


def test_a_study_routed_without_its_sender_sent_again_by_it_is_nothing_new(
    tmp_path: Path,
) -> None:
    """Routes for two products, one by sender: a study indexed from the spool went to the one
    that needs no sender only. Sent again, unchanged, by its sender, it takes the sender but
    is nothing new: a second round would run the first product again wherever what it was
    sent with is not known (a brought-home job whose inputs the exchange purged), and a
    routed round is never reopened, since its jobs hold the instances they read."""
    routes = [Route(product="any-ct", modalities=["CT"]),
              Route(product="from-pacs", modalities=["CT"], calling_aes=["PACS"])]  # fmt: skip
    state = GatewayState(tmp_path / "state.db")

    def route_due() -> None:
        for study in state.due_studies(time.time() + 5):
            jobs = route_study(routes, state.study_instances(STUDY), study["calling_ae"])
            state.route_study(STUDY, study["round"], study["due_at"], jobs, study_pseudonym="P")

    try:
        recovered = _instance(tmp_path, FIRST, calling_ae="")
        state.record_instance(recovered, quiet_seconds=0)
        route_due()
        state.record_instance(replace(recovered, calling_ae="PACS"), quiet_seconds=0)
        route_due()
        keys = [row["idempotency_key"] for row in state.query("SELECT * FROM jobs ORDER BY id")]
        assert keys == ["P:any-ct:1"]
        [study] = state.query("SELECT state, round, calling_ae, note FROM studies")
        assert (study["state"], study["round"], study["calling_ae"]) == ("routed", 1, "PACS")
        assert "nothing new" in study["note"]
    finally:
        state.close()


@pytest.mark.peer
def test_a_study_whose_first_instance_a_crash_left_unindexed_goes_whole_when_sent_again(
    hospital: Hospital,
) -> None:
    """The gateway stopped after a study's first instance reached the spool, before its index
    row: at start it is indexed without a sender, routed alone and sent. The PACS, never
    acknowledged, sends the whole study again: it goes as the next round, all of it."""
    first = hospital.files[0]
    header = pydicom.dcmread(first, stop_before_pixels=True)
    left = hospital.gateway.spool / str(header.StudyInstanceUID) / first.name
    left.parent.mkdir(parents=True)
    shutil.copy(first, left)
    assert hospital.gateway.recover_spool() == 1
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    hospital.receive(*hospital.files)  # the recovered instance first, as a PACS re-sends
    assert hospital.route() == 1
    jobs = hospital.jobs()
    assert [row["round"] for row in jobs] == [1, 2]
    assert hospital.send_due() == [jobs[1]["id"]]
    sent = sorted(remote["input_count"] for remote in hospital.exchange_jobs())
    assert sent == [1, len(hospital.files)]
