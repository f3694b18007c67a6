"""Retention: purge pseudonymised inputs after their job ends, results after their delivery.

Inputs are kept `retain_inputs_seconds` after the job ended (completed, failed, cancelled or
expired) and results `retain_results_seconds` after the hospital acknowledged them, or
`retain_undelivered_seconds` after the job ended if the hospital never did. A job that has not
ended is never touched, whatever its age: its vendor or hospital may still need it (a job left
unfinished is ended first, see `JobService.expire_unfinished`).

Each ended job is visited once for its inputs and once for its results. The purge deletes the
blobs first (the job's folder: those the rows name, and anything else left there, such as the
blob of an upload that crashed before it was recorded, also in a job no row names anything
of), then, in one transaction, marks the rows purged and the job swept and writes an audit
entry ("delete", who: the exchange itself) saying what went and why. A crash in between
repeats the purge at the next sweep (deleting twice is harmless), so no row is purged without
being audited. An input's row goes with its blob (the job keeps its count and bytes); a
result's stays, marked purged. With replicas on PostgreSQL one replica sweeps at a time (a
session advisory lock); should a database restart end that lock mid-sweep and another replica
sweep beside it, only the sweep that marks a job audits it.
Every replica's sweep also clears the uploads a killed replica left in its spool
(`clear_stale_uploads`): never accepted, so not audited, only logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from aifi.exchange.audit import SYSTEM, AuditLog
from aifi.exchange.blob_keys import input_folder, result_folder
from aifi.exchange.blobs import BlobStore, clear_stale_uploads
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import RETENTION_LOCK, Database
from aifi.exchange.errors import BlobStoreUnavailable
from aifi.exchange.models import Job, JobInput, JobResult
from aifi.exchange.schemas import ENDED_STATES
from aifi.exchange.settings import ExchangeSettings

BATCH = 500
#: Jobs the blob store may refuse in one sweep before it stops: each is passed by in the
#: next query by id, one parameter each.
MOST_REFUSED = 1000

log = logging.getLogger(__name__)

_ENDED = [state.value for state in ENDED_STATES]


@dataclass
class PurgeReport:
    """What one sweep removed."""

    inputs: int = 0
    results: int = 0
    bytes: int = 0
    jobs: set[str] = field(default_factory=set)
    #: Spooled uploads that no request will commit any more (see `clear_stale_uploads`).
    stale_uploads: int = 0
    #: Jobs whose folder the blob store would not empty: tried again at the next sweep.
    not_purged: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Kind:
    """What a purge removes of a job, the job's column its retention time runs from (and
    what happened then, for the audit entry), the column that marks the job's folder
    emptied, the folder, and the label its purges are counted under."""

    name: str
    table: type[JobInput] | type[JobResult]
    since: Any
    event: str
    swept: Any
    folder: Callable[[str], str]
    label: str
    only: tuple[Any, ...] = ()
    #: Whether the purged rows stay, marked: a result's tells its hospital it was purged (a
    #: handful per job). An input's go: one per instance, up to a billion a year nationally,
    #: each naming a pseudonymised instance; the job keeps its count and bytes, the audit
    #: entry what went.
    keep_rows: bool = True


_INPUTS = _Kind(
    "input", JobInput, Job.ended_at, "ended", Job.inputs_swept_at, input_folder, "input",
    keep_rows=False,
)  # fmt: skip
_RESULTS = _Kind(
    "result", JobResult, Job.acknowledged_at, "delivered", Job.results_swept_at,
    result_folder, "result",
)  # fmt: skip
#: Results of an ended job its hospital never acknowledged, counted from the job's end.
_UNDELIVERED = _Kind(
    "result", JobResult, Job.ended_at, "ended, never delivered", Job.results_swept_at,
    result_folder, "undelivered_result", only=(Job.acknowledged_at.is_(None),),
)  # fmt: skip


@dataclass(frozen=True)
class _DueJob:
    id: str
    patient_pseudonym: str
    state: str
    since: datetime


@dataclass(frozen=True)
class _Emptied:
    """A due job whose folder the store emptied: its rows and bytes, and the blobs deleted."""

    job: _DueJob
    rows: int
    size: int
    deleted: int


def purge_due(job: Job, kind: str, settings: ExchangeSettings, now: datetime) -> bool:
    """Whether retention has purged, or may be purging now, the job's inputs (`kind` is
    ``input``) or results (``result``): a blob of it found gone is taken for purged, not for
    lost. The same rule as the sweep's (`_INPUTS`, `_RESULTS`, `_UNDELIVERED`), for one job."""
    if (job.inputs_swept_at if kind == "input" else job.results_swept_at) is not None:
        return True
    if job.state not in _ENDED or job.ended_at is None:
        return False  # never touched, whatever its age
    ended = as_utc(job.ended_at)
    if kind == "input":
        keep = settings.retain_inputs_seconds
        return keep is not None and ended + timedelta(seconds=keep) <= now
    acknowledged = as_utc(job.acknowledged_at) if job.acknowledged_at is not None else None
    if settings.retain_undelivered_seconds is not None:
        due = ended + timedelta(seconds=settings.retain_undelivered_seconds)
        # Taken by the undelivered sweep as it stood when it came due: one acknowledged since
        # may still be in that sweep's hands (it deletes the blobs, then marks the job).
        if due <= now and (acknowledged is None or acknowledged > due):
            return True
    keep = settings.retain_results_seconds
    return (
        acknowledged is not None
        and keep is not None
        and acknowledged + timedelta(seconds=keep) <= now
    )


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
        # Each replica's own spool (an object store's), so on every replica, whoever's turn;
        # by the files' own clock, whatever moment the sweep is asked for.
        report.stale_uploads, size = clear_stale_uploads(self._blobs.incoming)
        if report.stale_uploads:
            log.warning(
                "cleared %d upload(s) (%d bytes) a stopped replica left in %s",
                report.stale_uploads, size, self._blobs.incoming,
            )  # fmt: skip
        with self._db.turn(RETENTION_LOCK) as mine:
            if not mine:
                return report
            if self._settings.retain_inputs_seconds is not None:
                cutoff = now - timedelta(seconds=self._settings.retain_inputs_seconds)
                self._purge(_INPUTS, cutoff, now, report)
            if self._settings.retain_results_seconds is not None:
                cutoff = now - timedelta(seconds=self._settings.retain_results_seconds)
                self._purge(_RESULTS, cutoff, now, report)
            if self._settings.retain_undelivered_seconds is not None:
                cutoff = now - timedelta(seconds=self._settings.retain_undelivered_seconds)
                self._purge(_UNDELIVERED, cutoff, now, report)
        return report

    def _purge(self, kind: _Kind, cutoff: datetime, now: datetime, report: PurgeReport) -> None:
        """Empty the input (result) folder of every job due, whether or not rows name what is
        in it, and mark the job swept, so that each job is visited once."""
        refused: list[str] = []  # by the blob store, in this sweep
        while True:
            if len(refused) >= MOST_REFUSED:
                # A store refusing this many refuses them all (a bucket-wide lock, a lost
                # permission): the rest waits for the next sweep, and the alert is firing.
                log.error(
                    "retention: the blob store refused %d jobs' %ss in this sweep; the rest "
                    "wait for the next", len(refused), kind.name,
                )  # fmt: skip
                return
            jobs = self._due(kind, cutoff, refused)
            if not jobs:
                return
            held = self._held(kind.table, [job.id for job in jobs])
            emptied: list[_Emptied] = []
            for job in jobs:
                # Every blob the job's rows name is in its folder, with anything a crash left
                # there unnamed: one listing deletes them all.
                try:
                    deleted = self._blobs.delete_under(kind.folder(job.id))
                except BlobStoreUnavailable:
                    # The store is gone for every job: the sweep stops, but what it emptied
                    # already is marked and audited now, with the blobs it deleted (the next
                    # sweep would find those folders empty and say so).
                    self._count(kind, self._mark(kind, emptied, now), report)
                    raise
                except OSError as exc:
                    # Neither audited nor marked swept: the data is still there.
                    log.error(
                        "retention: could not purge job %s's %ss: %s; tried again at the "
                        "next sweep", job.id, kind.name, exc,
                    )  # fmt: skip
                    refused.append(job.id)
                    report.not_purged.add(job.id)
                    if self._metrics is not None:
                        self._metrics.purge_failures.labels(kind.label).inc()
                    continue
                rows, size = held.get(job.id, (0, 0))
                emptied.append(_Emptied(job, rows, size, deleted))
            self._count(kind, self._mark(kind, emptied, now), report)
            if len(jobs) < BATCH:
                return

    def _count(self, kind: _Kind, marked: list[_Emptied], report: PurgeReport) -> None:
        """Add the jobs this sweep marked to its report and to the replica's figures."""
        purged = sum(e.rows for e in marked)
        purged_bytes = sum(e.size for e in marked)
        report.jobs.update(e.job.id for e in marked if e.rows or e.deleted)
        report.bytes += purged_bytes
        if kind is _INPUTS:
            report.inputs += purged
        else:
            report.results += purged
        if self._metrics is not None:
            self._metrics.purged.labels(kind.label).inc(purged)
            self._metrics.purged_bytes.labels(kind.label).inc(purged_bytes)

    def _mark(self, kind: _Kind, emptied: list[_Emptied], now: datetime) -> list[_Emptied]:
        """Mark the emptied jobs swept and their rows purged, and audit each purge, in one
        transaction; the jobs this sweep marked (not another sweep first: a replica that lost
        its turn to a database restart may be sweeping beside it). So a purge is audited
        once, and never without its mark."""
        if not emptied:
            return []
        with self._db.session() as session:
            marked = set(
                session.scalars(
                    update(Job)
                    .where(Job.id.in_([e.job.id for e in emptied]), kind.swept.is_(None))
                    .values({kind.swept.key: now})
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                )
            )
            mine = [e for e in emptied if e.job.id in marked]
            # By job, not by row: a batch of CT jobs holds hundreds of thousands of rows,
            # more than the parameters one statement may carry (65,535 in PostgreSQL).
            holding = [e.job.id for e in mine if e.rows]
            unpurged = (kind.table.job_id.in_(holding), kind.table.purged_at.is_(None))
            if holding and kind.keep_rows:
                session.execute(update(kind.table).where(*unpurged).values(purged_at=now))
            elif holding:
                session.execute(delete(kind.table).where(*unpurged))
            for e in mine:
                if e.rows or e.deleted:
                    self._audit.record_in(
                        session,
                        SYSTEM,
                        "delete",
                        kind.name,
                        e.job.id,
                        patient_pseudonym=e.job.patient_pseudonym,
                        detail=(
                            f"retention: purged {e.rows} {kind.name}(s), {e.size} bytes "
                            f"({e.deleted} blob(s) deleted from the job's folder), at "
                            f"{now.isoformat()}; job {e.job.state}, {kind.event} at "
                            f"{e.job.since.isoformat()}"
                        ),
                    )
        return mine

    def _due(self, kind: _Kind, cutoff: datetime, passed_by: list[str]) -> list[_DueJob]:
        """Ended jobs not yet swept whose retention time ran out before `cutoff`, but for
        those the sweep `passed_by`."""
        query = (
            select(Job.id, Job.patient_pseudonym, Job.state, kind.since)
            .where(
                kind.swept.is_(None),
                Job.id.not_in(passed_by),
                Job.state.in_(_ENDED),
                Job.ended_at.is_not(None),
                kind.since.is_not(None),
                kind.since <= cutoff,
                *kind.only,
            )
            .order_by(kind.since)
            .limit(BATCH)
        )
        with self._db.session() as session:
            return [_DueJob(r[0], r[1], r[2], as_utc(r[3])) for r in session.execute(query)]

    def _held(
        self, table: type[JobInput] | type[JobResult], job_ids: list[str]
    ) -> dict[str, tuple[int, int]]:
        """How many unpurged rows each of `job_ids` has, and their bytes."""
        query = (
            select(table.job_id, func.count(), func.coalesce(func.sum(table.size), 0))
            .where(table.job_id.in_(job_ids), table.purged_at.is_(None))
            .group_by(table.job_id)
        )
        with self._db.session() as session:
            return {job_id: (int(n), int(size)) for job_id, n, size in session.execute(query)}
