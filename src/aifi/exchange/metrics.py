"""Prometheus figures for the exchange, served at `/metrics`.

Two kinds of figure, kept apart on purpose:

- what this replica saw (requests, errors, bytes in and out, purges): counters in this
  process, which Prometheus sums over the replicas;
- what the whole exchange holds (jobs by state, the queue's depth and age, turnaround): read
  from the shared database at scrape time, so every replica answers the same and nothing has
  to be kept in step between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _render
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aifi.exchange import audit, backlog
from aifi.exchange.catalogue import published_versions
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database
from aifi.exchange.models import Job, Product
from aifi.exchange.schemas import JobState, Priority
from aifi.results.delivery import NotDelivered

#: Jobs that ended this recently make up the turnaround figures and the versions not in the
#: catalogue.
LAST_HOUR = timedelta(hours=1)
TURNAROUND_QUANTILES = (0.5, 0.9, 0.99)
#: At most this many recent jobs are read for the quantiles (a scrape must stay cheap).
TURNAROUND_SAMPLE = 5000
#: Jobs that ended longer ago than this are settled: no transaction still under way can add
#: one (its end time is set in it), nor a replica whose clock is behind by less.
SETTLED_AFTER = timedelta(minutes=10)
#: The task under which a scrape that could not count the jobs under versions not in the
#: catalogue is counted among the background failures (ExchangeBackgroundFailing).
VERSION_FIGURE = "version_figure"

log = logging.getLogger(__name__)

_ENDED = (JobState.completed, JobState.failed, JobState.cancelled, JobState.expired)
#: Ended jobs that a product's version ran, or was to run and did not in time.
_RUN = (JobState.completed, JobState.failed, JobState.expired)

Scope = dict[str, Any]


def _product_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Product.id)))


def quantile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank quantile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class EndedTally:
    """Ended jobs by state, counted in full once per replica and then only added to.

    The table keeps every job ever (about ten million a year nationally), and counting it
    at each scrape took 0.6 s per million on PostgreSQL, of every replica, every scrape.
    An ended job's state never changes again, so the jobs that ended before a moment long
    enough ago (:data:`SETTLED_AFTER`) are counted once; each scrape counts only those that
    ended since, through the index on `ended_at`.

    The full count (some 7 s at a national year's jobs) is taken when the replica starts
    (:meth:`ExchangeMetrics.warm`), so that no scrape has to wait for it against
    Prometheus's timeout.
    """

    def __init__(self) -> None:
        self._until: datetime | None = None
        self._settled: dict[str, int] = {}
        #: Scrapes run on request threads, and two Prometheus servers may scrape at once:
        #: one at a time adds what settled, or both would add it. Taken before a session
        #: is opened, so a scrape that waits holds no pooled connection meanwhile.
        self._lock = threading.Lock()
        #: Set once the jobs that ended long ago have been counted.
        self.counted = threading.Event()

    def counts(self, db: Database, now: datetime) -> dict[str, int]:
        with self._lock, db.session() as session:
            return self._counts(session, now)

    def _counts(self, session: Session, now: datetime) -> dict[str, int]:
        settled = now - SETTLED_AFTER
        if self._until is None:
            self._settled = self._count(session, Job.ended_at < settled)
            self.counted.set()
        elif settled > self._until:
            for state, n in self._count(
                session, Job.ended_at >= self._until, Job.ended_at < settled
            ).items():
                self._settled[state] = self._settled.get(state, 0) + n
        self._until = max(settled, self._until or settled)
        counts = dict(self._settled)
        for state, n in self._count(session, Job.ended_at >= self._until).items():
            counts[state] = counts.get(state, 0) + n
        return counts

    @staticmethod
    def _count(session: Session, *where: Any) -> dict[str, int]:
        query = (
            select(Job.state, func.count())
            .where(Job.state.in_([s.value for s in _ENDED]), *where)
            .group_by(Job.state)
        )
        return {state: int(n) for state, n in session.execute(query)}


class JobTableCollector(Collector):
    """Jobs by state, the ready queue, turnaround and the jobs under versions not in the
    catalogue, read from the database per scrape."""

    def __init__(
        self,
        db: Database,
        products: Callable[[list[str]], None] | None = None,
        figure_counted: Callable[[bool], None] | None = None,
    ) -> None:
        self.db = db
        self.ended = EndedTally()
        #: Told the products at each scrape, read in the scrape's own session (no second
        #: wait on a database that does not answer).
        self.products = products
        #: Told at each scrape whether the versions figure could be counted: left out, the
        #: figure's absence would read as nothing to count, and its ticket could not fire.
        self.figure_counted = figure_counted

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "aifi_exchange_database_up", "1 when the exchange's database answered this scrape"
        )
        try:
            families = list(self._families())
        except Exception:  # the database down, mostly: said in the figure, and why in the log
            log.warning("the job figures could not be read", exc_info=True)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _not_in_catalogue(self, now: datetime) -> Iterator[GaugeMetricFamily]:
        """In a session of its own, after the others: a fault of this figure alone leaves it
        out and is logged, and neither drops the job figures nor reads as the database down
        (ExchangeDatabaseDown pages; a version not in the catalogue is a ticket). The fault
        is counted (`figure_counted`), so that one that lasts raises a ticket of its own."""
        try:
            with self.db.session() as session:
                family = _versions_not_in_catalogue(session, now)
        except Exception:
            log.warning("the jobs under versions not in the catalogue could not be counted",
                        exc_info=True)  # fmt: skip
            if self.figure_counted is not None:
                self.figure_counted(False)
            return
        if self.figure_counted is not None:
            self.figure_counted(True)
        yield family

    def _families(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        ended = self.ended.counts(self.db, now)
        with self.db.session() as session:
            by_state = {
                state: int(count)
                for state, count in session.execute(
                    select(Job.state, func.count())
                    .where(
                        # Always so for these states: it lets the count read only the jobs
                        # under way (ix_jobs_ended, at NULL), not every job ever.
                        Job.ended_at.is_(None),
                        Job.state.in_([s.value for s in JobState if s not in _ENDED]),
                    )
                    .group_by(Job.state)
                )
            }
            if self.products is not None:
                self.products(_product_ids(session))
            by_state.update(ended)
            queue = session.execute(
                select(Job.product_id, Job.priority, func.count(), func.min(Job.ready_at))
                .where(Job.state == JobState.requested.value, Job.inputs_complete.is_(True))
                .group_by(Job.product_id, Job.priority)
            ).all()
            hospitals = backlog.by_hospital(session, now)
            chain = audit.unlinked(session)
            recent = session.execute(
                select(Job.ready_at, Job.ended_at, Job.priority)
                .where(
                    Job.state == JobState.completed.value,
                    Job.ended_at >= now - LAST_HOUR,
                    Job.ready_at.is_not(None),
                )
                .order_by(Job.ended_at.desc())
                .limit(TURNAROUND_SAMPLE)
            ).all()

        jobs = GaugeMetricFamily("aifi_exchange_jobs", "Jobs by IHE AIW-I state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], float(by_state.get(state.value, 0)))
        yield jobs

        # By priority too: a STAT job (acute triage) waiting two minutes is an emergency, a
        # routine one is not, and a routine backlog must not hide a STAT job behind it.
        depth = GaugeMetricFamily(
            "aifi_exchange_queue_depth",
            "Jobs ready for a vendor and not yet claimed, per product and priority",
            labels=["product", "priority"],
        )
        age = GaugeMetricFamily(
            "aifi_exchange_queue_age_seconds",
            "Age of the oldest ready, unclaimed job, per product and priority",
            labels=["product", "priority"],
        )
        for product_id, priority, count, oldest in queue:
            depth.add_metric([product_id, priority], float(count))
            waited = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
            age.add_metric([product_id, priority], max(0.0, waited))
        yield depth
        yield age
        yield from _by_hospital(hospitals)
        yield from _audit_chain(chain, now)
        yield from self._not_in_catalogue(now)

        timed = [
            ((as_utc(ended) - as_utc(ready)).total_seconds(), priority)
            for ready, ended, priority in recent
            if ready is not None and ended is not None
        ]
        durations = [seconds for seconds, _ in timed]
        yield _quantiles(
            "aifi_exchange_turnaround_seconds",
            "Ready-to-completed time of jobs completed in the last hour, by quantile",
            durations,
        )
        # Acute triage apart: a few STAT jobs among thousands of routine ones do not move
        # the quantiles above, however slow they are.
        yield _quantiles(
            "aifi_exchange_stat_turnaround_seconds",
            "Ready-to-completed time of STAT jobs completed in the last hour, by quantile",
            [seconds for seconds, priority in timed if priority == Priority.stat.value],
        )
        completed = GaugeMetricFamily(
            "aifi_exchange_completed_last_hour", "Jobs completed in the last hour"
        )
        completed.add_metric([], float(len(durations)))
        yield completed


def _versions_not_in_catalogue(session: Session, now: datetime) -> GaugeMetricFamily:
    """Jobs that ended lately under a version the catalogue has no record of publishing: a
    worker running a version nobody put up for review, or a summary's name that splits one
    version over two (`v2.0` for `2.0`). The exchange takes such a result all the same (the
    patient's radiologist waits for it), so the operator has to hear of it. The states are
    those evaluation counts as the product's work (cancelled jobs aside: nothing ran them),
    and `published_versions` is the rule evaluation per version flags by.

    Every product is listed, at 0 when it has none: a series that is missing then means a
    scrape that could not count, which the alert bridges (a fault on one scrape does not
    restart its wait), while a published version's 0 clears it at once."""
    family = GaugeMetricFamily(
        "aifi_exchange_version_not_in_catalogue_jobs",
        "Jobs completed, failed or expired in the last hour under a product version the "
        "catalogue has no record of publishing, per product (0 for none)",
        labels=["product"],
    )
    per_product = dict.fromkeys(_product_ids(session), 0)
    ended = session.execute(
        select(Job.product_id, Job.product_version, func.count())
        .where(
            Job.state.in_([s.value for s in _RUN]),
            Job.ended_at >= now - LAST_HOUR,
            Job.product_version.is_not(None),
        )
        .group_by(Job.product_id, Job.product_version)
    ).all()
    published = published_versions(session) if ended else {}
    for product_id, version, count in ended:
        if (product_id, version) not in published:
            per_product[product_id] = per_product.get(product_id, 0) + int(count)
    for product_id, count in sorted(per_product.items()):
        family.add_metric([product_id], float(count))
    return family


def _audit_chain(chain: audit.Unlinked, now: datetime) -> Iterator[GaugeMetricFamily]:
    """Entries not yet in the hash chain are not yet tamper-evident: linking normally takes
    them within a second, so an old one means no replica is linking (AuditChainStalled)."""
    entries = GaugeMetricFamily(
        "aifi_exchange_audit_unlinked_entries",
        "Access-log entries stored but not linked into the hash chain yet",
    )
    entries.add_metric([], float(chain.entries))
    yield entries
    age = GaugeMetricFamily(
        "aifi_exchange_audit_unlinked_age_seconds",
        "How long the oldest access-log entry not linked into the hash chain has waited",
    )
    waited = (now - chain.oldest).total_seconds() if chain.oldest is not None else 0.0
    age.add_metric([], max(0.0, waited))
    yield age


def _by_hospital(hospitals: dict[str, backlog.HospitalBacklog]) -> Iterator[GaugeMetricFamily]:
    """Whose studies a vendor's shared queue holds up, and which gateway stopped collecting;
    hospitals with nothing waiting are left out."""
    waiting = GaugeMetricFamily(
        "aifi_exchange_hospital_waiting",
        "Jobs ready for a vendor and not yet claimed, per hospital",
        labels=["hospital"],
    )
    total = GaugeMetricFamily(
        "aifi_exchange_jobs_unacknowledged",
        "Ended jobs whose hospital has not yet acknowledged the outcome",
    )
    uncollected = GaugeMetricFamily(
        "aifi_exchange_hospital_unacknowledged",
        "Ended jobs the hospital has not yet acknowledged, per hospital",
        labels=["hospital"],
    )
    uncollected_for = GaugeMetricFamily(
        "aifi_exchange_hospital_unacknowledged_age_seconds",
        "Time since the oldest ended job the hospital has not acknowledged ended",
        labels=["hospital"],
    )
    for hospital_id, held in hospitals.items():
        if held.waiting:
            waiting.add_metric([hospital_id], float(held.waiting))
        if held.uncollected:
            uncollected.add_metric([hospital_id], float(held.uncollected))
            uncollected_for.add_metric([hospital_id], held.uncollected_for)
    total.add_metric([], float(sum(held.uncollected for held in hospitals.values())))
    yield waiting
    yield total
    yield uncollected
    yield uncollected_for


def _quantiles(name: str, documentation: str, durations: list[float]) -> GaugeMetricFamily:
    """A gauge of `durations` at each of :data:`TURNAROUND_QUANTILES`."""
    ordered = sorted(durations)
    family = GaugeMetricFamily(name, documentation, labels=["quantile"])
    for q in TURNAROUND_QUANTILES:
        family.add_metric([str(q)], quantile(ordered, q))
    return family


class TaskRounds:
    """How a background task's rounds went, as its alert reads them.

    Each failure is counted. The failures since the task last went well twice running are a
    figure of their own, which ExchangeBackgroundFailing reads: a sweep every five or ten
    minutes that fails for good fails only that often, too seldom for a rate over a few
    minutes to stay above zero while the alert waits; and one good round between failures
    does not end the run, so a sweep failing every other round, or the versions figure
    failing most scrapes, is still failing. A round that failed while the database did not
    answer (asked just after) leaves the figure as it was: the task is not at fault, and
    ExchangeDatabaseDown says so."""

    def __init__(self, failures: Counter, failing: Gauge) -> None:
        self._failures = failures
        self._failing = failing
        self._lock = threading.Lock()  # a figure's rounds are scrapes, which may overlap
        self._good_in_a_row = 0

    def went(self, well: bool, *, database_answered: bool = True) -> None:
        with self._lock:
            if well:
                self._good_in_a_row += 1
                if self._good_in_a_row >= 2:
                    self._failing.set(0)
                return
            self._failures.inc()
            if database_answered:
                self._good_in_a_row = 0
                self._failing.inc()


class ExchangeMetrics:
    """This replica's registry: its own counters plus the job table collector."""

    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        # First, so that a product it reads (for the undelivered-results series) is exported
        # by the counters collected after it in the same scrape.
        self._jobs = JobTableCollector(
            db,
            products=self._undelivered_from_zero,
            figure_counted=lambda counted: self.rounds(VERSION_FIGURE).went(counted),
        )
        self.registry.register(self._jobs)
        self.requests = Counter(
            "aifi_exchange_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aifi_exchange_http_request_duration_seconds",
            "Time to answer a request, by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.errors = Counter(
            "aifi_exchange_errors",
            "Answers that were the exchange's fault or its storage's, by kind",
            ["kind"],
            registry=self.registry,
        )
        # Kinds whose alert fires on their first one: exported at 0 from the start, or
        # `increase()` would not see the series' first value (it appears at 1).
        for kind in ("blob_missing", "audit_archive"):
            self.errors.labels(kind)
        self.upload_bytes = Counter(
            "aifi_exchange_upload_bytes",
            "Bytes received in input and result uploads",
            ["kind"],
            registry=self.registry,
        )
        self.download_bytes = Counter(
            "aifi_exchange_download_bytes",
            "Bytes sent in input and result downloads",
            ["kind"],
            registry=self.registry,
        )
        self.purged = Counter(
            "aifi_exchange_purged_objects",
            "Inputs and results purged by the retention policy "
            "(kind: input, result, undelivered_result)",
            ["kind"],
            registry=self.registry,
        )
        self.purged_bytes = Counter(
            "aifi_exchange_purged_bytes",
            "Bytes purged by the retention policy",
            ["kind"],
            registry=self.registry,
        )
        self.purge_failures = Counter(
            "aifi_exchange_purge_failures",
            "Jobs whose inputs or results the blob store would not delete when retention "
            "came for them (tried again at the next sweep; kind as for purged objects)",
            ["kind"],
            registry=self.registry,
        )
        self.handed_back = Counter(
            "aifi_exchange_handed_back_jobs",
            "Jobs a vendor's worker handed back for trouble of its own (a full disk), by product",
            ["product"],
            registry=self.registry,
        )
        self.undelivered = Counter(
            "aifi_exchange_undelivered_results",
            "Completed jobs whose results their gateway could not put in the PACS, as it said "
            "when it acknowledged them, by product and reason (unfileable, unmapped, purged, "
            "let_go, lost)",
            ["product", "reason"],
            registry=self.registry,
        )
        self.audit_archived = Counter(
            "aifi_exchange_audit_archived_entries",
            "Access-log entries this replica moved to archive files in the blob store",
            registry=self.registry,
        )
        #: Each task's series exists from the start, so that its first failure shows.
        self.background_failures = Counter(
            "aifi_exchange_background_failures",
            "Failed rounds of this replica's background work, by task (lease_expiry, "
            "unfinished_expiry, retention, audit_archive, triage_flags, product_versions, "
            "audit_chain, audit_anchor, refused_keys; and version_figure, a scrape that could "
            "not count the jobs under versions not in the catalogue)",
            ["task"],
            registry=self.registry,
        )
        self.background_failing = Gauge(
            "aifi_exchange_background_failing_rounds",
            "Rounds of this replica's background task that failed since it last went well "
            "twice running, while the database answered (a task that keeps failing, whatever "
            "its period), by task",
            ["task"],
            registry=self.registry,
        )
        self._rounds: dict[str, TaskRounds] = {}
        self._rounds_lock = threading.Lock()
        self.rounds(VERSION_FIGURE)

    def rounds(self, task: str) -> TaskRounds:
        """The rounds of background `task`, its series exported from the first ask, at 0."""
        with self._rounds_lock:
            if task not in self._rounds:
                self._rounds[task] = TaskRounds(
                    self.background_failures.labels(task), self.background_failing.labels(task)
                )
            return self._rounds[task]

    def warm(self) -> None:
        """Count the jobs that ended long ago, as a replica starts: the one scrape-time read
        that grows with the exchange's history, done before Prometheus asks. And export every
        product's undelivered-results series from 0 before any count comes."""
        self._jobs.ended.counts(self._jobs.db, utcnow())
        with self._jobs.db.session() as session:
            self._undelivered_from_zero(_product_ids(session))

    def _undelivered_from_zero(self, products: list[str]) -> None:
        """Every product's undelivered-results series exists at 0 before its first count,
        on every replica and after every restart: increase() needs a sample before the first
        count to see it, and an alert (ResultsNotFileable) must not wait an hour for one."""
        for product in products:
            for reason in get_args(NotDelivered):
                self.undelivered.labels(product, reason)

    @property
    def warmed(self) -> threading.Event:
        """Set once :meth:`warm`, or the first scrape, has counted the jobs ended long ago."""
        return self._jobs.ended.counted

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return _render(self.registry), CONTENT_TYPE_LATEST

    def observe(
        self, method: str, route: str, status: int, seconds: float, kind: str | None = None
    ) -> None:
        """Count a request; `kind`: its error kind when its status alone does not say it (an
        object store that is down answers 503, as a database that is down does)."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if kind is not None:
            self.errors.labels(kind).inc()
        elif status == 507:
            self.errors.labels("storage_full").inc()
        elif status == 503:
            self.errors.labels("unavailable").inc()
        elif status >= 500:
            self.errors.labels("server").inc()


def data_kind(path: str) -> str | None:
    """`input` or `result` for the blob routes (`/jobs/{id}/inputs/…`, `/jobs/{id}/results/…`)."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "jobs" and parts[2] in ("inputs", "results"):
        return parts[2].removesuffix("s")
    return None


#: The scope key under which the app's error handler leaves an answer's error kind.
ERROR_KIND = "aifi.error_kind"


class MetricsMiddleware:
    """ASGI middleware: counts every request, its status, and the bytes of blob transfers.

    Routes are labelled by template (`/jobs/{job_id}`), never by the concrete path, so the
    number of series stays small whatever the traffic.
    """

    def __init__(self, app: Any, metrics: ExchangeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        kind = data_kind(scope.get("path", ""))
        status = 500
        received = sent = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive if kind else receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "GET")
            self.metrics.observe(
                method, route, status, time.perf_counter() - started, scope.get(ERROR_KIND)
            )
            if kind and status < 400:
                if method == "PUT":
                    self.metrics.upload_bytes.labels(kind).inc(received)
                elif method == "GET":
                    self.metrics.download_bytes.labels(kind).inc(sent)
