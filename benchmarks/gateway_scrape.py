"""Benchmark: a Prometheus scrape of a hospital gateway, as its history grows.

For each history size (studies done with long ago: purged, each with a delivered job, its
delivery and two notices) beside the same spool (the last days' studies and their
instances) and a few jobs under way, the benchmark times:

- the scrape as the exporter makes it (`GatewayCollector`: tallies kept by triggers, one
  read-only snapshot);
- the baseline, measured in the same run: the same figures counted from the rows at each
  scrape through the gateway's own connection, as the exporter did before the tallies (on
  today's schema, whose two new indexes spare the baseline's turnaround and uploaded-bytes
  queries most of their reading: it is, if anything, flattered);
- receipt while scrapes run: the longest an instance's indexing (`record_instance`, what a
  modality's C-STORE waits for) took, with each kind of scrape every 50 ms;
- the first start of a state from before this version: building its new indexes and
  counting its rows once.

    python benchmarks/gateway_scrape.py [--history 10000,100000,1000000] [--json FILE]

Targets (this benchmark's own; the issues set none for the gateway's exporter): a scrape at
the largest history costs at most 1.5× the one at the smallest, and no scrape holds up an
instance's receipt by more than 50 ms.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aifi.gateway.metrics import GatewayCollector
from aifi.gateway.state import MAX_NOTICE_ATTEMPTS, GatewayState, ReceivedInstance

SCRAPE_GROWTH_TARGET = 1.5
RECEIPT_WAIT_TARGET_MS = 50.0
SPOOL_STUDIES = 900  # three days of a large hospital's studies sent for AI
INSTANCES_PER_STUDY = 100
RETAIN_SECONDS = 72 * 3600.0

#: The exporter's queries before the tallies: every figure counted from the rows, each query
#: through the gateway's own connection and lock.
BASELINE_QUERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ()),
    ("SELECT state, COUNT(*) AS n FROM studies GROUP BY state", ()),
    ("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state", ()),
    (
        "SELECT channel, stat, CASE WHEN ok THEN 'sent' "
        f"WHEN retryable AND attempts < {MAX_NOTICE_ATTEMPTS} THEN 'retrying' "
        "ELSE 'failed' END AS outcome, "
        "COUNT(*) AS n FROM notifications GROUP BY channel, stat, outcome",
        (),
    ),
    ("SELECT study_uid, due_at FROM studies WHERE state = 'receiving' AND due_at < ?", ("now",)),
    ("SELECT MIN(created_at) FROM jobs WHERE state = 'pending'", ()),
    (
        "SELECT MIN(study_last_at) FROM jobs "
        "WHERE priority = 'stat' AND state IN ('pending', 'submitted')",
        (),
    ),
    ("SELECT MIN(submitted_at) FROM jobs WHERE state = 'submitted'", ()),
    ("SELECT COUNT(*) FROM jobs WHERE attempts > 0 AND state IN ('pending', 'ended')", ()),
    ("SELECT * FROM totals", ()),
    ("SELECT COALESCE(SUM(size), 0) FROM instances", ()),
    (
        "SELECT COALESCE(SUM(size), 0) FROM instances WHERE study_uid IN "
        "(SELECT study_uid FROM jobs WHERE state IN ('submitted', 'ended', 'delivered'))",
        (),
    ),
    (
        "SELECT delivered_at - study_last_at AS seconds FROM jobs "
        "WHERE state = 'delivered' AND delivered_at >= ?",
        ("hour_ago",),
    ),
)
#: The indexes this version added, dropped so that the state is as the version before left
#: it, and a first start builds them.
NEW_INDEXES = (
    "ix_jobs_delivered", "ix_jobs_exchange", "ix_eligibility_uncounted", "ix_instances_study_size",
)  # fmt: skip


def build(path: Path, history: int) -> None:
    """A state as a gateway of the version before the tallies left it: `history` studies
    done with long ago, the spool's studies of the last three days, and jobs under way."""
    GatewayState(path).close()
    now = time.time()
    start = now - 3 * 365 * 86400
    step = (now - 4 * 86400 - start) / max(history, 1)
    with sqlite3.connect(path) as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE tallies")
        for index in NEW_INDEXES:
            db.execute(f"DROP INDEX {index}")
        db.execute("CREATE INDEX ix_instances_study ON instances(study_uid)")

        def study(n: int, state: str, at: float) -> tuple[Any, ...]:
            return (f"1.2.{n}", "CT1", state, 1, at, at, at, at + 60, "")

        def job(n: int, state: str, at: float) -> tuple[Any, ...]:
            delivered = at + 300 if state == "delivered" else None
            return (
                f"1.2.{n}", 1, "product-a", "stat" if n % 10 == 0 else None, f"1.2.{n}:a:1",
                state, at, at + 60, at + 61, delivered, delivered, f"x-{n}",
            )  # fmt: skip

        total = history + SPOOL_STUDIES
        spool_from = now - 3 * 86400
        rows = [
            (n, "purged", "delivered", start + n * step)
            if n < history
            else (
                n,
                "routed",
                "submitted" if n >= total - 20 else "delivered",
                spool_from + (n - history) * (3 * 86400 - 600) / SPOOL_STUDIES,
            )
            for n in range(total)
        ]
        db.executemany(
            "INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?)",
            (study(n, state, at) for n, state, _, at in rows),
        )
        db.executemany(
            "INSERT INTO jobs (study_uid, round, product_id, priority, idempotency_key, state, "
            "study_last_at, created_at, submitted_at, ended_at, delivered_at, exchange_job_id) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job(n, state, at) for n, _, state, at in rows),
        )
        db.executemany(
            "INSERT INTO eligibility VALUES (?, 1, '2025-10', 1)", ((f"1.2.{n}",) for n, *_ in rows)
        )
        db.executemany(
            "INSERT INTO deliveries VALUES (?, 'sr.dcm', 'pacs', NULL, 'delivered', 1, NULL, ?)",
            ((n + 1, at + 300) for n, _, state, at in rows if state == "delivered"),
        )
        db.executemany(
            "INSERT INTO notifications (job_id, channel, ok, retryable, stat, detail, seconds, "
            "attempts, at) VALUES (?, ?, 1, 0, 0, NULL, 0.1, 1, ?)",
            (
                (n + 1, channel, at + 300)
                for n, _, state, at in rows
                if state == "delivered"
                for channel in ("hl7", "fhir")
            ),
        )
        db.executemany(
            "INSERT INTO instances VALUES (?,?,'1.2.1','1.2.840.10008.5.1.4.1.1.2','CT','','',"
            "'',?,?,'CT1',?)",
            (
                (f"1.2.{n}.{k}", f"1.2.{n}", f"/spool/1.2.{n}/{k}.dcm", 500_000, at)
                for n, _, _, at in rows[history:]
                for k in range(INSTANCES_PER_STUDY)
            ),
        )


def baseline_scrape(state: GatewayState) -> None:
    now = time.time()
    values = {"now": now, "hour_ago": now - 3600.0}
    for sql, names in BASELINE_QUERIES:
        state.query(sql, tuple(values[name] for name in names))


def timed(scrape: Callable[[], object], rounds: int) -> float:
    """Median seconds of a scrape."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        scrape()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def longest_receipt_wait(state: GatewayState, scrape: Callable[[], object], folder: Path) -> float:
    """The longest an instance's indexing took while a scrape ran every 50 ms (ms).

    Far more often than Prometheus scrapes (15 s), so that receipt meets every query of a
    scrape; the pause keeps it a scrape's queries that receipt meets, not the lock's
    unfairness to a thread that waits for it.
    """
    stop = threading.Event()

    def scraping() -> None:
        while not stop.is_set():
            scrape()
            stop.wait(0.05)

    scraper = threading.Thread(target=scraping)
    scraper.start()
    waits = []
    try:
        for k in range(300):
            path = folder / f"{k}.dcm"
            path.write_bytes(b"\0" * 100)
            item = ReceivedInstance(
                f"9.9.{folder.name}.{k}", f"9.9.{folder.name}", "9.9.1", "1.2", "CT", "", "",
                "", path, 100, "CT1",
            )  # fmt: skip
            started = time.perf_counter()
            state.record_instance(item, 600.0)
            waits.append(time.perf_counter() - started)
            time.sleep(0.005)  # a modality's pace: instances arrive, they do not queue
    finally:
        stop.set()
        scraper.join()
    return max(waits) * 1000


def measure(work: Path, history: int, rounds: int) -> dict[str, Any]:
    path = work / f"state-{history}.db"
    build(path, history)
    started = time.perf_counter()
    state = GatewayState(path)  # a first start after the upgrade: indexes built, rows counted
    counted = time.perf_counter() - started
    try:
        collector = GatewayCollector(state, retain_seconds=RETAIN_SECONDS)

        def scrape() -> None:
            figures = list(collector.collect())
            assert figures[0].samples[0].value == 1.0, "the state did not answer"

        scrape()  # warm: the reader's connection, the page cache
        baseline_scrape(state)
        folder = work / f"spool-{history}"
        folder.mkdir()
        before = folder / "before"
        after = folder / "after"
        before.mkdir()
        after.mkdir()
        return {
            "history_studies": history,
            "spool_instances": SPOOL_STUDIES * INSTANCES_PER_STUDY,
            "first_start_count_s": round(counted, 2),
            "scrape_ms": round(timed(scrape, rounds) * 1000, 2),
            "baseline_scrape_ms": round(timed(lambda: baseline_scrape(state), rounds) * 1000, 1),
            "receipt_longest_wait_ms": round(longest_receipt_wait(state, scrape, after), 1),
            "baseline_receipt_longest_wait_ms": round(
                longest_receipt_wait(state, lambda: baseline_scrape(state), before), 1
            ),
        }
    finally:
        state.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", default="10000,100000,1000000",
                        help="studies done with long ago, comma-separated")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=9, help="scrapes timed per figure")
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    args = parser.parse_args()
    sizes = [int(n) for n in args.history.split(",")]
    console = Console()
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aifi-bench-scrape-") as work, Progress() as bar:
        task = bar.add_task("building and scraping gateway states", total=len(sizes))
        for size in sizes:
            figures[f"history_{size}"] = measure(Path(work), size, args.rounds)
            bar.advance(task)
    table = Table(
        title="a scrape of the gateway's exporter (baseline: counted from the rows, before "
        "the tallies)",
        caption="×: how much less a scrape costs; receipt: the longest an instance's "
        "indexing took while a scrape ran every 50 ms",
    )
    for column in (
        "history studies", "scrape ms", "baseline ms", "×", "receipt wait ms",
        "baseline receipt wait ms", "first start s",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for row in figures.values():
        table.add_row(
            f"{row['history_studies']:,}", f"{row['scrape_ms']:.2f}",
            f"{row['baseline_scrape_ms']:.1f}",
            f"{row['baseline_scrape_ms'] / max(row['scrape_ms'], 1e-3):.0f}",
            f"{row['receipt_longest_wait_ms']:.1f}",
            f"{row['baseline_receipt_longest_wait_ms']:.1f}", f"{row['first_start_count_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    smallest = figures[f"history_{min(sizes)}"]
    largest = figures[f"history_{max(sizes)}"]
    growth = largest["scrape_ms"] / max(smallest["scrape_ms"], 1e-3)
    wait = max(row["receipt_longest_wait_ms"] for row in figures.values())
    source = "this benchmark (no issue sets one): a scrape must not grow with the history"
    targets = {
        "scrape_growth_largest_over_smallest_history": {
            "measured": round(growth, 2),
            "target": f"<= {SCRAPE_GROWTH_TARGET}",
            "met": growth <= SCRAPE_GROWTH_TARGET,
            "from": source,
        },
        "receipt_longest_wait_ms": {
            "measured": wait,
            "target": f"<= {RECEIPT_WAIT_TARGET_MS:g}",
            "met": wait <= RECEIPT_WAIT_TARGET_MS,
            "from": "this benchmark: a scrape must not hold up a modality's C-STORE",
        },
    }
    for name, target in targets.items():
        mark = "met" if target["met"] else "NOT met"
        console.print(f"{name}: {target['measured']} (target {target['target']}): {mark}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "targets": targets}, indent=2))
    return 0 if all(target["met"] for target in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
