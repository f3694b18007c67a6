"""Benchmark: archiving the exchange's access log, and what it saves the daily chain check.

The log gains about ten entries per job, a hundred million a year nationally. For each backend
(SQLite on a local file; PostgreSQL from the Debian package, on loopback) and each log size,
the script fills a fresh database with that many linked entries, then, in a fresh process
(so that its peak memory is the archiving's own):

- times a privacy officer's search for one patient's entries (300 in the middle of the log)
  in the table, by its index, against the same search with the index dropped (the baseline:
  a walk of the table in chain order), and building the index again, as migration 0011 does
  on an exchange that already holds a log;
- times the daily check (`check_chain`) over the whole table: the baseline;
- archives every entry but the newest to files in a local blob store, timed;
- times the daily check again (archived runs passed by their records) and reading every
  archive file back (`verify_archives`), and records the process's peak memory.

The memory target is the rule that memory must not grow with the data (archiving and reading
back stream a batch at a time): from the smallest log to the largest, the peak may grow by less
than 64 MB.

    python benchmarks/audit_archive.py [--entries 200000,1000000] [--backends sqlite,postgresql]
                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Index, insert

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from aifi.exchange.audit import GENESIS, AuditLog, check_chain, linked_digest  # noqa: E402
from aifi.exchange.audit_archive import AuditArchiver, verify_archives  # noqa: E402
from aifi.exchange.audit_search import AuditQuery, search  # noqa: E402
from aifi.exchange.blobs import BlobStore, open_blob_store  # noqa: E402
from aifi.exchange.clock import utcnow  # noqa: E402
from aifi.exchange.db import Database, upgrade_schema  # noqa: E402
from aifi.exchange.models import AuditEntry  # noqa: E402
from aifi.exchange.settings import ExchangeSettings  # noqa: E402
from scale.servers import start_postgres  # noqa: E402

MEMORY_GROWTH_TARGET_MB = 64.0
FILL_BATCH = 10_000
#: Entries per patient pseudonym in the filled log.
PER_PATIENT = 300


def fill(url: str, entries: int) -> None:
    """`entries` linked entries, as a busy exchange writes them (reads of inputs, mostly)."""
    db = Database(url)
    upgrade_schema(db.engine)
    previous, rows = GENESIS, []
    for seq in range(1, entries + 1):
        entry = {
            "at": utcnow(),
            "organisation_id": f"vendor-{seq % 12}",
            "role": "vendor",
            "action": "read",
            "object_type": "input",
            "object_id": f"job-{seq // 300}/1.2.826.0.1.3680043.8.498.{seq}",
            "patient_pseudonym": _patient(seq),
            "outcome": "success",
            "detail": "",
        }
        digest = linked_digest(SimpleNamespace(**entry), previous)
        rows.append({**entry, "prev_hash": previous, "entry_hash": digest, "chain_seq": seq})
        previous = digest
        if len(rows) == FILL_BATCH or seq == entries:
            with db.session() as session:
                session.execute(insert(AuditEntry), rows)
            rows = []
    db.dispose()


def _patient(seq: int) -> str:
    return f"{seq // PER_PATIENT:032x}"


def patient_search(db: Database, blobs: BlobStore, entries: int) -> dict[str, Any]:
    """One patient's entries found in the table by the patient index, then without it (the
    baseline), then the index built again, each timed."""
    query = AuditQuery(patient_pseudonym=_patient(entries // 2))

    def timed_search() -> tuple[float, int]:
        started = time.perf_counter()
        found = sum(1 for _ in search(db, blobs, query, unlinked=False))
        return time.perf_counter() - started, found

    index = next(i for i in AuditEntry.__table__.indexes if i.name == "ix_audit_log_patient")
    assert isinstance(index, Index)
    timed_search()  # statements compiled, connections open: the timings are the searches'
    indexed, found = timed_search()
    index.drop(db.engine)
    walked, found_walking = timed_search()
    started = time.perf_counter()
    index.create(db.engine)
    build = time.perf_counter() - started
    return {
        "patient_entries": found,
        "search_s": round(indexed, 4),
        "search_without_index_s": round(walked, 3),
        "search_speedup": round(walked / max(indexed, 1e-6)),
        "index_build_s": round(build, 2),
        "search_held": found == found_walking == PER_PATIENT,
    }


def measure(url: str, blob_url: str, entries: str) -> dict[str, Any]:
    """The patient search, the check before, the archiving, the check after and the
    read-back, timed."""
    db = Database(url)
    blobs = open_blob_store(blob_url)
    searched = patient_search(db, blobs, int(entries))
    started = time.perf_counter()
    before = check_chain(db)
    check_before = time.perf_counter() - started
    archiver = AuditArchiver(db, blobs, AuditLog(db), ExchangeSettings())
    started = time.perf_counter()
    written = archiver.archive_before(utcnow())
    archiving = time.perf_counter() - started
    started = time.perf_counter()
    after = check_chain(db)
    check_after = time.perf_counter() - started
    started = time.perf_counter()
    files = verify_archives(db, blobs)
    read_back = time.perf_counter() - started
    archived = sum(archive.entries for archive in written)
    size = sum(archive.size for archive in written)
    return {
        "entries_archived": archived,
        "files": len(written),
        "bytes_per_entry": round(size / max(archived, 1), 1),
        "archive_s": round(archiving, 2),
        "archived_per_s": round(archived / archiving),
        "check_before_s": round(check_before, 3),
        "check_after_s": round(check_after, 3),
        "check_speedup": round(check_before / max(check_after, 1e-6), 1),
        "read_back_s": round(read_back, 2),
        "all_held": before.ok
        and after.ok
        and files.ok
        and files.entries == archived
        and searched["search_held"],
        **searched,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_child(url: str, blob_url: str, entries: int) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", url, blob_url, str(entries)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", default="200000,1000000", help="log sizes, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return 0
    sizes = [int(n) for n in args.entries.split(",")]
    backends = args.backends.split(",")
    console = Console()
    figures: dict[str, dict[str, Any]] = {}
    postgres = start_postgres() if "postgresql" in backends else None
    try:
        with tempfile.TemporaryDirectory(prefix="aifi-bench-audit-") as work:
            for backend in backends:
                for size in sizes:
                    label = f"{backend}_{size // 1000}k"
                    url = (
                        postgres.create_database(f"audit{size}")
                        if backend == "postgresql" and postgres is not None
                        else f"sqlite:///{work}/{label}.db"
                    )
                    with console.status(f"{label}: writing {size} linked entries …"):
                        fill(url, size)
                    with console.status(f"{label}: checking, archiving, reading back …"):
                        figures[label] = {"backend": backend, "entries": size} | run_child(
                            url, f"file://{work}/{label}-blobs", size
                        )
    finally:
        if postgres is not None:
            postgres.destroy()
    table = Table(
        title="archiving the access log (baseline: the daily check before archiving)",
        caption="×: how much faster the daily check is once the log is archived",
    )
    columns = [
        "entries", "archived/s", "B/entry", "check before s", "after s", "×",
        "read back s", "peak MB", "held",
    ]  # fmt: skip
    table.add_column("set-up")
    for column in columns:
        table.add_column(column, justify="right")
    for label, row in figures.items():
        table.add_row(
            label, str(row["entries"]), str(row["archived_per_s"]), str(row["bytes_per_entry"]),
            str(row["check_before_s"]), str(row["check_after_s"]), f"{row['check_speedup']:.0f}",
            str(row["read_back_s"]), str(row["peak_rss_mb"]), str(row["all_held"]),
        )  # fmt: skip
    console.print(table)
    searches = Table(
        title="a privacy officer's search: one patient's 300 entries in the table "
        "(baseline: the same search without the patient index)",
        caption="×: how much faster the index finds them",
    )
    searches.add_column("set-up")
    for column in ("entries", "search s", "without index s", "×", "index build s", "held"):
        searches.add_column(column, justify="right")
    for label, row in figures.items():
        searches.add_row(
            label, str(row["entries"]), f"{row['search_s']:.4f}",
            str(row["search_without_index_s"]), str(row["search_speedup"]),
            str(row["index_build_s"]), str(row["search_held"]),
        )  # fmt: skip
    console.print(searches)
    growth = max(
        figures[f"{backend}_{max(sizes) // 1000}k"]["peak_rss_mb"]
        - figures[f"{backend}_{min(sizes) // 1000}k"]["peak_rss_mb"]
        for backend in backends
    )
    targets = {
        "archive_memory_growth_mb": {
            "measured": round(growth, 1),
            "target": MEMORY_GROWTH_TARGET_MB,
            "met": growth < MEMORY_GROWTH_TARGET_MB,
            "from": "the brief: memory must not grow with the data",
        }
    }
    met = "met" if targets["archive_memory_growth_mb"]["met"] else "not met"
    console.print(
        f"peak memory growth from {min(sizes)} to {max(sizes)} entries: {growth:.1f} MB "
        f"(target < {MEMORY_GROWTH_TARGET_MB:.0f}) {met}"
    )
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "targets": targets}, indent=2))
    return 0 if all(row["all_held"] for row in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
