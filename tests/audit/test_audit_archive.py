"""Old access-log entries move to archive files in the blob store; the chain holds across them,
tampering with an archive or its record is found, and nothing is lost or doubled on the way.

Runs on every backend: SQLite with a local folder, PostgreSQL, PostgreSQL with S3.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import delete, event, func, select, update

from aifi.chain_anchor import Anchor
from aifi.exchange import audit as audit_module
from aifi.exchange import audit_archive, audit_search
from aifi.exchange.app import create_app
from aifi.exchange.audit import Actor, AuditAnchors, AuditLog, check_chain, newest_anchor
from aifi.exchange.audit_archive import (
    ArchiveRefused,
    AuditArchiver,
    archive_key,
    archives,
    verify_archives,
)
from aifi.exchange.audit_search import IN_DATABASE, AuditQuery, search
from aifi.exchange.blobs import BlobStore, TempBlob, open_blob_store
from aifi.exchange.clock import utcnow
from aifi.exchange.db import ARCHIVE_LOCK, RETENTION_LOCK, Database, upgrade_schema
from aifi.exchange.models import AuditArchive, AuditEntry
from aifi.exchange.settings import ExchangeSettings
from aifi.web import mount
from scale.exchange_api import BACKENDS, OPERATOR_KEY, backend_settings
from support.plans import plan_of

HOSPITAL = Actor("hospital-a", "hospital")


@dataclass
class Log:
    db: Database
    blobs: BlobStore
    audit: AuditLog
    settings: ExchangeSettings

    def write(self, count: int, start: int = 0) -> None:
        for number in range(start, start + count):
            self.audit.record(HOSPITAL, "read", "job", f"job-{number}", patient_pseudonym="p1")
        self.link_all()

    def link_all(self) -> None:
        """Every entry stored is linked. A round of `AuditLog.chain` that finds the chain's
        lock taken links nothing and leaves it to the holder (as replicas do); on a loaded
        machine that happened here once, so a test that counts positions asks again until
        none is left unlinked."""
        deadline = time.monotonic() + 30
        while self.unlinked():
            assert time.monotonic() < deadline, "entries stayed unlinked for 30 s"
            self.audit.chain()

    def unlinked(self) -> int:
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(AuditEntry.chain_seq.is_(None))
                )
                or 0
            )

    def archiver(self, settings: ExchangeSettings | None = None) -> AuditArchiver:
        return AuditArchiver(self.db, self.blobs, self.audit, settings or self.settings)

    def in_table(self) -> list[str]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(AuditEntry.object_id)
                    .where(AuditEntry.action == "read")
                    .order_by(AuditEntry.id)
                )
            )

    def archived(self, archive: AuditArchive) -> list[dict[str, object]]:
        return self.archived_file(archive.blob_key)

    def archived_file(self, key: str) -> list[dict[str, object]]:
        data = gzip.decompress(b"".join(self.blobs.read(key)))
        return [json.loads(line) for line in data.splitlines()]

    def replace_blob(self, key: str, content: bytes) -> None:
        fd, name = tempfile.mkstemp(dir=self.blobs.incoming)
        with open(fd, "wb") as out:
            out.write(content)
        digest = hashlib.sha256(content).hexdigest()
        self.blobs.commit(TempBlob(Path(name), len(content), digest), key)


@pytest.fixture(params=BACKENDS)
def log(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Log]:
    chosen = backend_settings(str(request.param), tmp_path, request.config)
    settings = chosen.settings
    db = Database(settings.resolved_database_url())
    upgrade_schema(db.engine)
    try:
        yield Log(db, open_blob_store(settings.resolved_blob_url()), AuditLog(db), settings)
    finally:
        db.dispose()
        chosen.close()


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of 7 entries read 3 at a time: every edge of a batch and of a file is crossed."""
    monkeypatch.setattr(audit_archive, "ARCHIVE_ENTRIES", 7)
    monkeypatch.setattr(audit_archive, "READ_BATCH", 3)


def test_old_entries_move_to_archives_and_the_chain_holds_across_them(
    log: Log, small_runs: None
) -> None:
    log.write(30)
    moment = utcnow()
    log.write(10, start=30)

    written = log.archiver().archive_before(moment)

    assert [archive.entries for archive in written] == [7, 7, 7, 7, 2]
    assert [(a.first_seq, a.last_seq) for a in written] == [
        (1, 7), (8, 14), (15, 21), (22, 28), (29, 30),
    ]  # fmt: skip
    assert [a.blob_key for a in written] == [archive_key(a.first_seq, a.last_seq) for a in written]
    assert log.in_table() == [f"job-{n}" for n in range(30, 40)]
    archived = [entry for a in archives(log.db) for entry in log.archived(a)]
    assert [entry["object_id"] for entry in archived] == [f"job-{n}" for n in range(30)]
    assert [entry["chain_seq"] for entry in archived] == list(range(1, 31))
    assert all(entry["patient_pseudonym"] == "p1" for entry in archived)

    log.link_all()  # the archiving's own entries, and the table's chain goes on
    check = check_chain(log.db)
    assert check.ok, check.problems
    assert (check.archives, check.archived_entries) == (5, 30)
    assert check.entries == 10 + 5
    files = verify_archives(log.db, log.blobs)
    assert files.ok, files.problems
    assert files.entries == 30
    with log.db.session() as session:
        said = list(session.scalars(select(AuditEntry).where(AuditEntry.action == "archive")))
    assert [entry.object_id for entry in said] == ["1-7", "8-14", "15-21", "22-28", "29-30"]
    assert all(entry.organisation_id == "exchange" for entry in said)
    assert f"moved to {archive_key(29, 30)}" in said[-1].detail

    # Entries written afterwards link on, and a second round finds nothing before the moment.
    log.write(3, start=40)
    assert check_chain(log.db).ok
    assert log.archiver().archive_before(moment) == []


def test_the_newest_linked_entry_stays_and_the_chain_goes_on_from_it(log: Log) -> None:
    log.write(5)
    written = log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert [(a.first_seq, a.last_seq) for a in written] == [(1, 4)]
    assert log.in_table() == ["job-4"]
    log.link_all()
    log.write(2, start=5)
    with log.db.session() as session:
        newest = session.scalar(select(func.max(AuditEntry.chain_seq)))
    assert newest == 5 + 1 + 2  # five reads, the archiving's entry, two reads
    assert check_chain(log.db).ok


def test_the_exchange_archives_on_its_sweep_only_when_told_to(log: Log) -> None:
    log.write(6)
    later = utcnow() + timedelta(hours=2)
    assert log.archiver().sweep(now=later) == []  # the default keeps every entry
    told = log.settings.model_copy(update={"archive_audit_after_seconds": 3600.0})
    assert log.archiver(told).sweep(now=utcnow()) == []  # nothing an hour old yet
    assert [a.entries for a in log.archiver(told).sweep(now=later)] == [5]


def test_an_edited_archive_file_is_found(log: Log) -> None:
    log.write(6)
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    content = gzip.decompress(b"".join(log.blobs.read(archive.blob_key)))
    log.replace_blob(archive.blob_key, gzip.compress(content.replace(b"job-2", b"job-9")))

    assert check_chain(log.db).ok  # the records alone still agree
    files = verify_archives(log.db, log.blobs)
    assert not files.ok
    key = archive.blob_key
    assert f"archive {key}: entry 3: content does not match its hash (edited)" in files.problems
    assert f"archive {key}: the file is not the one archived (its SHA-256 differs)" in (
        files.problems
    )


def test_a_line_cut_from_an_archive_file_is_found(log: Log) -> None:
    log.write(6)
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    lines = gzip.decompress(b"".join(log.blobs.read(archive.blob_key))).splitlines(True)
    log.replace_blob(archive.blob_key, gzip.compress(b"".join(lines[:2] + lines[3:])))
    problems = verify_archives(log.db, log.blobs).problems
    assert any("entry 4: at position 4, expected 3" in problem for problem in problems)
    assert any("holds 4 entries" in problem for problem in problems)


def test_a_missing_archive_file_or_record_is_found(log: Log, small_runs: None) -> None:
    log.write(16)
    written = log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert len(written) == 3
    log.blobs.delete(written[0].blob_key)
    assert verify_archives(log.db, log.blobs).problems == [
        f"archive {written[0].blob_key}: not in the blob store"
    ]
    with log.db.session() as session:
        session.execute(delete(AuditArchive).where(AuditArchive.id == written[1].id))
    check = check_chain(log.db)
    assert check.problems == [
        f"archive {written[2].blob_key}: does not follow the run before it (an archive "
        "record, or entries before it, removed or changed)"
    ]


def test_removing_the_first_entries_left_in_the_table_is_found(log: Log) -> None:
    log.write(8)
    log.archiver().archive_before(utcnow() + timedelta(days=1))
    log.link_all()
    log.write(1, start=8)
    assert check_chain(log.db).ok
    with log.db.session() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.object_id == "job-7"))
    problems = check_chain(log.db).problems
    assert problems[0].endswith("previous hash does not match (removed or re-ordered)")


def test_a_broken_chain_is_not_archived_and_nothing_moves(log: Log) -> None:
    log.write(6)
    with log.db.session() as session:
        session.execute(
            update(AuditEntry).where(AuditEntry.chain_seq == 3).values(object_id="someone-else")
        )
    with pytest.raises(ArchiveRefused, match="entry 3: content does not match its hash"):
        log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert len(log.in_table()) == 6
    assert archives(log.db) == []
    assert log.blobs.delete_under("audit/") == 0
    assert list(log.blobs.incoming.iterdir()) == []


class _DiesBeforeRecording(AuditArchiver):
    """An archiver whose process stops after storing a run's file, before its transaction."""

    def _record(self, *args: object, **kwargs: object) -> AuditArchive:
        raise SystemExit("stopped between the file and its record")


def test_a_stop_between_the_file_and_its_record_loses_and_doubles_nothing(log: Log) -> None:
    log.write(6)
    with pytest.raises(SystemExit):
        _DiesBeforeRecording(log.db, log.blobs, log.audit, log.settings).archive_before(
            utcnow() + timedelta(days=1)
        )
    assert len(log.in_table()) == 6  # every entry still in the table
    assert archives(log.db) == []
    assert len(log.archived_file(archive_key(1, 5))) == 5  # a file no row names

    log.write(3, start=6)  # the next round reaches further, from the same first position
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert archive.blob_key == archive_key(1, 8)
    assert log.blobs.keys_under("audit/") == [archive_key(1, 8)]  # the one left behind went
    assert [entry["object_id"] for entry in log.archived(archive)] == [f"job-{n}" for n in range(8)]
    assert log.in_table() == ["job-8"]
    log.link_all()
    assert check_chain(log.db).ok
    assert verify_archives(log.db, log.blobs).ok
    assert log.blobs.delete_under("audit/") == 1, "one file, not two"


class _RaceAfterWriting(AuditArchiver):
    """An archiver during whose file another hand removes an entry it wrote."""

    def _write(self, *args: Any, **kwargs: Any) -> Any:
        run = super()._write(*args, **kwargs)
        with self._db.session() as session:
            session.execute(delete(AuditEntry).where(AuditEntry.chain_seq == 2))
        return run


def test_entries_that_changed_while_the_file_was_written_stay_in_the_table(log: Log) -> None:
    log.write(5)
    racing = _RaceAfterWriting(log.db, log.blobs, log.audit, log.settings)
    with pytest.raises(ArchiveRefused, match="held 3 entries .* not the 4 archived"):
        racing.archive_before(utcnow() + timedelta(days=1))
    assert log.in_table() == ["job-0", "job-2", "job-3", "job-4"]
    assert archives(log.db) == []
    assert log.blobs.delete_under("audit/") == 0, "the file no archive names was deleted"


def test_the_chain_goes_on_from_the_archives_when_the_table_holds_no_linked_entry(
    log: Log,
) -> None:
    log.write(3)
    log.archiver().archive_before(utcnow() + timedelta(days=1))
    with log.db.session() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.chain_seq.is_not(None)))
    log.link_all()  # links the archiving's own entry
    with log.db.session() as session:
        (entry,) = session.scalars(select(AuditEntry).where(AuditEntry.chain_seq.is_not(None)))
    assert entry.action == "archive"
    assert entry.chain_seq == 3  # after the archived 1–2, not at 1 again
    assert check_chain(log.db).entries == 1


@pytest.mark.usefixtures("quiet_replica")  # the chain linked here, not by a round meanwhile
def test_the_exchange_archives_on_its_sweep_and_reports_the_archives(log: Log) -> None:
    settings = log.settings.model_copy(update={"archive_audit_after_seconds": 3600.0})
    with TestClient(create_app(settings)) as client:
        operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
        for _ in range(5):
            assert client.get("/jobs", headers=operator).status_code == 200
        assert client.get("/audit/verify", headers=operator).json()["archives"] == 0
        # What the replica's round would link, linked now: on PostgreSQL a round holding
        # the chain's lock as the sweep ran left nothing linked to archive.
        client.app.state.services.audit.chain()  # type: ignore[attr-defined]
        archiver = client.app.state.archiver  # type: ignore[attr-defined]
        written = archiver.sweep(now=utcnow() + timedelta(hours=2))
        report = client.get("/audit/verify", headers=operator).json()
    assert report["ok"], report["problems"]
    assert report["archives"] == len(written) == 1
    assert report["archived_entries"] == written[0].entries > 0


@pytest.mark.usefixtures("quiet_replica")  # its own chain() must not find the replica's round
def test_the_exchange_counts_what_it_archived_and_a_round_that_failed(log: Log) -> None:
    settings = log.settings.model_copy(update={"archive_audit_after_seconds": 60.0})
    later = utcnow() + timedelta(hours=1)
    with TestClient(create_app(settings)) as client:
        archiver = client.app.state.archiver  # type: ignore[attr-defined]
        log.write(4)
        (archive,) = archiver.sweep(now=later)
        log.link_all()
        log.write(3, start=4)
        with log.db.session() as session:  # someone edits an entry still in the table
            session.execute(
                update(AuditEntry).where(AuditEntry.object_id == "job-5").values(detail="x")
            )
        with pytest.raises(ArchiveRefused):
            archiver.sweep(now=later)
        metrics = client.get("/metrics").text
    assert f"aifi_exchange_audit_archived_entries_total {float(archive.entries)}" in metrics
    assert 'aifi_exchange_errors_total{kind="audit_archive"} 1.0' in metrics


def test_a_search_finds_entries_in_the_archives_and_the_table_alike(log: Log) -> None:
    vendor = Actor("vendor-a", "vendor")
    log.audit.record(HOSPITAL, "create", "job", "job-a", patient_pseudonym="p1")
    log.audit.record(vendor, "read", "input", "job-a/1.2.3", patient_pseudonym="p1")
    log.audit.record(HOSPITAL, "create", "job", "job-ab", patient_pseudonym="p2")
    log.audit.record(HOSPITAL, "read", "job", "job-c", patient_pseudonym="p3")  # stays
    log.link_all()
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    between = utcnow()
    log.audit.record(vendor, "create", "result", "job-a/sr.dcm", patient_pseudonym="p1")
    log.audit.record(HOSPITAL, "read", "result", "job-ab/sr.dcm", patient_pseudonym="p2")

    def found(**criteria: object) -> list[tuple[str, str, str]]:
        query = AuditQuery(**criteria)  # type: ignore[arg-type]
        return [(kept, e.action, e.object_id) for kept, e in search(log.db, log.blobs, query)]

    assert found(patient_pseudonym="p1") == [
        (archive.blob_key, "create", "job-a"),
        (archive.blob_key, "read", "job-a/1.2.3"),
        (IN_DATABASE, "create", "job-a/sr.dcm"),
    ]
    # A job's id finds what lies under it, not another job whose id begins the same.
    assert [object_id for *_, object_id in found(object_id="job-a")] == [
        "job-a", "job-a/1.2.3", "job-a/sr.dcm",
    ]  # fmt: skip
    assert found(organisation_id="vendor-a", since=between) == [
        (IN_DATABASE, "create", "job-a/sr.dcm")
    ]
    assert found(patient_pseudonym="p2", until=between) == [(archive.blob_key, "create", "job-ab")]
    assert found(patient_pseudonym="nobody") == []


def test_a_patients_entries_are_read_by_the_patient_index_not_by_walking_the_table(
    log: Log,
) -> None:
    """The search's own statement, as the driver got it, explained by the database: it must
    be able to use the patient index. Without it a search walked the whole table in chain
    order (0.2 s a million entries; benchmarks/audit_archive.py)."""
    for patient in ("p1", "p2", "p3"):
        for number in range(20):
            log.audit.record(
                HOSPITAL, "read", "job", f"{patient}-{number}", patient_pseudonym=patient
            )
    log.link_all()
    sent: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM audit_log" in statement and "patient_pseudonym =" in statement:
            sent.append((statement, parameters))

    event.listen(log.db.engine, "before_cursor_execute", keep)
    try:
        found = list(search(log.db, log.blobs, AuditQuery(patient_pseudonym="p2")))
    finally:
        event.remove(log.db.engine, "before_cursor_execute", keep)
    assert [entry.object_id for _, entry in found] == [f"p2-{n}" for n in range(20)]
    assert sent
    for statement, parameters in sent:
        plan = plan_of(log.db, statement, parameters)
        assert "ix_audit_log_patient" in plan, plan


def test_a_search_misses_nothing_that_an_archiving_round_moves_while_it_reads(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.write(8)
    monkeypatch.setattr(audit_search, "SEARCH_BATCH", 3)
    read_table = audit_search._table_batch
    rounds: list[AuditArchive] = []

    def archive_then_read(*args: Any) -> list[Any]:
        # The round commits just before the search's first look at the table: the entries
        # it moved are no longer there to be read.
        if not rounds:
            rounds.extend(log.archiver().archive_before(utcnow() + timedelta(days=1)))
        return read_table(*args)

    monkeypatch.setattr(audit_search, "_table_batch", archive_then_read)
    found = list(search(log.db, log.blobs, AuditQuery(patient_pseudonym="p1")))

    (archive,) = rounds
    assert [e.object_id for _, e in found] == [f"job-{n}" for n in range(8)]
    assert [kept for kept, _ in found] == [archive.blob_key] * 7 + [IN_DATABASE]
    assert [e.chain_seq for _, e in found] == list(range(1, 9))


def test_a_page_out_of_time_says_where_to_go_on_and_the_pages_miss_nothing(
    log: Log, small_runs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A patient's few entries among many archived ones: each page reads for its time only
    (none here, so a page stops at its first look at the clock) and says where to go on."""
    other = Actor("hospital-b", "hospital")
    for number in range(30):
        log.audit.record(other, "read", "job", f"other-{number}", patient_pseudonym="p9")
        if number % 6 == 0:
            log.audit.record(HOSPITAL, "read", "job", f"job-{number}", patient_pseudonym="p1")
    log.link_all()
    written = log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert len(written) >= 4
    log.write(2, start=100)  # in the table
    monkeypatch.setattr(audit_search, "CLOCK_EVERY", 4)

    pages: list[audit_search.SearchPage] = []
    after: int | None = 0
    while after is not None:
        pages.append(
            audit_search.search_page(
                log.db, log.blobs, log.audit, HOSPITAL, AuditQuery(patient_pseudonym="p1"),
                after=after, limit=3, seconds=0,
            )
        )  # fmt: skip
        after = pages[-1].next_after
        assert len(pages) < 100, "every page gets further"
    found = [entry.object_id for page in pages for _, entry in page.entries]
    reads = [o for o in found if o.startswith("job-")]
    assert reads == [f"job-{n}" for n in range(0, 30, 6)] + ["job-100", "job-101"]
    stopped = [page for page in pages if page.stopped]
    assert stopped and any(len(page.entries) < 3 for page in stopped)
    assert not pages[-1].stopped
    positions = [page.next_after for page in pages[:-1]]
    assert positions == sorted(set(positions)), "each page goes on from further along"
    with log.db.session() as session:
        logged = list(
            session.scalars(select(AuditEntry.detail).where(AuditEntry.action == "search"))
        )
    assert len(logged) == len(pages)
    assert sum("read until position" in detail for detail in logged) == len(stopped)


def test_the_api_search_pages_through_archives_and_table_and_is_logged(log: Log) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    log.write(6)
    log.audit.record(HOSPITAL, "read", "job", "job-x", patient_pseudonym="p2")
    log.write(4, start=6)
    with TestClient(create_app(log.settings)) as client:
        (first,) = log.archiver().archive_before(utcnow() + timedelta(days=1))

        def page(after: int, **criteria: str) -> dict[str, Any]:
            answer = client.get(
                "/audit/search",
                params={"after": after, "limit": 4, **criteria},
                headers=operator,
            )
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        one = page(0, patient="p1")
        assert [e["object_id"] for e in one["entries"]] == ["job-0", "job-1", "job-2", "job-3"]
        assert {e["kept_in"] for e in one["entries"]} == {first.blob_key}
        # A second round between pages: the next page neither skips nor repeats an entry.
        log.write(2, start=10)
        (second,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
        pages = [one]
        while pages[-1]["next_after"] is not None:
            pages.append(page(pages[-1]["next_after"], patient="p1"))
        found = [e for p in pages for e in p["entries"]]
        reads = [e["object_id"] for e in found if e["action"] == "read"]
        assert reads == [f"job-{n}" for n in range(12)]
        # The pages' own searches are accesses to the patient's entries, and are found too.
        assert {e["object_type"] for e in found if e["action"] == "search"} == {"audit"}
        assert [e["chain_seq"] for e in found] == sorted(e["chain_seq"] for e in found)
        assert {e["kept_in"] for e in found} == {first.blob_key, second.blob_key, IN_DATABASE}

        other = page(0, patient="p2", since=(utcnow() - timedelta(hours=1)).isoformat())
        assert [e["object_id"] for e in other["entries"]] == ["job-x"]
        assert other["next_after"] is None

        nothing = client.get("/audit/search", headers=operator)
        assert nothing.status_code == 422
        assert "name a patient, an organisation or an object" in nothing.text
        backwards = client.get(
            "/audit/search",
            params={"patient": "p1", "since": "2026-02-01T00:00Z", "until": "2026-01-01T00:00Z"},
            headers=operator,
        )
        assert backwards.status_code == 422 and "since must come before until" in backwards.text
        stranger = {"Authorization": "Bearer aifi_not-a-key-0123456789abcdef0123"}
        assert (
            client.get("/audit/search", params={"patient": "p1"}, headers=stranger).status_code
            == 401
        )
    with log.db.session() as session:
        searches = list(session.scalars(select(AuditEntry).where(AuditEntry.action == "search")))
    assert [(e.organisation_id, e.object_type, e.patient_pseudonym) for e in searches][-1] == (
        "operator", "audit", "p2",
    )  # fmt: skip
    assert searches[-1].object_id.startswith("patient, since=")


def test_a_search_over_an_archive_missing_from_the_store_names_it_and_pages(log: Log) -> None:
    """The object store restored to a moment before an archive file was written: a search
    that reaches the file says which one is missing and how to list them all, on the API and
    in FHIR, and each is counted as a missing blob (`BlobsMissing` pages); never a bare 500."""
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    log.write(6)
    # Archived before the exchange starts: its own entries, linked by its background work
    # while the archiver runs, would make a second archive file of this round.
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    log.blobs.delete(archive.blob_key)
    with TestClient(create_app(log.settings, extensions=[mount])) as client:
        said = (
            f"the access-log archive {archive.blob_key} (positions {archive.first_seq}–"
            f"{archive.last_seq}) is missing from the exchange's blob store"
        )
        answer = client.get("/audit/search", params={"patient": "p1"}, headers=operator)
        assert answer.status_code == 500
        assert answer.json()["detail"].startswith(said)
        assert "aifi audit verify --archives" in answer.json()["detail"]
        fhir = client.get(
            "/audit/fhir/AuditEvent",
            params={"patient.identifier": "urn:aifi:patient-pseudonym|p1"},
            headers=operator,
        )
        assert fhir.status_code == 500
        [issue] = OperationOutcome.model_validate_json(fhir.text).issue
        assert issue.code == "exception" and (issue.diagnostics or "").startswith(said)
        # The privacy officer's page says the same, above the log's newest entries.
        olga = {"username": "olga", "password": "correct horse battery"}
        created = client.post(
            "/users",
            json={
                **olga,
                "organisation_id": "operator",
                "display_name": "Olga",
                "role": "operator",
            },
            headers=operator,
        )
        assert created.status_code == 201, created.text
        assert client.post("/ui/login", data=olga).status_code in (200, 303)
        shown = client.get("/ui/audit", params={"patient": "p1"})
        assert shown.status_code == 500 and said in html.unescape(shown.text)
        metrics = client.get("/metrics").text
    assert 'aifi_exchange_errors_total{kind="blob_missing"} 3.0' in metrics


def test_a_fhir_search_pages_through_archives_and_table_by_its_next_links(log: Log) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    log.write(5)
    log.audit.record(HOSPITAL, "read", "job", "job-x", patient_pseudonym="p2")
    log.write(3, start=5)
    with TestClient(create_app(log.settings, extensions=[mount])) as client:
        assert log.archiver().archive_before(utcnow() + timedelta(days=1))
        log.write(2, start=8)  # these stay in the table
        url: str | None = "/audit/fhir/AuditEvent"
        params: dict[str, str] | None = {
            "patient.identifier": "urn:aifi:patient-pseudonym|p1",
            "date": f"ge{utcnow().year - 1}",
            "_count": "4",
        }
        events: list[AuditEvent] = []
        while url is not None:
            answer = client.get(url, params=params, headers=operator)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/fhir+json"
            bundle = Bundle.model_validate_json(answer.text)
            assert bundle.type == "searchset"
            events += [entry.resource for entry in bundle.entry or []]
            links = {link.relation: link.url for link in bundle.link or []}
            url, params = links.get("next"), None  # the next link carries the whole search
        objects = [event.entity[0].what.identifier.value for event in events]
        # The earlier pages' own searches named the patient, so they are found too.
        assert [o for o in objects if o.startswith("job-")] == [f"job-{n}" for n in range(10)]
        since = f"patient, since={utcnow().year - 1}-01-01T00:00:00+00:00"
        assert [o for o in objects if not o.startswith("job-")] == [since] * 2
        patients = {e.entity[1].what.identifier.value for e in events if len(e.entity) > 1}
        assert patients == {"p1"}
        # An organisation's search by FHIR's own modifier, archives included.
        answer = client.get(
            "/audit/fhir/AuditEvent",
            params={"agent:identifier": "hospital-a", "entity-identifier": "urn:aifi:job|job-x"},
            headers=operator,
        )
        (found,) = Bundle.model_validate_json(answer.text).entry or []
        assert found.resource.entity[1].what.identifier.value == "p2"

        # Refusals come as OperationOutcomes, and a wrong key or role as before.
        typo = client.get(
            "/audit/fhir/AuditEvent", params={"patient.identifer": "p1"}, headers=operator
        )
        assert typo.status_code == 400
        issue = OperationOutcome.model_validate_json(typo.text).issue[0]
        assert issue.code == "not-supported" and "'patient.identifer'" in issue.diagnostics
        stranger = {"Authorization": "Bearer aifi_not-a-key-0123456789abcdef0123"}
        assert (
            client.get(
                "/audit/fhir/AuditEvent", params={"patient.identifier": "p1"}, headers=stranger
            ).status_code
            == 401
        )
        metadata = client.get("/audit/fhir/metadata", headers=operator)
        statement = CapabilityStatement.model_validate_json(metadata.text)
        (resource,) = statement.rest[0].resource
        assert resource.type == "AuditEvent"
        assert "patient.identifier" in {p.name for p in resource.searchParam}
    with log.db.session() as session:
        searches = list(session.scalars(select(AuditEntry).where(AuditEntry.action == "search")))
    assert len(searches) == 4, "three pages for the patient, one for the organisation"
    assert [e.patient_pseudonym for e in searches] == ["p1", "p1", "p1", ""]


def test_anchors_show_entries_cut_off_the_end_or_rewritten(log: Log) -> None:
    log.write(6)
    anchor = newest_anchor(log.db)
    assert anchor is not None and anchor.seq == 6
    assert check_chain(log.db, anchors=[anchor]).ok
    with log.db.session() as session:  # the newest two entries cut off: the chain still holds
        session.execute(delete(AuditEntry).where(AuditEntry.chain_seq >= 5))
    assert check_chain(log.db).ok
    assert check_chain(log.db, anchors=[anchor]).problems == [
        f"position 6: anchored as {anchor} but not in the log (entries after 4 were removed)"
    ]
    log.write(1, start=6)  # the chain goes on from 4: a new entry takes position 5
    rewritten = check_chain(log.db, anchors=[Anchor(5, "a" * 64)]).problems
    assert rewritten[0].endswith(
        f"not the entry anchored as 5:{'a' * 64} (it, or one before it, was replaced)"
    )


def test_anchors_inside_archives_are_checked_in_the_files(log: Log) -> None:
    log.write(8)
    inside = Anchor(3, next(e for e in _linked(log) if e.chain_seq == 3).entry_hash)
    at_end = Anchor(7, next(e for e in _linked(log) if e.chain_seq == 7).entry_hash)
    (archive,) = log.archiver().archive_before(utcnow() + timedelta(days=1))
    assert archive.last_seq == 7
    check = check_chain(log.db, anchors=[inside, at_end])
    assert check.ok and check.anchors_in_archives == [inside]
    assert not check_chain(log.db, anchors=[Anchor(7, "b" * 64)]).ok  # the record's last hash
    assert verify_archives(log.db, log.blobs, anchors=[inside]).ok
    forged = verify_archives(log.db, log.blobs, anchors=[Anchor(3, "c" * 64)])
    assert forged.problems == [
        f"archive {archive.blob_key}: entry {inside.seq}: not the entry anchored as "
        f"3:{'c' * 64} (it, or one before it, was replaced)"
    ]


def _linked(log: Log) -> list[AuditEntry]:
    with log.db.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.chain_seq.is_not(None))))


def test_each_replica_puts_the_newest_anchor_in_its_journal_when_it_moved(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    anchors = AuditAnchors(log.db)
    assert anchors.write() is None  # nothing linked yet: nothing written
    log.write(3)
    with caplog.at_level(logging.INFO, logger="aifi.exchange.audit"):
        first = anchors.write()
        anchors.write()  # unchanged: not again
        log.write(1, start=3)
        second = anchors.write()
    lines = [r.getMessage() for r in caplog.records if "audit chain anchor" in r.getMessage()]
    assert first is not None and second is not None and second.seq == first.seq + 1
    assert lines == [
        f"audit chain anchor {a} (check the chain against it: aifi audit verify --anchor {a})"
        for a in (first, second)
    ]


def test_one_round_at_a_time_across_processes_on_sqlite(tmp_path: Path) -> None:
    """`aifi audit archive` beside a running exchange: the second to ask skips the round."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    exchange, command = Database(url), Database(url)
    try:
        with exchange.turn(ARCHIVE_LOCK) as first:
            with command.turn(ARCHIVE_LOCK) as second:
                assert (first, second) == (True, False)
            with command.turn(RETENTION_LOCK) as other_work:
                assert other_work, "another kind of round has a lock of its own"
        with command.turn(ARCHIVE_LOCK) as after:
            assert after
    finally:
        exchange.dispose()
        command.dispose()


def test_an_archive_spans_its_entries_earliest_to_latest_time_not_its_first_and_last(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry's time is taken when it is made, before its transaction commits; entries are
    linked as they commit, so times within a run are not in chain order. A period search
    passes over an archive whose span misses its entries, as this one's did: the entry of
    10:00:05 sat between entries of 10:00:00 and 10:00:02."""
    start = utcnow().replace(microsecond=0) - timedelta(days=30)
    for seconds, patient in ((0, "a"), (5, "wanted"), (2, "b"), (40, "newest")):
        made = start + timedelta(seconds=seconds)
        monkeypatch.setattr(audit_module, "utcnow", lambda made=made: made)
        log.audit.record(HOSPITAL, "read", "job", f"job-{patient}", patient_pseudonym=patient)
        log.link_all()
    monkeypatch.undo()
    [archive] = log.archiver().archive_before(start + timedelta(seconds=10))
    assert (archive.first_at, archive.last_at) == (start, start + timedelta(seconds=5))
    question = AuditQuery(patient_pseudonym="wanted", since=start + timedelta(seconds=3))
    found = [(where, entry.object_id) for where, entry in search(log.db, log.blobs, question)]
    assert found == [(archive.blob_key, "job-wanted")]
