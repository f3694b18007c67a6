"""Benchmark: the national reports over a year of jobs — evaluation, drift and metering.

The clinical pages and the metering the business case is computed from read every job of the
period asked for: about eleven million a year nationally. The exchange has the database count
them (:mod:`aifi.governance.aggregates`, :mod:`aifi.exchange.metering`). The baseline, timed
in the same run on the same data, is what it did before: read each job's columns into Python
and count there (`aifi.governance.evaluate`, `drift_charts`, a tally by month).

For each backend (SQLite on a local file; PostgreSQL from the Debian package, on loopback) the
script fills one exchange database with N jobs spread over a year, seventy hospitals and eight
products, with feedback on some and monthly eligible counts, then times each report three
times by each way and keeps the best, and records the peak of Python's heap (tracemalloc)
during one more call. It checks that both ways give the same figures.

One more row times evaluation per product version (each product runs version 1 until July and
version 2 after). Two more time evaluation and drift of one month of the year, as a page asks
for a period: the database reads that month's jobs through the index on their times.

No issue sets a speed target for these reads, so the JSON's `targets` object is empty; the
figures are there for planning and for comparing runs.

    python benchmarks/reports.py [--jobs 200000] [--backends sqlite,postgresql] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import insert, select

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from aifi.exchange.audit import Actor  # noqa: E402
from aifi.exchange.clock import as_utc  # noqa: E402
from aifi.exchange.db import Database, upgrade_schema  # noqa: E402
from aifi.exchange.governance_models import EligibleCount, JobFeedback  # noqa: E402
from aifi.exchange.metering import metering_rows  # noqa: E402
from aifi.exchange.models import Job, Organisation, Product  # noqa: E402
from aifi.exchange.months import Months  # noqa: E402
from aifi.exchange.triage import CALLS  # noqa: E402
from aifi.governance import (  # noqa: E402
    Agreement,
    Feedback,
    JobRecord,
    aggregates,
    drift,
    drift_charts,
    evaluate,
)
from aifi.governance import EligibleCount as EligibleIn  # noqa: E402
from aifi.governance.evaluation import evaluations  # noqa: E402
from scale.servers import start_postgres  # noqa: E402

OPERATOR = Actor(organisation_id="operator", role="operator")
HOSPITALS = [f"hospital-{n:02d}" for n in range(70)]
PRODUCTS = [f"product-{n}" for n in range(8)]
YEAR = datetime(2026, 1, 1, tzinfo=UTC)
#: When each product's version 2 came into use.
NEW_VERSION = datetime(2026, 7, 1, tzinfo=UTC)
BATCH = 20_000


def fill(db: Database, jobs: int, progress: Progress, label: str) -> None:
    """N jobs over 2026: mostly completed, some failed, expired or cancelled; a triage flag on
    completed ones; feedback on one in twenty; eligible counts per hospital × product × month."""
    rng = random.Random(2026)
    now = datetime.now(UTC)
    with db.session() as session:
        session.execute(
            insert(Organisation),
            [
                {"id": org, "name": org.title(), "kind": kind, "created_at": now}
                for org, kind in [(h, "hospital") for h in HOSPITALS] + [("vendor", "vendor")]
            ],
        )
        session.execute(
            insert(Product),
            [
                {
                    "id": p,
                    "vendor_id": "vendor",
                    "name": p,
                    "version": "1",
                    "manifest": {},
                    "clinical_area": "triage",
                    "created_at": now,
                    "updated_at": now,
                }
                for p in PRODUCTS
            ],
        )
    task = progress.add_task(f"{label}: {jobs:,} jobs", total=jobs)
    states = ["completed"] * 90 + ["failed"] * 5 + ["expired", "cancelled"] * 2
    for start in range(0, jobs, BATCH):
        rows, notes = [], []
        for n in range(start, min(start + BATCH, jobs)):
            ready = YEAR + timedelta(seconds=rng.uniform(0, 365 * 86400))
            state = rng.choice(states)
            flag = rng.choice(["positive", "negative", "negative", "none"])
            rows.append(
                {
                    "id": f"job-{n:08d}",
                    "hospital_id": rng.choice(HOSPITALS),
                    "product_id": rng.choice(PRODUCTS),
                    "vendor_id": "vendor",
                    "idempotency_key": str(n),
                    # One job in fifty takes an earlier job's study UID: a study sent again
                    # when it drew that job's hospital and product, else a study of its own.
                    "study_uid": f"2.25.{n if rng.random() >= 0.02 else rng.randrange(n + 1)}",
                    "state": state,
                    "summary": {"triage": {"flag": flag}} if state == "completed" else None,
                    "triage_flag": flag if state == "completed" else None,
                    "input_count": 30,
                    "input_bytes": rng.randrange(10**6, 10**9),
                    "created_at": ready - timedelta(seconds=20),
                    "ready_at": ready,
                    "ended_at": ready + timedelta(seconds=rng.uniform(20, 600)),
                    "updated_at": ready,
                    # Each product's version 2 from July on.
                    "product_version": "2" if ready >= NEW_VERSION else "1",
                }
            )
            if state == "completed" and rng.random() < 0.05:
                notes.append(
                    {
                        "job_id": rows[-1]["id"],
                        "hospital_id": rows[-1]["hospital_id"],
                        "agreement": rng.choice(list(Agreement)).value,
                        "radiologist_positive": rng.choice([True, False, None]),
                        "created_at": now,
                    }
                )
        with db.session() as session:
            session.execute(insert(Job), rows)
            if notes:
                session.execute(insert(JobFeedback), notes)
        progress.advance(task, len(rows))
    with db.session() as session:
        session.execute(
            insert(EligibleCount),
            [
                {
                    "hospital_id": h,
                    "product_id": p,
                    "month": f"2026-{m:02d}",
                    "studies": rng.randrange(100, 2000),
                }
                for h in HOSPITALS[:40]
                for p in PRODUCTS
                for m in range(1, 13)
            ],
        )
    if db.is_postgresql:
        with db.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()


# The baseline: every job's columns into Python, counted there. ----------------------------


def _records(
    db: Database,
    requested: Months = Months(),
    ended: Months = Months(),
    *,
    evaluation: bool = False,
) -> tuple[list[JobRecord], list[Feedback], list[EligibleIn]]:
    """The rows as evaluation (jobs `requested` in months) or drift (`ended` in months) needs
    them: the request time only for `evaluation`, which alone reads it."""
    columns = (
        Job.id,
        Job.product_id,
        Job.hospital_id,
        Job.state,
        Job.ready_at,
        Job.ended_at,
        Job.study_uid,
        Job.triage_flag,
        Job.product_version,
        *((Job.created_at,) if evaluation else ()),
    )
    in_months = (*requested.where(Job.created_at), *ended.where(Job.ended_at))
    with db.session() as session:
        jobs = session.execute(select(*columns).where(*in_months)).all()
        notes = session.scalars(select(JobFeedback)).all()
        counts = session.scalars(
            select(EligibleCount).where(*requested.where_month(EligibleCount.month))
        ).all()
        records = [
            JobRecord(
                job_id=job_id,
                product_id=product_id,
                hospital_id=hospital_id,
                state=state,
                ready_at=as_utc(ready) if ready else None,
                ended_at=as_utc(ended) if ended else None,
                ai_positive=CALLS.get(flag) if flag else None,
                study_uid=study,
                product_version=version,
                created_at=as_utc(rest[0]) if rest else None,
            )
            for (
                job_id,
                product_id,
                hospital_id,
                state,
                ready,
                ended,
                study,
                flag,
                version,
                *rest,
            ) in jobs
        ]
        feedback = [
            Feedback(
                job_id=f.job_id,
                agreement=Agreement(f.agreement),
                radiologist_positive=f.radiologist_positive,
            )
            for f in notes
        ]
        eligible = [
            EligibleIn(product_id=e.product_id, hospital_id=e.hospital_id, studies=e.studies)
            for e in counts
        ]
    return records, feedback, eligible


def evaluation_in_python(
    db: Database, months: Months = Months(), by_version: bool = False
) -> list[Any]:
    return evaluate(*_records(db, requested=months, evaluation=True), by_version=by_version)


def drift_in_python(db: Database, months: Months = Months()) -> list[Any]:
    return drift_charts(_records(db, ended=months)[0])


def metering_in_python(db: Database) -> list[tuple[Any, ...]]:
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    studies: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    with db.session() as session:
        rows = session.execute(
            select(
                Job.hospital_id,
                Job.product_id,
                Job.state,
                Job.ended_at,
                Job.input_bytes,
                Job.study_uid,
            )
            .where(Job.ended_at.is_not(None))
            .execution_options(yield_per=10_000)
        )
        for hospital, product, state, ended, size, study in rows:
            if ended is None:  # excluded in SQL; said again for the type checker
                continue
            key = (hospital, product, as_utc(ended).strftime("%Y-%m"))
            bucket = counts[key]
            if state == "completed":
                bucket[0] += 1
                studies[key].add(study)
                bucket[1] = len(studies[key])
                bucket[3] += size
            elif state in ("failed", "expired"):
                bucket[2] += 1
    return sorted((*key, *value) for key, value in counts.items())


# The product's way: counted by the database. ----------------------------------------------


def evaluation_in_database(
    db: Database, months: Months = Months(), by_version: bool = False
) -> list[Any]:
    with db.session() as session:
        return evaluations(
            aggregates.tallies(session, months, by_version=by_version),
            aggregates.eligible(session, months),
        )


def drift_in_database(db: Database, months: Months = Months()) -> list[Any]:
    with db.session() as session:
        counts = aggregates.period_counts(session, months=months)
    return drift.charts(drift.with_national(counts))


def metering_in_database(db: Database) -> list[tuple[Any, ...]]:
    return [
        (
            r.hospital,
            r.product,
            r.month,
            r.jobs_completed,
            r.studies_completed,
            r.jobs_failed,
            r.input_bytes,
        )
        for r in metering_rows(db, OPERATOR, Months())
    ]


#: A month of the year, as a page asks for one: read through the index on the jobs' times.
MONTH = Months("2026-06", "2026-06")
REPORTS: dict[str, tuple[Callable[[Database], Any], Callable[[Database], Any]]] = {
    "evaluation": (evaluation_in_python, evaluation_in_database),
    "evaluation per version": (
        partial(evaluation_in_python, by_version=True),
        partial(evaluation_in_database, by_version=True),
    ),
    "drift (monthly)": (drift_in_python, drift_in_database),
    "metering": (metering_in_python, metering_in_database),
    f"evaluation, {MONTH}": (
        partial(evaluation_in_python, months=MONTH),
        partial(evaluation_in_database, months=MONTH),
    ),
    f"drift, {MONTH}": (
        partial(drift_in_python, months=MONTH),
        partial(drift_in_database, months=MONTH),
    ),
}


def timed(call: Callable[[], Any], repeats: int = 3) -> tuple[float, float, Any]:
    """Best of `repeats` seconds, then the peak of Python's heap (MB) over one more call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    result = call()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return best, peak, result


def same(python: Any, database: Any) -> bool:
    """The same figures; numbers to within a millisecond (SQLite's date functions count
    milliseconds, so its turnarounds differ from Python's by less)."""
    if isinstance(python, dict) and isinstance(database, dict):
        return python.keys() == database.keys() and all(
            same(python[k], database[k]) for k in python
        )
    if isinstance(python, list | tuple) and isinstance(database, list | tuple):
        return len(python) == len(database) and all(map(same, python, database))
    if hasattr(python, "model_dump") and hasattr(database, "model_dump"):
        return same(python.model_dump(), database.model_dump())
    if isinstance(python, float) and isinstance(database, float):
        return math.isclose(python, database, rel_tol=1e-9, abs_tol=1e-3)
    return bool(python == database)


def measure(backend: str, jobs: int, progress: Progress) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="aifi-bench-reports-"))
    postgres = start_postgres() if backend == "postgresql" else None
    try:
        url = postgres.create_database("reports") if postgres else f"sqlite:///{folder}/x.db"
        db = Database(url)
        upgrade_schema(db.engine)
        fill(db, jobs, progress, backend)
        figures = []
        for report, (baseline, product) in REPORTS.items():
            python_s, python_mb, python_out = timed(partial(baseline, db))
            database_s, database_mb, database_out = timed(partial(product, db))
            figures.append(
                {
                    "backend": backend,
                    "report": report,
                    "jobs": jobs,
                    "python_seconds": python_s,
                    "database_seconds": database_s,
                    "speedup": python_s / database_s,
                    "python_peak_heap_mb": python_mb,
                    "database_peak_heap_mb": database_mb,
                    "rows": len(database_out),
                    "same_figures": same(python_out, database_out),
                }
            )
        db.dispose()
        return figures
    finally:
        if postgres:
            postgres.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs in the database")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    figures: list[dict[str, Any]] = []
    with Progress(console=console, transient=True) as progress:
        for backend in args.backends.split(","):
            figures += measure(backend, args.jobs, progress)
    table = Table(
        title=f"Reports over {args.jobs:,} jobs: counted in Python (baseline) vs by the database"
    )
    for column in (
        "backend",
        "report",
        "Python s",
        "database s",
        "speed-up",
        "Python heap MB",
        "database heap MB",
        "rows",
        "same figures",
    ):
        table.add_column(column, justify="left" if column in ("backend", "report") else "right")
    for f in figures:
        table.add_row(
            f["backend"],
            f["report"],
            f"{f['python_seconds']:.2f}",
            f"{f['database_seconds']:.2f}",
            f"{f['speedup']:.1f}×",
            f"{f['python_peak_heap_mb']:.0f}",
            f"{f['database_peak_heap_mb']:.1f}",
            str(f["rows"]),
            "yes" if f["same_figures"] else "NO",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "targets": {}}, indent=2))
    return 0 if all(f["same_figures"] for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
