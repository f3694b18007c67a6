"""The gateway's disclosure log: entries by patient and study, a hash chain that shows any
edit, removal or re-ordering, and appends from many threads that stay in one chain."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway.config import load_config
from aifi.gateway.disclosures import Action, Anchor, DisclosureLog, entry_digest
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from support.hospital import Hospital
from support.national import National, started_gateway
from support.peers import storescu
from support.restore import until_ended

PATIENTS = ("HOSP-1", "HOSP-2")


def filled(path: Path) -> DisclosureLog:
    log = DisclosureLog(path, "hospital-a", "gateway AIFI_GW")
    for n in range(6):
        log.record(
            Action.disclosed if n % 3 == 0 else Action.delivered,
            patient_id=PATIENTS[n % 2],
            study_uid=f"1.2.3.{n % 2}",
            recipient="product-a of vendor-a, through the exchange",
            ok=n != 5,
            detail=f"step {n}",
        )
    return log


def test_a_patients_entries_come_back_in_order_and_the_file_is_private(tmp_path: Path) -> None:
    log = filled(tmp_path / "disclosures.db")
    mine = log.entries(patient_id="HOSP-1")
    assert [e.detail for e in mine] == ["step 0", "step 2", "step 4"]
    assert {e.study_uid for e in mine} == {"1.2.3.0"}
    assert [e.detail for e in log.entries(study_uid="1.2.3.1")] == ["step 1", "step 3", "step 5"]
    assert log.entries(patient_id="HOSP-1", study_uid="1.2.3.1") == []
    assert log.entries()[-1].outcome == "failure"
    assert {e.organisation for e in log.entries()} == {"hospital-a"}
    assert log.verify() == []
    assert stat.S_IMODE((tmp_path / "disclosures.db").stat().st_mode) == 0o600
    log.close()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE entries SET detail = 'nothing' WHERE seq = 3", "entry 3: its content was changed"),
        ("UPDATE entries SET patient_id = 'HOSP-9' WHERE seq = 1", "entry 1: its content was"),
        ("DELETE FROM entries WHERE seq = 2", "entry 3: does not follow the entry before it"),
        ("DELETE FROM entries WHERE seq = 1", "entry 2: does not follow the entry before it"),
        ("DELETE FROM entries WHERE seq = 6", "entries after 5 were removed (up to 6 written)"),
        ("UPDATE entries SET seq = seq + 10 WHERE seq = 2", "entry 3: does not follow"),
    ],
)
def test_an_edited_removed_or_moved_entry_breaks_the_chain(
    tmp_path: Path, tamper: str, problem: str
) -> None:
    filled(tmp_path / "disclosures.db").close()
    with sqlite3.connect(tmp_path / "disclosures.db") as db:
        db.execute(tamper)
    log = DisclosureLog(tmp_path / "disclosures.db", "hospital-a", "gateway AIFI_GW")
    problems = log.verify()
    assert problems and problems[0].startswith(problem), problems
    log.close()


def test_appends_from_many_threads_make_one_unbroken_chain(tmp_path: Path) -> None:
    log = DisclosureLog(tmp_path / "disclosures.db", "hospital-a", "gateway AIFI_GW")

    def append(n: int) -> int:
        return log.record(
            Action.notified, patient_id=f"P{n}", study_uid="1.2", recipient="hl7 notice"
        ).seq

    with ThreadPoolExecutor(max_workers=8) as pool:
        numbers = sorted(pool.map(append, range(200)))
    assert numbers == list(range(1, 201))
    assert log.verify() == [] and log.count() == 200
    log.close()


def offline_gateway_config(tmp_path: Path) -> Path:
    """A gateway's YAML whose exchange is never reached: enough to read its workdir."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hospital": "hospital-a",
                "workdir": str(tmp_path / "gateway"),
                "exchange": {"url": "https://exchange.invalid", "api_key": "aifi_unused"},
                "dicom": {"ae_title": "AIFI_GW", "port": 11112},
                "routes": [],
                "pacs": [{"name": "main", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            }
        )
    )
    return config


def test_the_command_shows_a_patients_entries_and_checks_the_chain(tmp_path: Path) -> None:
    workdir = tmp_path / "gateway"
    config = offline_gateway_config(tmp_path)
    filled(workdir / "disclosures.db").close()
    runner = CliRunner()
    shown = runner.invoke(
        app,
        [
            "disclosures",
            "--config",
            str(config),
            "--patient",
            "HOSP-2",
            "--json",
            str(tmp_path / "out.json"),
        ],  # fmt: skip
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert shown.exit_code == 0, shown.output
    assert "3 entries" in shown.output and "step 5" in shown.output and "step 4" not in shown.output
    exported = json.loads((tmp_path / "out.json").read_text())
    assert [e["detail"] for e in exported] == ["step 1", "step 3", "step 5"]
    intact = runner.invoke(app, ["disclosures", "--config", str(config), "--verify"])
    assert intact.exit_code == 0 and "hash chain verified" in intact.output
    with sqlite3.connect(workdir / "disclosures.db") as db:
        db.execute("UPDATE entries SET recipient = 'nobody' WHERE seq = 4")
    broken = runner.invoke(app, ["disclosures", "--config", str(config), "--verify"])
    assert broken.exit_code == 1
    assert "entry 4: its content was changed" in broken.output


@pytest.mark.peer
def test_a_study_whose_disclosure_cannot_be_written_waits_then_is_recorded_once(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=7, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    patient = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)
    with started_gateway(tmp_path, national) as gateway:
        path = gateway.disclosures.path
        gateway.disclosures.close()  # as a full disk would have it: nothing can be written
        storescu(files, gateway.port)
        assert gateway.wait_until(
            lambda: (
                "cannot be written" in str(gateway.jobs()[0]["reason"] if gateway.jobs() else "")
            ),
            timeout=60,
        ), gateway.jobs()
        [job] = gateway.jobs()
        assert job["state"] == "pending" and str(path) in job["reason"]
        gateway.disclosures = DisclosureLog(path, "hospital-a", "gateway AIFI_GW")  # room again

        def recorded() -> list[str]:
            return [e.action for e in gateway.disclosures.entries(patient_id=patient)]

        # The first attempt had sent the study, and the product may finish it before the retry
        # records it: its result waits for the record.
        assert gateway.wait_until(
            lambda: (
                [j["state"] for j in gateway.jobs()] == ["delivered"]
                and recorded() == ["disclosed", "reidentified", "delivered"]
            ),
            timeout=60,
        ), (gateway.jobs(), recorded())
        [job] = gateway.jobs()
    # Once the gateway has stopped (every attempt in flight finished), the retry that recorded
    # the disclosure has not taken the delivered job back, and nothing was recorded twice.
    with sqlite3.connect(tmp_path / "gateway" / "state.db") as db:
        assert db.execute("SELECT state FROM jobs").fetchall() == [("delivered",)]
    log = DisclosureLog(path, "hospital-a", "gateway AIFI_GW")
    assert [e.action for e in log.entries()] == ["disclosed", "reidentified", "delivered"]
    assert log.verify() == []
    log.close()
    with national.api() as api:
        sent = api.get(f"/jobs/{job['exchange_job_id']}").json()
    assert sent["input_count"] == len(files)  # sent again, taken once


class Killed(BaseException):
    """The gateway's process ends here (a power cut, `kill -9`): nothing after it runs."""


def test_a_result_re_identified_just_before_a_crash_is_on_record_once(
    hospital: Hospital,
) -> None:
    """The result's re-identified copy was kept, and the gateway stopped before its entry
    was written: reopened, it writes the entry then, once, and delivers the result."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    assert len(hospital.send_due()) == 1
    [job] = hospital.jobs()
    ended = until_ended(hospital, job["exchange_job_id"])
    assert ended["state"] == "completed"
    recording = hospital.gateway.disclosures.record

    def killed_once(action: Action, **entry: Any) -> Any:
        if action == Action.reidentified:
            hospital.gateway.disclosures.record = recording  # type: ignore[method-assign]
            raise Killed()
        return recording(action, **entry)

    hospital.gateway.disclosures.record = killed_once  # type: ignore[method-assign]
    with pytest.raises(Killed):
        hospital.gateway.collect(ended)
    kept = list((hospital.gateway.fetched_results(job["id"]).parent / "reidentified").iterdir())
    assert kept, "the re-identified copy was written before the crash"
    assert [e.action for e in hospital.gateway.disclosures.entries()] == ["disclosed"]

    hospital.close()
    hospital.gateway = hospital.open()
    assert hospital.gateway.collect(ended)
    [job] = hospital.jobs()
    assert job["state"] == "delivered", job["reason"]
    actions = [e.action for e in hospital.gateway.disclosures.entries()]
    assert actions.count("reidentified") == len(kept) == 1, actions
    assert actions == ["disclosed", "reidentified", "delivered"]
    # Brought home again (its acknowledgement lost, say): nothing more is recorded.
    assert hospital.gateway.collect(ended)
    assert [e.action for e in hospital.gateway.disclosures.entries()] == actions


def forge_newest(path: Path, detail: str) -> None:
    """Rewrite the newest entry and its hash, as someone who can write the file and knows the
    format would: the chain still links and no entry number is missing."""
    with sqlite3.connect(path) as db:
        seq, prev = db.execute(
            "SELECT seq, prev_hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        db.row_factory = sqlite3.Row
        fields = dict(db.execute("SELECT * FROM entries WHERE seq = ?", (seq,)).fetchone())
        fields["detail"] = detail
        db.execute(
            "UPDATE entries SET detail = ?, entry_hash = ? WHERE seq = ?",
            (detail, entry_digest(fields, prev), seq),
        )


def cut_newest(path: Path, keep: int) -> None:
    """Remove the entries after `keep`, and the sequence's memory of them."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE seq > ?", (keep,))
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'entries'", (keep,))


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda path: forge_newest(path, "nothing went out"), "entry 6: not the entry anchored"),
        (lambda path: cut_newest(path, 4), "entry 6: anchored as 6:"),
    ],
    ids=["rewritten", "cut-off"],
)
def test_an_anchor_kept_elsewhere_shows_what_the_chain_alone_cannot(
    tmp_path: Path, tamper: Any, problem: str
) -> None:
    path = tmp_path / "disclosures.db"
    log = filled(path)
    anchor = log.anchor()
    assert anchor is not None and anchor.seq == 6
    assert Anchor.parse(str(anchor)) == anchor
    log.close()
    tamper(path)
    log = DisclosureLog(path, "hospital-a", "gateway AIFI_GW")
    assert log.verify() == []  # the chain still links: this is why the anchor leaves the host
    problems = log.verify(anchors=[anchor])
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    # An anchor of an entry the tampering left alone still holds.
    assert log.verify(anchors=[Anchor(3, log.entries()[2].entry_hash)]) == []
    log.close()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("6", "expected ENTRY:SHA256"),
        ("0:" + "a" * 64, "expected ENTRY:SHA256"),
        ("six:" + "a" * 64, "expected ENTRY:SHA256"),
        ("6:" + "A" * 64, "64 lower-case hex digits"),
        ("6:abc", "64 lower-case hex digits"),
    ],
)
def test_a_malformed_anchor_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Anchor.parse(text)


def test_the_gateway_writes_each_new_anchor_to_its_journal_and_the_command_checks_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = offline_gateway_config(tmp_path)
    gateway = Gateway(load_config(config))  # not started: its loops would reach the exchange
    caplog.set_level(logging.INFO, logger="aifi.gateway.service")
    try:
        assert gateway.anchor_disclosures() is None and "anchor" not in caplog.text
        for n in range(3):
            gateway.disclosures.record(
                Action.disclosed, patient_id="HOSP-1", study_uid=f"1.2.{n}", recipient="product-a"
            )
        first = gateway.anchor_disclosures()
        assert first is not None and first.seq == 3
        assert gateway.anchor_disclosures() == first  # unchanged: not written again
        gateway.disclosures.record(
            Action.delivered, patient_id="HOSP-1", study_uid="1.2.2", recipient="PACS"
        )
    finally:
        gateway.stop()  # writes the newest anchor, of entry 4
    journal = [r.getMessage() for r in caplog.records if "disclosure log anchor" in r.getMessage()]
    assert len(journal) == 2 and journal[0].startswith(f"disclosure log anchor {first} ")
    newest = journal[1].split()[3]
    assert newest.startswith("4:")

    runner = CliRunner()
    held = runner.invoke(
        app, ["disclosures", "--config", str(config), "--anchor", str(first), "--anchor", newest]
    )
    assert held.exit_code == 0, held.output
    assert "4 entries, hash chain verified, 2 anchor(s) held" in held.output
    assert f"newest entry's anchor (keep it off this host): {newest}" in held.output
    cut_newest(tmp_path / "gateway" / "disclosures.db", 3)
    cut = runner.invoke(app, ["disclosures", "--config", str(config), "--anchor", newest])
    assert cut.exit_code == 1
    assert "entry 4: anchored as" in cut.output and "entries after 3 were removed" in cut.output
    malformed = runner.invoke(app, ["disclosures", "--config", str(config), "--anchor", "4"])
    assert malformed.exit_code == 2 and "expected ENTRY:SHA256" in malformed.output
