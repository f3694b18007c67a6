"""`aifi gateway-jobs`: the jobs a gateway has not done with, what each waits for and why,
read from its state beside it, and nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway.backup import RESTORE_STAGING
from aifi.gateway.config import load_config
from aifi.gateway.job_list import job_statuses
from aifi.gateway.state import GatewayState
from gateway.test_disclosures import offline_gateway_config
from support.hospital import Hospital, acknowledgements_lost
from support.older_state import as_left_by_older_version
from support.restore import bring_home, until_ended
from support.spool import add_history

NOW = time.time()
ACKNOWLEDGEMENT = "its acknowledgement at the exchange (tried again; the gateway's log says why)"
#: The order a STAT job's delay went under while the exchange was out of reach.
ORDER_TOLD_LATE = "0531880f-d44f-567b-8b29-f68bc93071a2"


def add_job(state: GatewayState, study: str, job_state: str, **columns: object) -> int:
    values = {
        "study_uid": study,
        "round": 1,
        "product_id": "aifi-tissue-volume",
        "idempotency_key": f"{study}:aifi-tissue-volume:1",
        "state": job_state,
        "study_last_at": NOW - 600,
        "created_at": NOW - 600,
        **columns,
    }
    names = ", ".join(values)
    with state.transaction() as db:
        cursor = db.execute(
            f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


def a_gateways_day(state: GatewayState) -> dict[str, int]:
    """Jobs in each of the states an engineer meets, and three done with long ago."""
    add_history(state, 0, 3)
    jobs = {
        "sending": add_job(
            state, "1.2.1", "pending", attempts=2, next_attempt_at=NOW + 120,
            reason="the exchange is unreachable: connection refused", created_at=NOW - 500,
            delay_announced_as=ORDER_TOLD_LATE, delay_told_at=NOW - 100,
        ),
        "at the exchange": add_job(
            state, "1.2.2", "submitted", priority="stat", exchange_job_id="x-2",
            submitted_at=NOW - 300, created_at=NOW - 400,
        ),
        "pacs": add_job(
            state, "1.2.3", "submitted", exchange_job_id="x-3", submitted_at=NOW - 300,
            result_seen_at=NOW - 200, attempts=1, reason="delivery to the PACS failed",
            created_at=NOW - 300,
        ),
        "notice": add_job(
            state, "1.2.4", "delivered", exchange_job_id="x-4", submitted_at=NOW - 300,
            result_seen_at=NOW - 200, delivered_at=NOW - 190, created_at=NOW - 200,
        ),
    }  # fmt: skip
    state.record_delivery(jobs["pacs"], "sr.dcm", "pacs", "2.25.1", None)
    state.record_delivery(jobs["pacs"], "seg.dcm", "pacs", None, "association refused")
    state.record_delivery(jobs["notice"], "sr.dcm", "pacs", "2.25.2", None)
    state.queue_notice(jobs["notice"], "result", "{}", urgent=False)
    state.record_notification(
        jobs["notice"], "hl7", ok=False, retryable=True, stat=False, seconds=0.0,
        detail="not tried: the hl7 receiver has failed 1 notice(s) in a row", counted=False,
    )  # fmt: skip
    state.record_notification(
        jobs["notice"], "fhir", ok=True, retryable=False, stat=False, seconds=0.2,
        detail="201 Created",
    )  # fmt: skip
    return jobs


def test_the_jobs_not_done_with_stat_first_with_what_each_waits_for(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    jobs = a_gateways_day(state)
    listed = job_statuses(tmp_path / "state.db", now=NOW)
    state.close()
    assert [job.id for job in listed] == [
        jobs["at the exchange"],  # STAT first
        jobs["sending"],
        jobs["pacs"],
        jobs["notice"],
    ]
    by_id = {job.id: job for job in listed}
    sending = by_id[jobs["sending"]]
    assert sending.waiting_for.startswith("sending to the exchange again at ")
    assert sending.waiting_for.endswith("(try 3)")
    assert "connection refused" in sending.reason
    assert by_id[jobs["at the exchange"]].waiting_for == "the product's outcome (sent 5 min ago)"
    pacs = by_id[jobs["pacs"]]
    assert pacs.waiting_for == "bringing its results home again (try 2)"
    assert pacs.pacs == ["pacs: 1 stored, 1 failed (association refused)"]
    notice = by_id[jobs["notice"]]
    assert (notice.state, notice.waiting_for, notice.notices_queued) == (
        "delivered",
        "its notice (its acknowledgement at the exchange waits for it)",
        1,
    )
    assert [(n.channel, n.outcome, n.tries) for n in notice.notices] == [
        ("fhir", "sent", 1),
        ("hl7", "not tried", 0),
    ]


def test_all_lists_the_latest_jobs_and_a_study_its_own(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    jobs = a_gateways_day(state)
    state.close()
    latest = job_statuses(tmp_path / "state.db", everything=True, limit=2, now=NOW)
    assert [job.id for job in latest] == [jobs["notice"], jobs["pacs"]]
    [old] = job_statuses(tmp_path / "state.db", study_uid="1.9.1", now=NOW)
    assert (old.state, old.waiting_for, old.pacs) == ("delivered", "", ["pacs: 1 stored"])
    assert [(n.channel, n.outcome) for n in old.notices] == [("fhir", "sent"), ("hl7", "sent")]


def test_the_command_shows_the_jobs_and_writes_them_as_json(tmp_path: Path) -> None:
    config = offline_gateway_config(tmp_path)
    path = tmp_path / "gateway" / "state.db"
    state = GatewayState(path)
    jobs = a_gateways_day(state)
    files = [path, path.with_name("state.db-wal")]
    before = [file.read_bytes() for file in files]
    result = CliRunner().invoke(
        app,
        ["gateway-jobs", "--config", str(config), "--json", str(tmp_path / "jobs.json")],
        env={"COLUMNS": "200"},
    )
    after = [file.read_bytes() for file in files]  # beside the gateway's open state
    state.close()
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "jobs not done with" in shown
    assert "submitted (STAT)" in shown and "its notice (its acknowledgement" in shown
    assert "hl7 (result): not tried" in shown
    assert "told late: RIS order" in shown  # its id folded in the column, whole in the JSON
    written = json.loads((tmp_path / "jobs.json").read_text())
    assert [job["id"] for job in written] == [
        jobs["at the exchange"], jobs["sending"], jobs["pacs"], jobs["notice"]
    ]  # fmt: skip
    assert written[2]["pacs"] == ["pacs: 1 stored, 1 failed (association refused)"]
    assert [job["delay_announced_as"] for job in written] == [None, ORDER_TOLD_LATE, None, None]
    assert written[3]["notices"][1] == {
        "channel": "hl7",
        "kind": "result",
        "outcome": "not tried",
        "tries": 0,
        "detail": "not tried: the hl7 receiver has failed 1 notice(s) in a row",
    }
    assert after == before  # read, never written


def test_the_command_is_read_in_an_80_column_terminal(tmp_path: Path) -> None:
    """An SSH session's 80 columns: every line fits, and each job's id, state, product, study,
    exchange job and reason are there whole, not cut into columns a few characters wide."""
    config = offline_gateway_config(tmp_path)
    state = GatewayState(tmp_path / "gateway" / "state.db")
    jobs = a_gateways_day(state)
    study = "1.2.826.0.1.3680043.8.498." + "1234567890" * 3 + "12345678"  # 64 characters
    exchange_job = "3f2b8c1e-6d4a-4e2f-9b7c-0a1d2e3f4a5b"
    jobs["ended"] = add_job(
        state, study, "ended", exchange_job_id=exchange_job, exchange_state="failed",
        reason="the product failed: no intracranial volume found in the series sent",
        created_at=NOW - 100,
    )  # fmt: skip
    state.close()
    result = CliRunner().invoke(
        app, ["gateway-jobs", "--config", str(config)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    for name, state_shown in (
        ("sending", "pending"),
        ("at the exchange", "submitted (STAT)"),
        ("pacs", "submitted"),
        ("notice", "delivered"),
        ("ended", "ended"),
    ):
        [heading] = [line for line in lines if line.startswith(f"job {jobs[name]} ")]
        assert f" {state_shown} " in heading and "aifi-tissue-volume" in heading, heading
    assert any(study in line for line in lines) and any(exchange_job in line for line in lines)
    shown = " ".join(result.output.split())
    for reason in (
        "last the exchange is unreachable: connection refused",
        "last delivery to the PACS failed",
        "last the product failed: no intracranial volume found in the series sent",
        "pacs: 1 stored, 1 failed (association refused)",
        "hl7 (result): not tried",
        f"told late RIS order {ORDER_TOLD_LATE}",
    ):
        assert reason in shown, result.output


def test_the_command_says_why_it_cannot_read_the_state(tmp_path: Path) -> None:
    config = offline_gateway_config(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["gateway-jobs", "--config", str(config)])
    assert missing.exit_code == 1
    assert "does not exist: start the gateway once" in " ".join(missing.output.split())
    GatewayState(tmp_path / "gateway" / "state.db").close()
    (tmp_path / "gateway" / f"{RESTORE_STAGING}-1").mkdir()
    restoring = runner.invoke(app, ["gateway-jobs", "--config", str(config)])
    assert restoring.exit_code == 1
    assert "a restore is copying a backup" in " ".join(restoring.output.split())


def test_nothing_waiting_is_said_so(tmp_path: Path) -> None:
    config = offline_gateway_config(tmp_path)
    state = GatewayState(tmp_path / "gateway" / "state.db")
    add_history(state, 0, 2)
    state.close()
    result = CliRunner().invoke(app, ["gateway-jobs", "--config", str(config)])
    assert result.exit_code == 0
    assert "none: every job is done with" in result.output
    everything = CliRunner().invoke(
        app, ["gateway-jobs", "--config", str(config), "--all"], env={"COLUMNS": "200"}
    )
    assert everything.output.count("pacs: 1 stored") == 2


def test_a_notice_done_with_leaves_its_job_to_its_acknowledgement(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    jobs = a_gateways_day(state)
    state.notice_done(jobs["notice"])
    [waiting] = job_statuses(tmp_path / "state.db", study_uid="1.2.4", now=NOW)
    assert (waiting.waiting_for, waiting.notices_queued) == (ACKNOWLEDGEMENT, 0)
    state.acknowledged(["x-4"])
    state.close()
    listed = job_statuses(tmp_path / "state.db", now=NOW)
    assert jobs["notice"] not in [job.id for job in listed]
    [done] = job_statuses(tmp_path / "state.db", study_uid="1.2.4", now=NOW)
    assert (done.waiting_for, done.notices_queued) == ("", 0)


def test_ended_jobs_the_exchange_still_waits_on_are_listed_until_acknowledged(
    tmp_path: Path,
) -> None:
    """The exchange's `HospitalNotCollecting` counts the ended jobs a hospital has not
    acknowledged: the list names each, whatever keeps it, and no job acknowledged."""
    state = GatewayState(tmp_path / "state.db")
    add_history(state, 0, 3)
    refused = add_job(
        state, "1.4.1", "refused", exchange_job_id="x-41", reason="burned-in annotation",
        created_at=NOW - 300,
    )  # fmt: skip
    no_result = add_job(
        state, "1.4.2", "ended", exchange_job_id="x-42", exchange_state="failed",
        reason="the product failed", priority="stat", created_at=NOW - 200,
    )  # fmt: skip
    add_job(
        state, "1.4.3", "ended", exchange_job_id="x-43", exchange_state="failed",
        acknowledged_at=NOW - 100, created_at=NOW - 100,
    )  # fmt: skip
    add_job(state, "1.4.4", "skipped", reason="sent before", created_at=NOW - 50)
    listed = job_statuses(tmp_path / "state.db", now=NOW)
    assert [(job.id, job.priority) for job in listed] == [
        (no_result, "stat"),
        (refused, "routine"),
    ]
    assert listed[0].waiting_for == ACKNOWLEDGEMENT
    assert listed[1].waiting_for == (
        "its refusal to go on record at the exchange, then its acknowledgement"
    )
    state.acknowledged(["x-41", "x-42"])
    state.close()
    assert job_statuses(tmp_path / "state.db", now=NOW) == []


def test_a_state_from_before_acknowledgements_were_noted_takes_its_ended_jobs_as_acknowledged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    state = GatewayState(path)
    jobs = a_gateways_day(state)
    ended = add_job(state, "1.4.2", "ended", exchange_job_id="x-42", ended_at=NOW - 60)
    state.close()
    as_left_by_older_version(
        path, "DROP INDEX ix_jobs_unacknowledged", "ALTER TABLE jobs DROP COLUMN acknowledged_at"
    )
    # A gateway of that version still running: the list reads its state as it is, and says
    # of no job that it waits for an acknowledgement it cannot know of.
    assert jobs["notice"] in [job.id for job in job_statuses(path, now=NOW)]
    latest = job_statuses(path, everything=True, now=NOW)
    assert ended in [job.id for job in latest]
    assert not any("acknowledgement at the exchange (tried" in job.waiting_for for job in latest)
    state = GatewayState(path)  # the upgrade
    try:
        assert state.job(ended)["acknowledged_at"] == NOW - 60
        assert state.job(jobs["at the exchange"])["acknowledged_at"] is None
        listed = [job.id for job in job_statuses(path, now=NOW)]
        assert ended not in listed
        assert sorted(listed) == sorted(jobs.values())  # as before, the notice's job too
    finally:
        state.close()


def sent(hospital: Hospital) -> tuple[dict[str, Any], str]:
    """The hospital's study received, routed and sent: its job, and its exchange job's id."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    return job, str(hospital.gateway.state.job(job["id"])["exchange_job_id"])


def test_a_job_is_listed_until_the_exchange_takes_its_acknowledgement(
    hospital: Hospital,
) -> None:
    """Brought home, its acknowledgement lost on the way: listed as waiting for it, and no
    longer once a later poll's acknowledgement goes through."""
    job, exchange_id = sent(hospital)
    path = load_config(hospital.path).workdir / "state.db"
    passing = hospital.network.handle_request
    acknowledgements_lost(hospital)
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])
    hospital.network.handle_request = passing  # type: ignore[method-assign]

    [waiting] = job_statuses(path)
    assert (waiting.state, waiting.waiting_for) == ("delivered", ACKNOWLEDGEMENT)
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])
    assert job_statuses(path) == []
    assert hospital.gateway.client.job(exchange_id)["acknowledged_at"] is not None


def test_a_job_the_exchange_no_longer_lists_is_taken_as_acknowledged(hospital: Hospital) -> None:
    """The acknowledgement reached the exchange and its answer was lost, or a restore put back
    a state from before it: the exchange lists the job no longer, and the list must not keep
    it for ever. A job refused here counts once it was refused before the listing was asked
    for (its exchange job ended first); one refused since may not be listed yet, and stays."""
    job, exchange_id = sent(hospital)
    bring_home(hospital, exchange_id)
    state = hospital.gateway.state
    state.update_job(job["id"], acknowledged_at=None)  # as a backup taken before it held it
    refused_before = add_job(
        state, "1.4.1", "refused", exchange_job_id="x-41", reason="burned-in annotation",
        ended_at=time.time() - 5, idempotency_key="k-41",
    )  # fmt: skip
    refused_since = add_job(
        state, "1.4.2", "refused", exchange_job_id="x-42", reason="burned-in annotation",
        ended_at=time.time() + 3600, idempotency_key="k-42",
    )  # fmt: skip
    path = load_config(hospital.path).workdir / "state.db"
    listed = sorted(j.id for j in job_statuses(path))
    assert listed == sorted([job["id"], refused_before, refused_since])

    hospital.gateway._bring_home()  # a listing with nothing in it
    assert [j.id for j in job_statuses(path)] == [refused_since]
    assert state.job(job["id"])["acknowledged_at"] is not None
    assert state.job(refused_before)["acknowledged_at"] is not None


def test_a_stat_notice_of_a_routine_job_is_listed_first(tmp_path: Path) -> None:
    """A triage-positive result of a routine job: its notice is on the STAT thread, and its
    job goes with the STAT ones, however many older jobs wait."""
    state = GatewayState(tmp_path / "state.db")
    older = [
        add_job(state, f"1.3.{n}", "submitted", idempotency_key=f"k{n}", created_at=NOW - 900 + n)
        for n in range(5)
    ]
    alert = add_job(state, "1.3.9", "delivered", created_at=NOW - 10)
    state.queue_notice(alert, "result", "{}", urgent=True)
    state.close()
    listed = job_statuses(tmp_path / "state.db", limit=3, now=NOW)
    assert [job.id for job in listed] == [alert, *older[:2]]
    assert [job.priority for job in listed] == ["stat", "routine", "routine"]


def test_a_job_the_exchange_still_lists_is_not_taken_as_acknowledged(hospital: Hospital) -> None:
    """Its acknowledgements lost, the job is listed at every poll: it stays on the list, and
    so does one an upgrade from an older version took for acknowledged."""
    job, exchange_id = sent(hospital)
    until_ended(hospital, exchange_id)
    acknowledgements_lost(hospital)
    path = load_config(hospital.path).workdir / "state.db"
    state = hospital.gateway.state

    hospital.gateway._bring_home()  # brought home, its acknowledgement lost
    assert state.job(job["id"])["state"] == "delivered"
    assert [j.id for j in job_statuses(path)] == [job["id"]]
    hospital.gateway._bring_home()  # listed again: not settled
    assert [j.id for j in job_statuses(path)] == [job["id"]]

    state.update_job(job["id"], acknowledged_at=time.time() - 60)  # as the upgrade takes it
    assert job_statuses(path) == []
    hospital.gateway._bring_home()  # the exchange lists it: not acknowledged after all
    [listed] = job_statuses(path)
    assert (listed.id, listed.waiting_for) == (job["id"], ACKNOWLEDGEMENT)
