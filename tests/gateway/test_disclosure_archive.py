"""Old entries of the gateway's disclosure log move into files the hospital keeps: the chain
holds across them, a file is checked against the log's record of it, a patient's archived
entries are still found, and nothing leaves the log unless it is in a file."""

from __future__ import annotations

import fcntl
import gzip
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway import disclosure_archive
from aifi.gateway.disclosure_archive import archive_disclosures, read_archive, verify_archive
from aifi.gateway.disclosures import Action, Anchor, NotRecorded
from gateway.test_disclosures import filled, offline_gateway_config


def later() -> datetime:
    """A moment after every entry the test has written.

    Read when it is used, not when the module is imported: a run that crosses
    midnight would otherwise ask for the entries before a day they were written in.
    """
    return datetime.now(UTC) + timedelta(days=1)


def test_old_entries_move_to_files_and_the_chain_holds_across_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disclosure_archive, "RUN_ENTRIES", 2)
    log = filled(tmp_path / "disclosures.db")  # six entries
    runs = archive_disclosures(log, later(), tmp_path / "archive")
    assert [(run.first_seq, run.last_seq) for run in runs] == [(1, 2), (3, 4), (5, 5)]
    assert [entry.seq for entry in log.entries()] == [6], "the newest entry stays"
    files = sorted((tmp_path / "archive").iterdir())
    assert [file.name for file in files] == [
        "disclosures-000000001.jsonl.gz",
        "disclosures-000000003.jsonl.gz",
        "disclosures-000000005.jsonl.gz",
    ]
    assert [entry["detail"] for f in files for entry in read_archive(f)] == [
        f"step {n}" for n in range(5)
    ]
    assert log.verify() == []
    for file in files:
        assert verify_archive(log, file)[1] == []
    # The log goes on from where it stood.
    log.record(Action.notified, patient_id="HOSP-1", study_uid="1.2.3.0", recipient="RIS")
    assert log.verify() == []
    assert archive_disclosures(log, datetime(2000, 1, 1, tzinfo=UTC), tmp_path / "archive") == []


def test_an_edited_file_a_removed_record_and_a_cut_are_found(tmp_path: Path) -> None:
    log = filled(tmp_path / "disclosures.db")
    (run,) = archive_disclosures(log, later(), tmp_path / "archive")
    file = Path(run.file)
    content = gzip.decompress(file.read_bytes())
    file.write_bytes(gzip.compress(content.replace(b"step 2", b"step 9")))
    _, problems = verify_archive(log, file)
    assert f"{file}: not the file archived (its SHA-256 differs)" in problems
    assert "entry 3: its content was changed" in problems

    with sqlite3.connect(log.path) as db:
        db.execute("DELETE FROM archives")
    assert log.verify()[0].startswith("entry 6: does not follow the entry before it")
    assert verify_archive(log, file)[1] == [
        f"{file}: the log records no archive of this name or content"
    ]


def test_a_broken_chain_is_not_archived_and_nothing_leaves(tmp_path: Path) -> None:
    log = filled(tmp_path / "disclosures.db")
    with sqlite3.connect(log.path) as db:
        db.execute("UPDATE entries SET patient_id = 'HOSP-9' WHERE seq = 3")
    with pytest.raises(NotRecorded, match="entry 3: its content was changed"):
        archive_disclosures(log, later(), tmp_path / "archive")
    assert len(log.entries()) == 6
    assert log.archived() == []
    assert not (tmp_path / "archive").exists() or not list((tmp_path / "archive").iterdir())


def test_a_file_that_cannot_be_written_moves_nothing(tmp_path: Path) -> None:
    log = filled(tmp_path / "disclosures.db")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(OSError):
        archive_disclosures(log, later(), blocked)
    assert len(log.entries()) == 6 and log.archived() == []


def test_anchors_are_checked_in_the_log_and_in_the_files(tmp_path: Path) -> None:
    log = filled(tmp_path / "disclosures.db")
    inside = next(e for e in log.entries() if e.seq == 3)
    anchors = [Anchor(3, inside.entry_hash), Anchor(5, log.entries()[4].entry_hash)]
    (run,) = archive_disclosures(log, later(), tmp_path / "archive")
    assert log.verify(anchors=anchors) == []  # 5 is the run's last: its record holds it
    assert log.verify(anchors=[Anchor(5, "0" * 64)]) == [
        f"entry 5: not the entry anchored as 5:{'0' * 64}"
    ]
    assert verify_archive(log, Path(run.file), anchors)[1] == []
    forged = [Anchor(3, "f" * 64)]
    assert verify_archive(log, Path(run.file), forged)[1] == [
        f"entry 3: not the entry anchored as 3:{'f' * 64}"
    ]


def test_the_command_archives_finds_archived_entries_and_checks_the_files(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "gateway"
    config = offline_gateway_config(tmp_path)
    log = filled(workdir / "disclosures.db")
    anchor = str(Anchor(3, log.entries()[2].entry_hash))
    log.close()
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(
            app, ["disclosures", "--config", str(config), *args], env={"COLUMNS": "250"}
        )
        return result.exit_code, result.output

    tomorrow = f"{later():%Y-%m-%d}"
    code, output = run("--archive-before", tomorrow, "--to", str(tmp_path / "archive"))
    assert code == 0 and "5 entries archived" in output, output
    (file,) = (tmp_path / "archive").iterdir()

    code, output = run("--patient", "HOSP-2")
    assert code == 0 and "1 entries" in output and "step 5" in output
    assert "5 entries written up to" in output
    assert f"add --archive FILE for each ({file.name})" in output
    code, output = run("--patient", "HOSP-2", "--archive", str(file), "--archive", str(file))
    assert code == 0 and "3 entries" in output and "step 1" in output and "step 3" in output
    assert output.index("step 1") < output.index("step 3") < output.index("step 5")

    code, output = run("--verify", "--anchor", anchor)
    assert code == 0 and "not checked: 3 fall in archive files not given" in output
    assert "anchor(s) held" not in output
    code, output = run("--verify", "--anchor", anchor, "--archive", str(file))
    assert code == 0 and "1 anchor(s) held" in output
    assert "5 more in 1 archive file(s), 1 of them read back and checked" in output

    file.write_bytes(gzip.compress(gzip.decompress(file.read_bytes()).replace(b"HOSP-1", b"X")))
    code, output = run("--verify", "--archive", str(file))
    assert code == 1 and "its SHA-256 differs" in output

    assert run("--archive-before", tomorrow)[0] == 2  # without --to
    assert run("--patient", "HOSP-1", "--archive", str(tmp_path / "nowhere.gz"))[0] == 2


def test_one_archiving_at_a_time_and_a_file_left_by_a_crash_is_written_over(
    tmp_path: Path,
) -> None:
    log = filled(tmp_path / "disclosures.db")
    folder = tmp_path / "archive"
    folder.mkdir()
    # What an archiving that stopped before recording its run leaves: a file, no record.
    (folder / "disclosures-000000001.jsonl.gz").write_bytes(gzip.compress(b"half a run\n"))
    with open(f"{log.path}.archiving", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(NotRecorded, match="another archiving of .* is under way"):
            archive_disclosures(log, later(), folder)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert len(log.entries()) == 6
    (run,) = archive_disclosures(log, later(), folder)
    assert [file.name for file in folder.iterdir()] == ["disclosures-000000001.jsonl.gz"]
    assert verify_archive(log, Path(run.file))[1] == []
