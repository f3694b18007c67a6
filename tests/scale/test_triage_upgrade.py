"""The upgrades that keep each job's triage flag, and the product version that ran it, in
columns of their own read them from every job that already has a summary, on SQLite and on
PostgreSQL, as a job completing after the upgrade gets them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from aifi.exchange.db import Database, alembic_config
from aifi.exchange.models import Job
from aifi.exchange.triage import triage_call, triage_flag
from aifi.exchange.versions import read_unread_versions
from aifi.results.summary import ResultSummary, Triage, TriageFlag
from scale.servers import PostgresServer

_PARTIES = (
    "INSERT INTO organisations (id, name, kind, created_at) VALUES "
    "('h', 'H', 'hospital', :t), ('v', 'V', 'vendor', :t)",
    "INSERT INTO products (id, vendor_id, name, version, clinical_area, status, manifest, "
    "created_at, updated_at) VALUES ('p', 'v', 'P', '1', 'triage', 'admitted', '{}', :t, :t)",
)
_JOB = (
    "INSERT INTO jobs (id, hospital_id, product_id, vendor_id, idempotency_key, study_uid, "
    "patient_pseudonym, priority, priority_rank, state, inputs_complete, input_count, "
    "input_bytes, attempts, summary, created_at, ended_at, updated_at) VALUES (:id, 'h', 'p', "
    "'v', :id, '1.2', 'P', 'routine', 1, 'completed', true, 1, 1, 1, :summary, :t, :t, :t)"
)
SUMMARIES: dict[str, dict[str, Any] | None] = {
    "positive": {"triage": {"flag": "positive", "priority": "high"}},
    "negative": {"triage": {"flag": "negative"}},
    "none": {"triage": {"flag": "none"}},
    "unknown-flag": {"triage": {"flag": "maybe"}},
    "triage-a-string": {"triage": "positive"},
    "no-triage": {"volume_ml": 3},
    "no-summary": None,
}


def upgraded(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    before: str,
    summaries: dict[str, dict[str, Any] | None],
    column: str,
) -> tuple[dict[str, Any], str]:
    """Jobs with `summaries` stored at revision `before`, then the upgrade to head: each
    job's `column`, and the database's URL."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'exchange.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database("upgrade")
    command.upgrade(alembic_config(url), before)
    engine = create_engine(url)
    t = "2026-11-01 10:00:00+00:00"
    with engine.begin() as connection:
        for statement in _PARTIES:
            connection.execute(text(statement), {"t": t})
        for job, summary in summaries.items():
            stored = None if summary is None else json.dumps(summary)
            connection.execute(text(_JOB), {"id": job, "summary": stored, "t": t})
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT id, {column} FROM jobs")).all()  # noqa: S608
    engine.dispose()
    return {job: value for job, value in rows}, url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_jobs_with_a_summary_get_their_triage_flag_on_upgrade(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    flags, _url = upgraded(backend, tmp_path, request, "0007", SUMMARIES, "triage_flag")
    assert flags == {
        job: None if summary is None else triage_flag(summary) for job, summary in SUMMARIES.items()
    }
    assert (flags["positive"], flags["negative"], flags["unknown-flag"]) == (
        "positive",
        "negative",
        "none",
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_that_keeps_versions_leaves_reading_them_to_the_sweep(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The upgrade rewrites no job: every job with a summary waits, in the partial index, for
    the sweep, which reads the version it names (tests/exchange/test_product_versions.py);
    jobs without one keep none, not a guess."""
    summaries = {"named": {"product_version": "2.1.0"}, "no-summary": None}
    before, url = upgraded(backend, tmp_path, request, "0015", summaries, "product_version")
    assert before == {"named": None, "no-summary": None}
    db = Database(url)
    try:
        assert read_unread_versions(db) == 1
        with db.session() as session:
            rows = session.execute(select(Job.id, Job.product_version, Job.version_read)).all()
    finally:
        db.dispose()
    assert sorted(rows) == [("named", "2.1.0", True), ("no-summary", None, None)]


def test_the_triage_call_reads_every_flag_the_summary_schema_has() -> None:
    calls = {
        flag: triage_call(
            ResultSummary.model_construct(triage=Triage(flag=flag)).model_dump(mode="json")
        )
        for flag in TriageFlag
    }
    assert calls == {TriageFlag.POSITIVE: True, TriageFlag.NEGATIVE: False, TriageFlag.NONE: None}
    assert triage_call(None) is None and triage_call({"triage": "positive"}) is None
