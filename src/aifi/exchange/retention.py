"""Retention: purge pseudonymised inputs after their job ends, results after their delivery.

Inputs are kept `retain_inputs_seconds` after the job ended (completed, failed, cancelled or
expired) and results `retain_results_seconds` after the hospital acknowledged them. A job that
has not ended is never touched, whatever its age: its vendor or hospital may still need it.

Each purge deletes the blobs first (the job's folder: those the rows name, and anything else
left there, such as the blob of an upload that crashed before it was recorded), then writes an
audit entry ("delete", who: the exchange itself) saying what went and why, then marks the
rows. A crash in between repeats the purge at the next sweep (deleting twice is harmless), so
nothing is purged without being audited.
With replicas on PostgreSQL one replica sweeps at a time (a session advisory lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update

from aifi.exchange.audit import Actor, AuditLog
from aifi.exchange.blob_keys import input_folder, result_folder
from aifi.exchange.blobs import BlobStore
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import RETENTION_LOCK, Database
from aifi.exchange.models import Job, JobInput, JobResult
from aifi.exchange.schemas import ENDED_STATES
from aifi.exchange.settings import ExchangeSettings

#: Who the audit log names for purges: the exchange acting on its own retention policy.
SYSTEM = Actor(organisation_id="exchange", role="system")
BATCH = 500

_ENDED = [state.value for state in ENDED_STATES]


@dataclass
class PurgeReport:
    """What one sweep removed."""

    inputs: int = 0
    results: int = 0
    bytes: int = 0
    jobs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Row:
    id: int
    job_id: str
    blob_key: str
    size: int
    patient_pseudonym: str
    state: str
    since: datetime


class Retention:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        audit: AuditLog,
        settings: ExchangeSettings,
        metrics: Any | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._audit = audit
        self._settings = settings
        self._metrics = metrics

    def sweep(self, now: datetime | None = None) -> PurgeReport:
        """Purge everything past its retention time at `now` (default: the current time)."""
        now = now or utcnow()
        report = PurgeReport()
        with self._sweeping() as mine:
            if not mine:
                return report
            if self._settings.retain_inputs_seconds is not None:
                cutoff = now - timedelta(seconds=self._settings.retain_inputs_seconds)
                self._purge("input", JobInput, Job.ended_at, cutoff, now, report, input_folder)
            if self._settings.retain_results_seconds is not None:
                cutoff = now - timedelta(seconds=self._settings.retain_results_seconds)
                self._purge(
                    "result", JobResult, Job.acknowledged_at, cutoff, now, report, result_folder
                )
        return report

    @contextlib.contextmanager
    def _sweeping(self) -> Iterator[bool]:
        """True when this replica may sweep now (always, on SQLite's single process)."""
        if not self._db.is_postgresql:
            yield True
            return
        with self._db.engine.connect() as connection:
            mine = bool(
                connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": RETENTION_LOCK})
            )
            connection.commit()
            try:
                yield mine
            finally:
                if mine:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RETENTION_LOCK})
                    connection.commit()

    def _purge(
        self,
        kind: str,
        table: type[JobInput] | type[JobResult],
        since_column: Any,
        cutoff: datetime,
        now: datetime,
        report: PurgeReport,
        folder: Callable[[str], str],
    ) -> None:
        while True:
            rows = self._due(table, since_column, cutoff)
            if not rows:
                return
            by_job = _by_job(rows)
            for job_id in by_job:
                # Every blob the job's rows name is in its folder, with anything a crash left
                # there unnamed: one listing deletes them all.
                self._blobs.delete_under(folder(job_id))
            for job_id, job_rows in by_job.items():
                first = job_rows[0]
                size = sum(r.size for r in job_rows)
                self._audit.record(
                    SYSTEM,
                    "delete",
                    kind,
                    job_id,
                    patient_pseudonym=first.patient_pseudonym,
                    detail=(
                        f"retention: purged {len(job_rows)} {kind}(s), {size} bytes, at "
                        f"{now.isoformat()}; job {first.state}, "
                        f"{'ended' if kind == 'input' else 'delivered'} at "
                        f"{first.since.isoformat()}"
                    ),
                )
                report.jobs.add(job_id)
            with self._db.session() as session:
                session.execute(
                    update(table)
                    .where(table.id.in_([r.id for r in rows]), table.purged_at.is_(None))
                    .values(purged_at=now)
                )
            purged_bytes = sum(r.size for r in rows)
            report.bytes += purged_bytes
            if kind == "input":
                report.inputs += len(rows)
            else:
                report.results += len(rows)
            if self._metrics is not None:
                self._metrics.purged.labels(kind).inc(len(rows))
                self._metrics.purged_bytes.labels(kind).inc(purged_bytes)
            if len(rows) < BATCH:
                return

    def _due(
        self, table: type[JobInput] | type[JobResult], since_column: Any, cutoff: datetime
    ) -> list[_Row]:
        """Unpurged rows of ended jobs whose retention time ran out before `cutoff`."""
        query = (
            select(
                table.id,
                table.job_id,
                table.blob_key,
                table.size,
                Job.patient_pseudonym,
                Job.state,
                since_column,
            )
            .join(Job, Job.id == table.job_id)
            .where(
                table.purged_at.is_(None),
                Job.state.in_(_ENDED),
                Job.ended_at.is_not(None),
                since_column.is_not(None),
                since_column <= cutoff,
            )
            .order_by(table.id)
            .limit(BATCH)
        )
        with self._db.session() as session:
            return [
                _Row(r[0], r[1], r[2], int(r[3]), r[4], r[5], as_utc(r[6]))
                for r in session.execute(query)
            ]


def _by_job(rows: list[_Row]) -> dict[str, list[_Row]]:
    grouped: dict[str, list[_Row]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped
