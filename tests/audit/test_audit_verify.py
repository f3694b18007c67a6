"""`aifi audit verify` finds every kind of tampering: an edited, a removed and a re-ordered
entry of the exchange's hash-chained access log."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from aifi.exchange.app import create_app
from aifi.exchange.audit_cli import app as audit_app
from aifi.exchange.clock import utcnow
from aifi.exchange.settings import ExchangeSettings

KEY = "aifi_audit-test-operator-key-0123456789abc"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An exchange that has logged a few accesses, then stopped."""
    folder = tmp_path / "exchange"
    with TestClient(create_app(ExchangeSettings(data_dir=folder, operator_key=KEY))) as client:
        headers = {"Authorization": f"Bearer {KEY}"}
        for org in ("h1", "h2", "v1"):
            kind = "vendor" if org.startswith("v") else "hospital"
            client.post(
                "/organisations", json={"id": org, "name": org, "kind": kind}, headers=headers
            )
        client.get("/jobs", headers=headers)
        client.get("/metering", headers=headers)
    return folder


def verify(folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(folder)])
    return result.exit_code, result.output


def tamper(folder: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    with sqlite3.connect(folder / "exchange.db") as db:
        change(db)


def test_an_untouched_log_verifies(data_dir: Path) -> None:
    code, output = verify(data_dir)
    assert code == 0 and "intact" in output
    assert "not linked" not in output  # the exchange linked its last entries as it stopped


def test_entries_a_stopped_exchange_did_not_link_are_reported(data_dir: Path) -> None:
    tamper(
        data_dir,
        lambda db: db.execute(
            "UPDATE audit_log SET chain_seq = NULL, prev_hash = '', entry_hash = '' "
            "WHERE chain_seq = (SELECT MAX(chain_seq) FROM audit_log)"
        ),
    )
    code, output = verify(data_dir)
    assert code == 0 and "1 entries are stored but not linked" in output


def test_an_edited_entry_is_found(data_dir: Path) -> None:
    tamper(
        data_dir, lambda db: db.execute("UPDATE audit_log SET organisation_id = 'x' WHERE id = 2")
    )
    code, output = verify(data_dir)
    assert code == 1 and "entry 2: content does not match its hash (edited)" in output


def test_a_removed_entry_is_found(data_dir: Path) -> None:
    tamper(data_dir, lambda db: db.execute("DELETE FROM audit_log WHERE id = 3"))
    code, output = verify(data_dir)
    assert code == 1 and "entry 4: previous hash does not match" in output


def test_reordered_entries_are_found(data_dir: Path) -> None:
    """Two entries swap places in the chain (its order is `chain_seq`, not the row id)."""

    def swap(db: sqlite3.Connection) -> None:
        db.execute("UPDATE audit_log SET chain_seq = -2 WHERE chain_seq = 2")
        db.execute("UPDATE audit_log SET chain_seq = 2 WHERE chain_seq = 3")
        db.execute("UPDATE audit_log SET chain_seq = 3 WHERE chain_seq = -2")

    tamper(data_dir, swap)
    code, output = verify(data_dir)
    assert code == 1 and "previous hash does not match (removed or re-ordered)" in output


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(audit_app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_archived_entries_leave_the_table_and_still_verify(data_dir: Path) -> None:
    tomorrow = f"{utcnow() + timedelta(days=1):%Y-%m-%d}"  # --before is read as UTC
    code, output = run("archive", "--before", tomorrow, "--data-dir", str(data_dir))
    assert code == 0, output
    [name] = re.findall(r"audit/(000000000001-\d{12}\.jsonl\.gz)", output)  # positions 1 to …
    assert "entries archived" in output
    code, listed = run("archives", "--data-dir", str(data_dir))
    assert code == 0 and "1 archive(s)" in listed
    files = list((data_dir / "blobs" / "audit").iterdir())
    assert [file.name for file in files] == [name]

    code, output = run("verify", "--data-dir", str(data_dir))
    assert code == 0 and "in 1 archive(s), passed by their records" in output
    assert "not linked" not in output
    assert "add --archives" in output
    code, output = run("verify", "--archives", "--data-dir", str(data_dir))
    assert code == 0 and "each file read back and checked" in output

    # An archive file edited afterwards: its records still agree, the file does not.
    content = gzip.decompress(files[0].read_bytes()).replace(b'"h1"', b'"h9"')
    files[0].write_bytes(gzip.compress(content))
    assert verify(data_dir)[0] == 0
    code, output = run("verify", "--archives", "--data-dir", str(data_dir))
    assert code == 1 and "content does not match its hash (edited)" in output
    assert "its SHA-256 differs" in output


def test_nothing_to_archive_before_the_log_began(data_dir: Path) -> None:
    code, output = run("archive", "--before", "2020-01-01", "--data-dir", str(data_dir))
    assert code == 0 and "nothing to archive" in output
    assert "no archives" in run("archives", "--data-dir", str(data_dir))[1]


def test_a_broken_chain_is_not_archived(data_dir: Path) -> None:
    tamper(
        data_dir, lambda db: db.execute("UPDATE audit_log SET organisation_id = 'x' WHERE id = 2")
    )
    code, output = run("archive", "--before", "2999-01-01", "--data-dir", str(data_dir))
    assert code == 1 and "cannot be archived: entry 2: content does not match" in output
    assert "no archives" in run("archives", "--data-dir", str(data_dir))[1]


def test_a_malformed_moment_is_refused(data_dir: Path) -> None:
    code, output = run("archive", "--before", "last year", "--data-dir", str(data_dir))
    assert code == 2 and "last year" in output


def test_a_search_reads_the_archives_and_the_table(data_dir: Path, tmp_path: Path) -> None:
    tomorrow = f"{utcnow() + timedelta(days=1):%Y-%m-%d}"  # --before is read as UTC
    assert run("archive", "--before", tomorrow, "--data-dir", str(data_dir))[0] == 0
    found = tmp_path / "found.json"
    code, output = run(
        "search", "--organisation", "operator", "--json", str(found), "--data-dir", str(data_dir)
    )
    assert code == 0, output
    entries = json.loads(found.read_text())
    kept = {entry["kept_in"] for entry in entries}
    assert "database" in kept and len(kept) == 2
    assert any(re.fullmatch(r"audit/000000000001-\d{12}\.jsonl\.gz", place) for place in kept)
    assert [entry["at"] for entry in entries] == sorted(entry["at"] for entry in entries)
    assert {entry["organisation_id"] for entry in entries} == {"operator"}
    assert f"{len(entries)} entries; all written to" in output
    assert "h1" in {entry["object_id"] for entry in entries}  # an organisation it created

    code, output = run("search", "--patient", "nobody", "--data-dir", str(data_dir))
    assert code == 0 and "no entry matches" in output
    # That search read the log for a patient: it is itself an entry about the patient.
    code, output = run(
        "search", "--patient", "nobody", "--json", str(found), "--data-dir", str(data_dir)
    )
    [logged] = json.loads(found.read_text())
    assert (logged["organisation_id"], logged["role"]) == ("operator", "operator")
    assert (logged["action"], logged["object_type"], logged["object_id"]) == (
        "search", "audit", "patient",
    )  # fmt: skip
    assert logged["detail"].startswith("0 entries, from the command line by ")
    code, output = run("search", "--data-dir", str(data_dir))
    assert code == 2 and "name a --patient, an --organisation or an --object" in output


def test_a_search_stops_at_an_archive_missing_from_the_store(
    data_dir: Path, tmp_path: Path
) -> None:
    """The blob store restored to a moment before the second archive was written: the search
    shows and writes (as a whole JSON file) what it found before that file, names the file,
    and fails."""
    tomorrow = f"{utcnow() + timedelta(days=1):%Y-%m-%d}"  # --before is read as UTC
    assert run("archive", "--before", tomorrow, "--data-dir", str(data_dir))[0] == 0
    with TestClient(create_app(ExchangeSettings(data_dir=data_dir, operator_key=KEY))) as client:
        client.get("/jobs", headers={"Authorization": f"Bearer {KEY}"})  # more entries
    assert run("archive", "--before", tomorrow, "--data-dir", str(data_dir))[0] == 0
    code, listed = run("archives", "--data-dir", str(data_dir))
    first, second = re.findall(r"audit/\d{12}-\d{12}\.jsonl\.gz", listed)
    (data_dir / "blobs" / second).unlink()
    found = tmp_path / "found.json"
    code, output = run(
        "search", "--organisation", "operator", "--json", str(found), "--data-dir", str(data_dir)
    )
    assert code == 1
    assert f"the access-log archive {second} (positions " in output
    assert "is missing from the exchange's blob store" in output
    written = json.loads(found.read_text())
    assert written and {entry["kept_in"] for entry in written} == {first}
    assert f"{len(written)} entries; those found before it stopped written to" in output


def test_the_check_holds_the_chain_to_anchors_from_the_journal(data_dir: Path) -> None:
    code, output = run("verify", "--data-dir", str(data_dir))
    newest = output.split("newest entry's anchor (keep it with the audit): ")[1].split()[0]
    code, output = run("verify", "--anchor", newest, "--data-dir", str(data_dir))
    assert code == 0 and "1 anchor(s) held" in output
    seq = newest.split(":")[0]
    tamper(data_dir, lambda db: db.execute(f"DELETE FROM audit_log WHERE chain_seq = {seq}"))
    assert run("verify", "--data-dir", str(data_dir))[0] == 0  # the chain alone holds
    code, output = run("verify", "--anchor", newest, "--data-dir", str(data_dir))
    assert code == 1 and f"position {seq}: anchored as {newest} but not in the log" in output
    code, output = run("verify", "--anchor", "12:nothex", "--data-dir", str(data_dir))
    assert code == 2 and "the hash must be 64 lower-case hex digits" in output


def test_an_anchor_in_an_archived_run_is_checked_in_its_file(data_dir: Path) -> None:
    code, output = run("verify", "--data-dir", str(data_dir))
    newest = output.split("newest entry's anchor (keep it with the audit): ")[1].split()[0]
    seq = int(newest.split(":")[0])
    with sqlite3.connect(data_dir / "exchange.db") as db:
        (digest,) = db.execute(
            "SELECT entry_hash FROM audit_log WHERE chain_seq = ?", (seq - 2,)
        ).fetchone()
    inside = f"{seq - 2}:{digest}"
    tomorrow = f"{utcnow() + timedelta(days=1):%Y-%m-%d}"  # --before is read as UTC
    assert run("archive", "--before", tomorrow, "--data-dir", str(data_dir))[0] == 0
    code, output = run("verify", "--anchor", inside, "--data-dir", str(data_dir))
    assert code == 0 and f"not checked: the anchors at {seq - 2} fall in archived runs" in output
    assert "anchor(s) held" not in output
    code, output = run("verify", "--archives", "--anchor", inside, "--data-dir", str(data_dir))
    assert code == 0 and "1 anchor(s) held" in output
