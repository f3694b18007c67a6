"""Benchmark: a job's place in its vendor's queue, as the queue grows, and what migration 0012
takes to build on an exchange that already holds many jobs.

Hospitals take turns at a vendor's queue (aifi.exchange.fair_share): the statement that opens
a job also finds the queue's head and the hospital's last job waiting. For each backend (SQLite
on a local file; PostgreSQL from the Debian package, on loopback), on a database migrated as a
replica migrates it and holding `--ended` jobs that ended long ago, and for each queue length W
(another hospital's backlog of W jobs waiting):

- opening: a second hospital's jobs opened by their last declared instance, as a gateway's
  upload opens them (the job service's upload turn and counts, without the blob), each timed;
  the baseline is the same opening with no place computed (the statement before migration
  0012), alternating with it in the same run;
- claiming: the job service's claim, each timed, with about W waiting;
- building: migration 0012's two indexes over all the jobs, timed (once, at the end).

The target is the docs' promise (docs/api.md, *Claim order*): a place costs the same however
long the queue, so opening with the longest backlog costs at most 1.5× opening with none.

    python benchmarks/queue_order.py [--waiting 0,1000,10000] [--ended 1000000]
                                     [--backends sqlite,postgresql] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Index, bindparam, delete, insert, update

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from aifi.exchange import jobs as jobs_module  # noqa: E402
from aifi.exchange.audit import Actor  # noqa: E402
from aifi.exchange.clock import utcnow  # noqa: E402
from aifi.exchange.models import Job, Organisation, Product  # noqa: E402
from aifi.exchange.schemas import ClaimIn, OrganisationKind  # noqa: E402
from aifi.exchange.services import Services, build_services  # noqa: E402
from aifi.exchange.settings import ExchangeSettings  # noqa: E402
from scale.servers import start_postgres  # noqa: E402

#: Openings (and claims) timed per queue length and way.
CALLS = 300
FILL_BATCH = 10_000
#: The docs' promise: with the longest queue, an opening costs at most this many times one
#: with nothing waiting.
FLAT_TARGET = 1.5

BACKLOG = Actor(organisation_id="hospital-a", role=OrganisationKind.hospital)
SENDER = Actor(organisation_id="hospital-b", role=OrganisationKind.hospital)
VENDOR = Actor(organisation_id="vendor-a", role=OrganisationKind.vendor)


def _job(number: int, hospital: str, **values: Any) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": f"{hospital}-{number:08d}",
        "hospital_id": hospital,
        "product_id": "product-a",
        "vendor_id": "vendor-a",
        "idempotency_key": f"{hospital}-{number}",
        "study_uid": f"2.25.{number}",
        "patient_pseudonym": f"P{number:08d}",
        "priority": "routine",
        "priority_rank": 1,
        "state": "requested",
        "queue_place": 0,
        "inputs_complete": False,
        "input_count": 0,
        "input_bytes": 0,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    } | values


def set_up(services: Services, ended: int) -> None:
    """Two hospitals, a vendor with one product, and `ended` jobs that ended long ago."""
    now = utcnow()
    with services.db.session() as session:
        for org in (BACKLOG, SENDER, VENDOR):
            name, kind = org.organisation_id, org.role
            session.execute(
                insert(Organisation).values(id=name, name=name, kind=kind, created_at=now)
            )
        session.execute(
            insert(Product).values(
                id="product-a", vendor_id="vendor-a", name="product-a", version="1",
                clinical_area="quantification", status="admitted", manifest={},
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    long_ago = now - timedelta(days=400)
    for start in range(0, ended, FILL_BATCH):
        rows = [
            _job(
                n, "ended", hospital_id="hospital-a", state="completed", inputs_complete=True,
                input_count=1, attempts=1, created_at=long_ago, ended_at=long_ago,
                acknowledged_at=long_ago,
            )
            for n in range(start, min(start + FILL_BATCH, ended))
        ]  # fmt: skip
        with services.db.session() as session:
            session.execute(insert(Job), rows)


def fill_backlog(services: Services, waiting: int, first: int) -> None:
    """Hospital A's backlog: `waiting` jobs open and waiting, in places 0 … W−1."""
    with services.db.session() as session:
        session.execute(update(Job).where(Job.hospital_id == "hospital-a", Job.state == "requested")
                        .values(state="cancelled", ended_at=utcnow()))  # fmt: skip
    for start in range(0, waiting, FILL_BATCH):
        rows = [
            _job(first + n, "hospital-a", inputs_complete=True, queue_place=n)
            for n in range(start, min(start + FILL_BATCH, waiting))
        ]
        with services.db.session() as session:
            session.execute(insert(Job), rows)


def timed(calls: list[Callable[[], Any]]) -> float:
    """The median of the calls' times, in milliseconds."""
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def open_by_last_input(services: Services, job_id: str) -> None:
    """Record the last declared instance of `job_id`, as an upload does (its blob aside): the
    way a gateway's jobs open."""
    jobs = services.jobs
    with services.db.session() as session:
        job = jobs.visible(session, SENDER, job_id)
        turn = jobs.take_input_turn(session, job)
        opened = jobs.count_input(
            session, SENDER, job, turn, added=f"{job_id}.1", size=1, replaced_size=None
        )
    assert opened


def openings_and_claims(services: Services, first: int, placed: bool) -> tuple[float, float]:
    """Open CALLS jobs of hospital B, then claim CALLS jobs; the median of each, in ms.

    `placed` False: the opening sets no place (the statement before migration 0012).
    """
    rows = [_job(first + n, "hospital-b", declared_instances=1) for n in range(CALLS)]
    with services.db.session() as session:
        session.execute(insert(Job), rows)
    jobs_module._COUNT_LAST_INPUT = PLACED if placed else UNPLACED
    try:
        opening = timed([lambda job=row["id"]: open_by_last_input(services, job) for row in rows])
    finally:
        jobs_module._COUNT_LAST_INPUT = PLACED
    claiming = timed([lambda: services.jobs.claim(VENDOR, ClaimIn()) for _ in range(CALLS)])
    with services.db.session() as session:  # the queue as it was: the next round starts alike
        session.execute(delete(Job).where(Job.hospital_id == "hospital-b"))
        session.execute(
            update(Job)
            .where(Job.hospital_id == "hospital-a", Job.state == "accepted")
            .values(state="requested", lease_token=None, lease_expires_at=None, claimed_at=None)
        )
    return opening, claiming


#: The statement that opens a job on its last input, and the same without a place.
PLACED = jobs_module._COUNT_LAST_INPUT
UNPLACED = jobs_module._COUNT_INPUT.values(inputs_complete=True, ready_at=bindparam("now"))


def build_indexes(services: Services) -> dict[str, float]:
    """Migration 0012's indexes dropped and built again over every job, each timed."""
    built = {}
    for index in Job.__table__.indexes:
        if index.name in ("ix_jobs_queue", "ix_jobs_waiting"):
            assert isinstance(index, Index)
            index.drop(services.db.engine)
            started = time.perf_counter()
            index.create(services.db.engine)
            built[str(index.name)] = round(time.perf_counter() - started, 2)
    return built


def measure(url: str, folder: Path, ended: int, lengths: list[int], rounds: int,
            console: Console) -> dict[str, Any]:  # fmt: skip
    services = build_services(ExchangeSettings(data_dir=folder, database_url=url))
    with console.status(f"writing {ended} ended jobs …"):
        set_up(services, ended)
    figures: dict[str, Any] = {"queues": {}}
    number = ended
    for waiting in lengths:
        with console.status(f"queue of {waiting}: opening and claiming …"):
            fill_backlog(services, waiting, number)
            number += waiting
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for turn in range(rounds * 2):
                placed = turn % 4 in (0, 3)  # with, without, without, with, …
                runs[placed].append(openings_and_claims(services, number, placed))
                number += CALLS
        figures["queues"][waiting] = {
            "opening_ms": round(statistics.median(o for o, _ in runs[True]), 3),
            "opening_without_place_ms": round(statistics.median(o for o, _ in runs[False]), 3),
            "claim_ms": round(statistics.median(c for _, c in runs[True] + runs[False]), 3),
        }
    with console.status(f"building migration 0012's indexes over {number} jobs …"):
        figures["index_build_s"] = build_indexes(services)
    figures["jobs_at_build"] = number
    services.db.dispose()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiting", default="0,1000,10000", help="queue lengths, comma-separated")
    parser.add_argument("--ended", type=int, default=1_000_000, help="jobs that ended long ago")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each way")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    args = parser.parse_args()
    lengths = [int(n) for n in args.waiting.split(",")]
    backends = args.backends.split(",")
    console = Console()
    figures: dict[str, dict[str, Any]] = {}
    postgres = start_postgres() if "postgresql" in backends else None
    try:
        with tempfile.TemporaryDirectory(prefix="aifi-bench-queue-") as work:
            for backend in backends:
                url = (
                    postgres.create_database("queue")
                    if backend == "postgresql" and postgres is not None
                    else f"sqlite:///{work}/queue.db"
                )
                console.print(f"[bold]{backend}[/]")
                figures[backend] = measure(
                    url, Path(work) / backend, args.ended, lengths, args.rounds, console
                )
    finally:
        if postgres is not None:
            postgres.destroy()
    table = Table(
        title="opening a job with another hospital's backlog waiting "
        "(baseline: the same opening without a place)",
        caption="ms: median per call; ×: the opening's cost against the baseline",
    )
    for column in ("backend", "waiting", "opening ms", "baseline ms", "×", "claim ms"):
        table.add_column(column, justify="right")
    for backend, row in figures.items():
        for waiting, queue in row["queues"].items():
            table.add_row(
                backend, str(waiting), f"{queue['opening_ms']:.3f}",
                f"{queue['opening_without_place_ms']:.3f}",
                f"{queue['opening_ms'] / queue['opening_without_place_ms']:.2f}",
                f"{queue['claim_ms']:.3f}",
            )  # fmt: skip
    console.print(table)
    builds = Table(title="migration 0012's indexes, built over every job")
    for column in ("backend", "jobs", "ix_jobs_queue s", "ix_jobs_waiting s"):
        builds.add_column(column, justify="right")
    for backend, row in figures.items():
        built = row["index_build_s"]
        builds.add_row(backend, str(row["jobs_at_build"]), str(built["ix_jobs_queue"]),
                       str(built["ix_jobs_waiting"]))  # fmt: skip
    console.print(builds)
    targets = {}
    for backend, row in figures.items():
        queues = row["queues"]
        ratio = queues[max(lengths)]["opening_ms"] / queues[min(lengths)]["opening_ms"]
        targets[f"{backend}_opening_longest_over_shortest"] = {
            "measured": round(ratio, 2),
            "target": FLAT_TARGET,
            "met": ratio <= FLAT_TARGET,
            "from": "docs/api.md, Claim order: a place costs the same however long the queue",
        }
        console.print(
            f"{backend}: opening with {max(lengths)} waiting / with {min(lengths)}: {ratio:.2f} "
            f"(target ≤ {FLAT_TARGET}) {'met' if ratio <= FLAT_TARGET else 'not met'}"
        )
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
