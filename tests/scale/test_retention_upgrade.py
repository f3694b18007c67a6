"""The schema upgrade that lets retention visit each ended job once keeps the first sweep
after it short: jobs whose rows were all purged before count as swept."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from aifi.exchange.db import alembic_config

_JOB = (
    "INSERT INTO jobs (id, hospital_id, product_id, vendor_id, idempotency_key, study_uid, "
    "patient_pseudonym, priority, priority_rank, state, inputs_complete, input_count, "
    "input_bytes, attempts, created_at, ended_at, updated_at) VALUES (:id, 'h', 'p', 'v', :id, "
    "'1.2', 'P', 'routine', 1, :state, 1, 1, 1, 1, :t, :t, :t)"
)
_INPUT = (
    "INSERT INTO job_inputs (job_id, sop_instance_uid, sop_class_uid, series_uid, size, sha256, "
    "blob_key, purged_at) VALUES (:job, :uid, '1.2', '1.2', 1, '-', :uid, :purged)"
)


def test_jobs_whose_inputs_were_all_purged_count_as_swept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    command.upgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    t = "2026-11-01 10:00:00"
    with engine.begin() as connection:
        for job, state in (
            ("all-purged", "completed"),
            ("one-left", "failed"),
            ("bare", "cancelled"),
        ):
            connection.execute(text(_JOB), {"id": job, "state": state, "t": t})
        for job, uid, purged in (
            ("all-purged", "a1", "2026-11-09 10:00:00"),
            ("all-purged", "a2", "2026-11-09 11:00:00"),
            ("one-left", "b1", "2026-11-09 10:00:00"),
            ("one-left", "b2", None),
        ):
            connection.execute(text(_INPUT), {"job": job, "uid": uid, "purged": purged})
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as connection:
        swept = dict(connection.execute(text("SELECT id, inputs_swept_at FROM jobs")).all())
    engine.dispose()
    assert swept["all-purged"] is not None and str(swept["all-purged"]).startswith(
        "2026-11-09 11:00:00"
    )
    # Still holding an input, or never holding one: the next sweep visits them.
    assert swept["one-left"] is None and swept["bare"] is None
