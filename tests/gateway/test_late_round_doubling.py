"""A late instance opens a study's next round while a job of the round before has not been
sent yet (the exchange away, the job waiting its turn or its back-off). That job reads the
spool when it is sent, so it takes the late instance too, and the next round's job holds
exactly the same instances: sent, the product would run twice on them and two results come
back to the PACS. Whichever of the two goes second is skipped — never a follow-up with
something new, never a round sent again because the one before failed.

The gateway is driven as its sender thread drives it (`send_due`), against a real exchange
and vendor worker; the exchange is taken away at the network, as an outage would.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from aifi.gateway.state import GatewayState, ReceivedInstance, RoutedJob, inputs_digest
from support.hospital import PRODUCT, Hospital, disclosure_log_full, refuses
from support.national import National, national_path
from support.older_state import as_left_by_older_version

#: The columns a state of the version before lacked.
BEFORE_INPUTS_DIGEST = tuple(
    f"ALTER TABLE jobs DROP COLUMN {column}" for column in ("inputs_digest", "may_be_open")
)

pytestmark = pytest.mark.peer


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[Hospital]:
    """A hospital whose product fails every study it is sent."""
    with national_path(tmp_path, product=refuses) as national:
        opened = Hospital(national, tmp_path)
        yield opened
        opened.close()


def only_one_went(
    hospital: Hospital, went: dict[str, Any], skipped: dict[str, Any], everything: list[Path]
) -> None:
    """One job at the exchange, `went`'s, with every instance: the product runs once;
    `skipped` was not sent, its reason naming `went`, and nothing of it was disclosed."""
    at_the_exchange = hospital.exchange_jobs()
    assert len(at_the_exchange) == 1, [job["instances"] for job in at_the_exchange]
    [sent] = at_the_exchange
    assert hospital.inputs(sent["id"]) == hospital.pseudonyms(*everything)
    assert went["state"] == "submitted", went["reason"]
    assert sent["id"] == went["exchange_job_id"]
    assert skipped["state"] == "skipped"
    assert skipped["reason"] == (
        f"nothing new for {PRODUCT}: job {went['id']} (round {went['round']}) took these same "
        f"{len(everything)} instance(s)"
    )
    assert skipped["exchange_job_id"] is None and skipped["ended_at"] is not None
    [disclosed] = hospital.disclosed()
    assert f"{len(everything)} instance(s)" in disclosed


def test_a_round_sent_after_a_late_instance_leaves_the_next_round_nothing_new(
    hospital: Hospital,
) -> None:
    """The exchange is away when round 1 is due; a late slice opens round 2. Sent in order,
    round 1 takes every instance, the late slice too, and round 2 is skipped."""
    everything = [*hospital.files, hospital.late]
    first, second = hospital.late_slice_while_unsent(back_off=0.5)

    assert hospital.send_due(time.time() + 600) == [first["id"], second["id"]]

    first, second = hospital.jobs()
    only_one_went(hospital, went=first, skipped=second, everything=everything)

    # The PACS sends the study again: nothing failed, so nothing is sent again.
    hospital.receive(*everything)
    assert hospital.route() == 0
    [study] = hospital.gateway.state.query("SELECT round, state, note FROM studies")
    assert study["round"] == 2 and study["state"] == "routed", study["note"]


def test_a_round_in_back_off_while_the_next_is_sent_is_skipped(hospital: Hospital) -> None:
    """Round 1 waits out its back-off while round 2 is due and sent with every instance; when
    round 1's turn comes, it has nothing new."""
    everything = [*hospital.files, hospital.late]
    first, second = hospital.late_slice_while_unsent(back_off=30)

    assert hospital.send_due() == [second["id"]]  # round 1 is still waiting
    assert hospital.send_due(time.time() + 600) == [first["id"]]

    first, second = hospital.jobs()
    only_one_went(hospital, went=second, skipped=first, everything=everything)


def test_an_instance_refused_every_time_leaves_the_next_round_nothing_new(
    hospital: Hospital,
) -> None:
    """An instance de-identification refuses whenever it is sent (text burned into its
    pixels): both rounds would send the same others, and the second is skipped all the same,
    compared on what each sends, not on what each read."""
    burned = pydicom.dcmread(hospital.files[0])
    burned.BurnedInAnnotation = "YES"
    burned.save_as(hospital.files[0])
    first, second = hospital.late_slice_while_unsent(back_off=0.5)
    assert hospital.send_due(time.time() + 600) == [first["id"], second["id"]]
    first, second = hospital.jobs()
    assert "1 instance(s) not sent" in first["reason"], first["reason"]
    sent = [*hospital.files[1:], hospital.late]
    only_one_went(hospital, went=first, skipped=second, everything=sent)


def test_an_image_corrected_under_its_uid_is_something_new(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Round 1, sent at last, took the late slice too; then the modality sent an image again
    under its SOP Instance UID, its header corrected, before round 2 was routed. Round 2 holds
    the same UIDs, but not the same image: it is sent."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [first] = hospital.jobs()
    hospital.fail_to_send(first["id"], until=time.time() + 0.5)
    hospital.receive(hospital.late)
    assert hospital.send_due(time.time() + 600) == [first["id"]]  # round 2 still receiving
    corrected = pydicom.dcmread(hospital.files[0])
    corrected.ImageComments = "body part corrected"  # under its UID, a header corrected
    (tmp_path / "corrected").mkdir()
    corrected.save_as(tmp_path / "corrected" / hospital.files[0].name)
    hospital.receive(tmp_path / "corrected" / hospital.files[0].name)
    assert hospital.route() == 1
    second = hospital.jobs()[1]
    assert hospital.send_due() == [second["id"]]

    assert [job["state"] for job in hospital.jobs()] == ["submitted", "submitted"]
    everything = hospital.pseudonyms(*hospital.files, hospital.late)
    assert [hospital.inputs(job["id"]) for job in hospital.exchange_jobs()] == [everything] * 2


def test_a_late_instance_after_its_round_was_sent_is_a_follow_up(hospital: Hospital) -> None:
    """Round 1 went before the late slice came: round 2 has something new, and is sent."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    assert len(hospital.send_due()) == 1
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    assert len(hospital.send_due()) == 1

    assert [(job["round"], job["state"]) for job in hospital.jobs()] == [
        (1, "submitted"),
        (2, "submitted"),
    ]
    first, second = hospital.exchange_jobs()
    assert hospital.inputs(first["id"]) == hospital.pseudonyms(*hospital.files)
    assert hospital.inputs(second["id"]) == hospital.pseudonyms(*hospital.files, hospital.late)
    assert len(hospital.disclosed()) == 2


def test_a_study_sent_again_after_its_round_failed_is_sent_again(failing: Hospital) -> None:
    """The product failed round 1; the PACS sends the study again to have it tried again: the
    same instances go again, in round 2."""
    failing.receive(*failing.files)
    assert failing.route() == 1
    assert len(failing.send_due()) == 1
    [first] = failing.jobs()
    failing.bring_home_failed(first["exchange_job_id"])
    assert failing.jobs()[0]["state"] == "ended"

    failing.receive(*failing.files)
    assert failing.route() == 1
    assert len(failing.send_due()) == 1

    first, second = failing.jobs()
    assert (second["round"], second["state"]) == (2, "submitted"), second["reason"]
    tried, again = failing.exchange_jobs()
    assert again["id"] == second["exchange_job_id"] != tried["id"]
    assert failing.inputs(again["id"]) == failing.inputs(tried["id"])
    assert failing.inputs(again["id"]) == failing.pseudonyms(*failing.files)


def test_a_study_sent_again_after_the_job_a_round_was_skipped_for_failed(
    failing: Hospital,
) -> None:
    """Round 2 was skipped for round 1, which then failed: the study's rounds did not succeed,
    so the PACS sending the study again has it tried again."""
    everything = [*failing.files, failing.late]
    failing.receive(*failing.files)
    assert failing.route() == 1
    [first] = failing.jobs()
    failing.fail_to_send(first["id"], until=time.time() + 0.5)
    failing.receive(failing.late)
    assert failing.route() == 1
    failing.send_due(time.time() + 600)
    assert [job["state"] for job in failing.jobs()] == ["submitted", "skipped"]
    failing.bring_home_failed(failing.jobs()[0]["exchange_job_id"])

    failing.receive(*everything)
    assert failing.route() == 1
    assert len(failing.send_due()) == 1

    assert [(job["round"], job["state"]) for job in failing.jobs()] == [
        (1, "ended"),
        (2, "skipped"),
        (3, "submitted"),
    ]
    tried, again = failing.exchange_jobs()
    assert again["id"] == failing.jobs()[2]["exchange_job_id"]
    assert failing.inputs(again["id"]) == failing.pseudonyms(*everything)


def test_a_gateway_starts_on_a_state_from_before_the_inputs_digest(hospital: Hospital) -> None:
    """A gateway of the version before stopped with round 1 sent, and rounds 2 and 3 (late
    slices) still to send; the new version starts on its state file and goes on. The version
    before may have begun to send rounds 2 and 3 (their requests to open them answered or
    not): neither is skipped, and nothing is skipped for round 1, whose digest is unknown."""
    extra = hospital.files.pop()  # a second late slice
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    assert len(hospital.send_due()) == 1
    for late in (hospital.late, extra):
        hospital.receive(late)
        assert hospital.route() == 1
    hospital.close()
    path = hospital.gateway.config.workdir / "state.db"
    as_left_by_older_version(path, *BEFORE_INPUTS_DIGEST)
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    db.close()
    assert not {"inputs_digest", "may_be_open"} & columns

    hospital.gateway = hospital.open()

    first, second, third = hospital.jobs()
    assert first["state"] == "submitted" and first["inputs_digest"] is None
    assert (second["may_be_open"], third["may_be_open"]) == (1, 1)
    assert hospital.send_due() == [second["id"], third["id"]]
    first, second, third = hospital.jobs()
    assert second["state"] == third["state"] == "submitted", third["reason"]
    assert second["inputs_digest"] == third["inputs_digest"] is not None
    assert len(hospital.exchange_jobs()) == 3


def test_a_job_the_exchange_may_hold_already_is_sent_not_skipped(
    national: National, tmp_path: Path
) -> None:
    """Round 1's first try opened its job at the exchange, but the answer never came back,
    and the exchange went away (the client's own retries of that try would have met a
    connection refused, which says nothing of the try before); then a late slice came, and
    round 2 went first with every instance. Skipped, round 1's job would wait at the
    exchange, empty, until it expired, counted against the product: round 1 is sent, and
    completes the job it opened."""
    hospital = Hospital(national, tmp_path, retries=2)
    try:
        sent_after_a_lost_answer(hospital)
    finally:
        hospital.close()


def sent_after_a_lost_answer(hospital: Hospital) -> None:
    """The test's course, on a hospital whose client retries as a gateway's does."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [first] = hospital.jobs()
    hospital.gateway.client.product(PRODUCT)  # at hand: the first request opens the job
    hospital.network.lose_creation_answers = hospital.network.away_once_lost = True
    assert hospital.send_due() == [first["id"]]
    hospital.network.lose_creation_answers = hospital.network.away = False
    first = hospital.jobs()[0]
    assert first["exchange_job_id"] is None and first["may_be_open"] == 1
    [opened] = hospital.exchange_jobs()
    hospital.fail_to_send(first["id"], until=time.time() + 30)  # the exchange still away
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    second = hospital.jobs()[1]
    assert hospital.send_due() == [second["id"]]
    assert hospital.send_due(time.time() + 600) == [first["id"]]

    assert [job["state"] for job in hospital.jobs()] == ["submitted", "submitted"]
    everything = hospital.pseudonyms(*hospital.files, hospital.late)
    jobs = hospital.exchange_jobs()
    assert [job["id"] for job in jobs][0] == opened["id"] == hospital.jobs()[0]["exchange_job_id"]
    assert all(job["inputs_complete"] for job in jobs)  # none left empty to expire
    assert [hospital.inputs(job["id"]) for job in jobs] == [everything, everything]


def test_an_instance_the_job_could_not_send_goes_with_the_next_round(
    hospital: Hospital,
) -> None:
    """Round 1, sent at last, could not read the late slice at that moment (its spool file
    damaged, say) and went without it: round 2 holds something round 1 did not send, and is
    sent, not skipped as if round 1 had taken every instance it read."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [first] = hospital.jobs()
    hospital.fail_to_send(first["id"], until=time.time() + 0.5)
    hospital.receive(hospital.late)
    assert hospital.route() == 1
    late_uid = str(pydicom.dcmread(hospital.late, stop_before_pixels=True).SOPInstanceUID)
    [spooled] = [
        Path(row["path"])
        for row in hospital.gateway.state.study_instances(first["study_uid"])
        if row["sop_instance_uid"] == late_uid
    ]
    whole = spooled.read_bytes()
    spooled.write_bytes(whole[:200])  # unreadable while round 1 is sent
    hospital.gateway.submit(hospital.gateway.state.job(first["id"]))
    spooled.write_bytes(whole)
    first = hospital.jobs()[0]
    assert first["state"] == "submitted" and "1 instance(s) not sent" in first["reason"]

    assert hospital.send_due(time.time() + 600) == [hospital.jobs()[1]["id"]]
    assert [job["state"] for job in hospital.jobs()] == ["submitted", "submitted"]
    round_1, round_2 = hospital.exchange_jobs()
    assert hospital.inputs(round_1["id"]) == hospital.pseudonyms(*hospital.files)
    assert hospital.inputs(round_2["id"]) == hospital.pseudonyms(*hospital.files, hospital.late)


def test_the_whole_study_again_after_its_purge_has_nothing_new(tmp_path: Path) -> None:
    """Retention purged a study whose job was delivered; the PACS sends all of it again,
    unchanged: a new round, whose job holds what the delivered job was sent with, and is
    skipped (one study, one result)."""
    study, series = "1.2.826.0.1.3680043.10.1.9", "1.2.826.0.1.3680043.10.1.9.1"
    uids = [f"{series}.{n}" for n in (1, 2)]

    def receive(state: GatewayState) -> None:
        for uid in uids:
            path = tmp_path / "spool" / study / f"{uid}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 100)
            state.record_instance(
                ReceivedInstance(
                    sop_instance_uid=uid, study_uid=study, series_uid=series,
                    sop_class_uid="1.2", modality="CT", body_part="HEAD",
                    study_description="", series_description="", path=path, size=100,
                    calling_ae="CT_SCANNER",
                ),
                quiet_seconds=0,
            )  # fmt: skip
        [row] = state.query("SELECT round, due_at FROM studies")
        routed = [RoutedJob("product-a", None, frozenset({series}))]
        assert state.route_study(study, row["round"], row["due_at"], routed, study_pseudonym=study)

    state = GatewayState(tmp_path / "state.db")
    try:
        receive(state)
        [first] = state.pending_jobs(time.time())
        sent = state.study_instances(study)
        assert state.mark_submitted(first["id"], None, inputs_digest(sent))
        state.update_job(first["id"], state="delivered", ended_at=time.time())
        assert state.purge_study(study, time.time() + 1, 0) is not None
        receive(state)
        [second] = state.pending_jobs(time.time())
        assert second["round"] == 2
        again = state.study_instances(study)
        assert [row["sop_instance_uid"] for row in again] == uids
        reason = state.skip_if_sent_before(second["id"], inputs_digest(reversed(again)), 2)
        assert reason == (
            f"nothing new for product-a: job {first['id']} (round 1) took these same 2 instance(s)"
        )
        assert state.job(second["id"])["state"] == "skipped"
    finally:
        state.close()


def test_a_job_an_older_version_tried_to_send_is_never_skipped(tmp_path: Path) -> None:
    """An older version's state: of two jobs still to send, one it tried (its request to open
    the job may have reached the exchange), and one it may have begun to try as it stopped
    (its attempts still 0). At start both are marked as ones the exchange may hold."""
    state = GatewayState(tmp_path / "state.db")
    study = "1.2.826.0.1.3680043.10.1.7"
    for round_ in (1, 2):
        path = tmp_path / "spool" / f"{round_}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 100)
        state.record_instance(
            ReceivedInstance(
                sop_instance_uid=f"{study}.{round_}", study_uid=study, series_uid=f"{study}.0",
                sop_class_uid="1.2", modality="CT", body_part="HEAD", study_description="",
                series_description="", path=path, size=100, calling_ae="CT_SCANNER",
            ),
            quiet_seconds=0,
        )  # fmt: skip
        [row] = state.query("SELECT round, due_at FROM studies")
        routed = [RoutedJob("product-a", None, frozenset({f"{study}.0"}))]
        assert state.route_study(study, row["round"], row["due_at"], routed, study_pseudonym=study)
    tried, untried = state.pending_jobs(time.time())
    state.retry_job_later(tried["id"], "exchange unreachable: the answer was lost", 60)
    state.close()
    as_left_by_older_version(tmp_path / "state.db", *BEFORE_INPUTS_DIGEST)

    state = GatewayState(tmp_path / "state.db")
    try:
        assert state.job(tried["id"])["may_be_open"] == state.job(untried["id"])["may_be_open"] == 1
        assert state.job(tried["id"])["attempts"] == 1
    finally:
        state.close()


def test_an_instance_moved_away_after_part_of_the_job_went_is_not_sent_as_this_study(
    hospital: Hospital, tmp_path: Path
) -> None:
    """The first try of a job uploaded part of the study and broke off; then the PACS
    corrected the study, moving an uploaded instance to another study (another patient's,
    perhaps). The exchange's job must not open with it, nor wait for ever for the instance
    left: it is cancelled before any vendor took it, and the job goes again as a new one."""
    first = hospital.part_sent_then_broken_off()
    broken, moving = (next(iter(hospital.pseudonyms(file))) for file in hospital.files[:2])
    assert moving in hospital.inputs(first["id"]) and broken not in hospital.inputs(first["id"])
    moved_to_another_study(hospital, tmp_path, hospital.files[1:2])
    [job] = hospital.jobs()

    assert hospital.send_due(time.time() + 600) == [job["id"]]  # the exchange's job cancelled
    assert hospital.send_due() == [job["id"]]  # and the job sent again, as a new one
    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    cancelled, sent = hospital.exchange_jobs()
    assert cancelled["id"] == first["id"] and cancelled["state"] == "cancelled"
    assert "no longer in the study" in cancelled["reason"]
    assert cancelled["acknowledged_at"] is not None  # nothing for the gateway to bring home
    assert sent["id"] == job["exchange_job_id"] and sent["inputs_complete"]
    staying = [file for file in hospital.files if file != hospital.files[1]]
    assert hospital.inputs(sent["id"]) == hospital.pseudonyms(*staying)
    earlier, new = hospital.disclosed()
    assert f"exchange job {first['id']}" in earlier and "cancelled before any vendor" in earlier
    assert f"exchange job {sent['id']}: {len(staying)} instance(s)" in new


@pytest.mark.parametrize("moved", [1, 9], ids=["one-moved", "more-than-left"])
@pytest.mark.parametrize("failure", ["record-failed", "cancel-answer-lost"])
def test_a_start_over_cut_short_after_the_cancel_starts_over_on_the_retry(
    hospital: Hospital, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: int, failure: str
) -> None:
    """Starting over, the gateway cancelled the exchange's job, and then went no further:
    the disclosure log could not be written, or the cancel's answer was lost. The retry finds
    the job it cancelled by its key, and starts over as that attempt would have: it is not
    taken for a job the exchange ended, and the study is not refused."""
    first = hospital.part_sent_then_broken_off()
    moved_to_another_study(hospital, tmp_path, hospital.files[1 : 1 + moved])
    [job] = hospital.jobs()
    passing = hospital.network.handle_request

    def cancel_answer_lost(request: httpx.Request) -> httpx.Response:
        response = passing(request)
        if request.url.path.endswith("/cancel"):
            response.read()
            raise httpx.ReadError("the connection broke before the answer", request=request)
        return response

    with monkeypatch.context() as cut_short:
        if failure == "record-failed":
            cut_short.setattr(hospital.gateway.disclosures, "record", disclosure_log_full)
        else:
            cut_short.setattr(hospital.network, "handle_request", cancel_answer_lost)
        assert hospital.send_due(time.time() + 600) == [job["id"]]
    [cancelled] = hospital.exchange_jobs()
    assert cancelled["state"] == "cancelled" and hospital.jobs()[0]["state"] == "pending"

    assert hospital.send_due(time.time() + 600) == [job["id"]]  # starts over
    assert hospital.send_due() == [job["id"]]  # sent as a new job
    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    cancelled, sent = hospital.exchange_jobs()
    assert cancelled["id"] == first["id"] and sent["inputs_complete"]
    earlier, new = hospital.disclosed()  # each exchange job once
    assert f"exchange job {first['id']}:" in earlier and f"exchange job {sent['id']}:" in new


def test_a_job_that_opens_while_it_is_being_started_over_stands_as_it_opened(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Starting over after an instance moved away, the gateway cancels the exchange's job;
    just before the cancel arrives, that job opens to vendors (an earlier try's request
    finished late). The cancel is refused, and the job stands as it opened: not cancelled
    under a vendor, not sent a second time."""
    first = hospital.part_sent_then_broken_off()
    moved_to_another_study(hospital, tmp_path, hospital.files[1:2])
    passing = hospital.network.handle_request

    def opens_first(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            with hospital.national.api() as api:
                held = api.get(f"/jobs/{first['id']}").json()["input_count"]
                api.post(f"/jobs/{first['id']}/ready", json={"instances": held}).raise_for_status()
        return passing(request)

    hospital.network.handle_request = opens_first  # type: ignore[method-assign]
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]
    hospital.network.handle_request = passing  # type: ignore[method-assign]
    assert "opened to vendors meanwhile" in hospital.jobs()[0]["reason"]
    assert hospital.send_due(time.time() + 600) == [job["id"]]

    [job] = hospital.jobs()
    assert job["state"] == "submitted" and job["exchange_job_id"] == first["id"], job["reason"]
    [only] = hospital.exchange_jobs()
    assert only["id"] == first["id"] and only["inputs_complete"] and only["state"] != "cancelled"
    [disclosed] = hospital.disclosed()
    assert f"exchange job {first['id']}:" in disclosed


def test_the_late_slice_sent_again_unchanged_is_still_nothing_new(hospital: Hospital) -> None:
    """Round 2 went with every instance while round 1 waited out its back-off; the modality
    then sent the late slice again, unchanged (its own retry): round 1 has nothing new."""
    first, second = hospital.late_slice_while_unsent(back_off=30)
    assert hospital.send_due() == [second["id"]]
    hospital.receive(hospital.late)
    assert hospital.route() == 0  # nothing new for the study either
    assert hospital.send_due(time.time() + 600) == [first["id"]]
    first, second = hospital.jobs()
    only_one_went(hospital, went=second, skipped=first, everything=[*hospital.files, hospital.late])


def moved_to_another_study(hospital: Hospital, tmp_path: Path, files: list[Path]) -> None:
    """The PACS corrects the study of `files`: they arrive again under another study."""
    (tmp_path / "corrected").mkdir(exist_ok=True)
    for file in files:
        corrected = pydicom.dcmread(file)
        corrected.StudyInstanceUID = f"{corrected.StudyInstanceUID}.9"
        corrected.save_as(tmp_path / "corrected" / file.name)
        hospital.receive(tmp_path / "corrected" / file.name)


def test_more_moved_away_than_the_job_has_left_to_send_cancels_its_exchange_job(
    hospital: Hospital, tmp_path: Path
) -> None:
    """A whole series' worth moved away after the first try: the exchange's job holds more
    instances than the job now sends, and will not take the lower count (409). It is
    cancelled and the job goes as a new one, not retried against the 409 for ever."""
    first = hospital.part_sent_then_broken_off()
    moved_to_another_study(hospital, tmp_path, hospital.files[1:10])
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]
    assert hospital.send_due() == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    cancelled, sent = hospital.exchange_jobs()
    assert (cancelled["id"], cancelled["state"]) == (first["id"], "cancelled")
    staying = [hospital.files[0], *hospital.files[10:]]
    assert hospital.inputs(sent["id"]) == hospital.pseudonyms(*staying)


def test_a_cancelled_exchange_job_whose_acknowledgement_failed_is_acknowledged_later(
    hospital: Hospital, tmp_path: Path
) -> None:
    first = hospital.part_sent_then_broken_off()
    moved_to_another_study(hospital, tmp_path, hospital.files[1:2])
    network, passing = hospital.network, hospital.network.handle_request

    def no_acknowledgements(request: httpx.Request) -> httpx.Response:
        if "acknowledge" in request.url.path:
            raise httpx.ConnectError("the exchange is unreachable", request=request)
        return passing(request)

    network.handle_request = no_acknowledgements  # type: ignore[method-assign]
    [job] = hospital.jobs()
    assert hospital.send_due(time.time() + 600) == [job["id"]]
    network.handle_request = passing  # type: ignore[method-assign]
    assert hospital.send_due() == [job["id"]]  # sent as a new job all the same
    [cancelled] = [j for j in hospital.gateway.client.ended_jobs(wait=0) if j["id"] == first["id"]]
    assert cancelled["state"] == "cancelled"
    assert hospital.gateway.collect(cancelled)  # no job's: acknowledged with the poll's others


def test_a_job_opened_to_vendors_stands_as_it_opened_whatever_moved_since(
    hospital: Hospital, tmp_path: Path
) -> None:
    """Every instance went and the exchange opened the job, but its end was not on record
    (the disclosure log's disk full); the vendor ran it. Then the PACS moved an instance away
    and added another: the job stands as it opened (its results come home), never cancelled
    as if no vendor had taken it."""
    job, opened = hospital.opened_unrecorded()
    deadline = time.monotonic() + 60
    while opened["id"] not in {j["id"] for j in hospital.gateway.client.ended_jobs(wait=1)}:
        assert time.monotonic() < deadline, "the vendor did not complete the job"
    moved_to_another_study(hospital, tmp_path, hospital.files[1:2])
    added = pydicom.dcmread(hospital.files[2])
    added.SOPInstanceUID = generate_uid()
    added.file_meta.MediaStorageSOPInstanceUID = added.SOPInstanceUID
    added.save_as(tmp_path / "added.dcm")
    hospital.receive(tmp_path / "added.dcm")

    assert hospital.send_due(time.time() + 600) == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "submitted" and job["exchange_job_id"] == opened["id"], job["reason"]
    [completed] = hospital.exchange_jobs()
    assert completed["state"] == "completed" and completed["acknowledged_at"] is None
    assert not [entry for entry in hospital.disclosed() if "cancelled" in entry]


def test_a_job_whose_end_was_not_on_record_still_covers_the_next_round(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1, sent at last with the late slice, opened its exchange job, but its end could
    not be put on record (the disclosure log's disk full). Its retry finds the job holding
    exactly what it sends, records it with what it sent, and round 2 has nothing new."""
    first, second = hospital.late_slice_while_unsent(back_off=0.5)

    with monkeypatch.context() as full:
        full.setattr(hospital.gateway.disclosures, "record", disclosure_log_full)
        hospital.gateway.submit(hospital.gateway.state.job(first["id"]))
    assert hospital.jobs()[0]["state"] == "pending"
    assert hospital.send_due(time.time() + 600) == [first["id"], second["id"]]
    first, second = hospital.jobs()
    only_one_went(hospital, went=first, skipped=second, everything=[*hospital.files, hospital.late])
