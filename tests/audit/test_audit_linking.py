"""Audit entries are stored with the change they record and linked into the chain afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from aifi.exchange import audit as audit_module
from aifi.exchange.audit import (
    Actor,
    AuditLog,
    check_chain,
    in_chain_order,
    unlinked_count,
    verify_chain,
)
from aifi.exchange.db import Database, upgrade_schema
from aifi.exchange.models import AuditEntry

HOSPITAL = Actor("hospital-a", "hospital")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'exchange.db'}")
    upgrade_schema(db.engine)
    yield db
    db.dispose()


def _objects(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEntry.object_id).order_by(AuditEntry.id)))


def test_an_entry_rolls_back_with_the_change_it_records(database: Database) -> None:
    log = AuditLog(database)
    with pytest.raises(RuntimeError), database.session() as session:
        log.record_in(session, HOSPITAL, "create", "job", "never-made")
        raise RuntimeError("the change failed after its entry was written")
    with database.session() as session:
        log.record_in(session, HOSPITAL, "create", "job", "made")
    assert _objects(database) == ["made"]


def test_stored_entries_are_linked_in_rounds_and_verify(database: Database) -> None:
    log = AuditLog(database)
    for number in range(5):
        log.record(HOSPITAL, "read", "job", f"job-{number}")
    with database.session() as session:
        assert unlinked_count(session) == 5
        assert list(session.scalars(in_chain_order())) == []
    assert log.chain(limit=3) == 3
    assert log.chain() == 2
    assert log.chain() == 0
    with database.session() as session:
        chained = list(session.scalars(in_chain_order()))
        assert unlinked_count(session) == 0
    assert [entry.object_id for entry in chained] == [f"job-{n}" for n in range(5)]
    assert [entry.chain_seq for entry in chained] == [1, 2, 3, 4, 5]
    assert verify_chain(chained) == []
    # Entries stored later continue the same chain.
    log.record(HOSPITAL, "read", "job", "job-5")
    log.chain()
    with database.session() as session:
        assert verify_chain(list(session.scalars(in_chain_order()))) == []


def test_an_entry_edited_after_linking_is_found(database: Database) -> None:
    log = AuditLog(database)
    for number in range(3):
        log.record(HOSPITAL, "read", "job", f"job-{number}")
    log.chain()
    with database.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.chain_seq == 2)).one()
        entry.organisation_id = "someone-else"
    with database.session() as session:
        problems = verify_chain(list(session.scalars(in_chain_order())))
    assert problems and "content does not match its hash" in problems[0]


def test_the_stored_chain_is_checked_a_batch_at_a_time_across_batch_edges(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check carries only the last hash from one batch to the next: an entry removed at a
    batch's edge, and one edited inside a batch, are both found, and each entry counted once."""
    monkeypatch.setattr(audit_module, "CHECK_BATCH", 3)
    log = AuditLog(database)
    for number in range(10):
        log.record(HOSPITAL, "read", "job", f"job-{number}")
    log.chain()
    batches: list[int] = []
    intact = check_chain(database, on_batch=batches.append)
    assert (intact.entries, intact.ok, batches) == (10, True, [3, 3, 3, 1])

    with database.session() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.chain_seq == 4))  # first of batch 2
        edited = session.scalars(select(AuditEntry).where(AuditEntry.chain_seq == 8)).one()
        edited.object_id = "another-job"
    broken = check_chain(database)
    assert broken.entries == 9 and not broken.ok
    assert broken.problems == [
        "entry 5: previous hash does not match (removed or re-ordered)",
        "entry 8: content does not match its hash (edited)",
    ]


def test_a_long_list_of_problems_is_counted_in_full_and_listed_in_part(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "PROBLEMS_LISTED", 2)
    log = AuditLog(database)
    for number in range(4):
        log.record(HOSPITAL, "read", "job", f"job-{number}")
    log.chain()
    with database.session() as session:
        for entry in session.scalars(select(AuditEntry)):
            entry.role = "operator"
    check = check_chain(database)
    assert check.problem_count == 4 and len(check.problems) == 2
