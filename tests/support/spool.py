"""Instances as the gateway's receipt indexes them, for tests of its state."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aifi.gateway.state import GatewayState, ReceivedInstance, RoutedJob


def received(uid: str, study: str, folder: Path, size: int) -> ReceivedInstance:
    """An instance as the SCP indexes it, its spool file written first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{uid}.dcm").write_bytes(b"\0" * size)
    return ReceivedInstance(
        sop_instance_uid=uid,
        study_uid=study,
        series_uid=study + ".1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality="CT",
        body_part="HEAD",
        study_description="",
        series_description="",
        path=folder / f"{uid}.dcm",
        size=size,
        calling_ae="CT1",
    )


def add_history(state: GatewayState, first: int, studies: int) -> None:
    """Studies done with long ago, as years of a gateway's work leave them: purged, each with
    a delivered job, its delivery and its notices, and counted for uptake."""
    long_ago = time.time() - 400 * 86400
    with state.transaction() as db:
        for n in range(first, first + studies):
            uid = f"1.9.{n}"
            db.execute(
                "INSERT INTO studies (study_uid, calling_ae, state, first_at, last_at, due_at, "
                "routed_at) VALUES (?, 'CT1', 'purged', ?, ?, ?, ?)",
                (uid, long_ago, long_ago, long_ago, long_ago),
            )
            job = db.execute(
                "INSERT INTO jobs (study_uid, round, product_id, priority, idempotency_key, "
                "state, study_last_at, created_at, submitted_at, ended_at, delivered_at, "
                "result_seen_at, acknowledged_at, exchange_job_id) VALUES (?, 1, 'product-a', "
                "NULL, ?, 'delivered', ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, f"{uid}:product-a:1", *(long_ago,) * 7, f"x-{uid}"),
            ).lastrowid
            db.execute(
                "INSERT INTO deliveries VALUES (?, 'sr.dcm', 'pacs', NULL, 'delivered', 1, "
                "NULL, ?)",
                (job, long_ago),
            )
            for channel in ("hl7", "fhir"):
                db.execute(
                    "INSERT INTO notifications (job_id, channel, ok, retryable, stat, detail, "
                    "seconds, attempts, at) VALUES (?, ?, 1, 0, 0, NULL, 0.1, 1, ?)",
                    (job, channel, long_ago),
                )
            db.execute("INSERT INTO eligibility VALUES (?, 1, '2025-10', 1)", (uid,))


def play(state: GatewayState, spool: Path, rng: random.Random, steps: int) -> set[str]:
    """What a gateway does over its days, in random order: receipt (re-sends of another
    size too), routing, sending, retries, results, deliveries, notices, purges. Returns the
    states the jobs were left in."""
    studies = [f"1.2.{n}" for n in range(12)]
    sizes = iter(range(100, 100_000))
    for _ in range(steps):
        action = rng.choice(("receive", "receive", "route", "job", "deliver", "notice", "purge"))
        if action == "receive":
            study = rng.choice(studies)
            uid = f"{study}.{rng.randrange(4)}"  # the same instance again, now and then
            state.record_instance(received(uid, study, spool / study, next(sizes)), 0.0)
        elif action == "route":
            for due in state.due_studies(time.time() + 1):
                products = rng.sample(("product-a", "product-b", "product-c"), rng.randrange(3))
                routed = [RoutedJob(p, rng.choice((None, "stat")), frozenset()) for p in products]
                state.route_study(
                    due["study_uid"],
                    due["round"],
                    due["due_at"],
                    routed,
                    study_pseudonym=due["study_uid"],
                )
        jobs = [int(row["id"]) for row in state.query("SELECT id FROM jobs")]
        if not jobs:
            continue
        job = rng.choice(jobs)
        if action == "job":
            step = rng.randrange(4)
            if step == 0:
                state.retry_job_later(job, "exchange unreachable", 0)
            elif step == 1:
                state.mark_submitted(job, None)
            elif step == 2:
                state.update_job(job, state=rng.choice(("delivered", "ended", "refused")))
            else:
                state.update_job(job, attempts=rng.randrange(3), result_seen_at=time.time())
        elif action == "deliver":
            error = rng.choice((None, "association refused"))
            state.record_delivery(job, rng.choice(("sr.dcm", "seg.dcm")), "pacs", None, error)
        elif action == "notice":
            ok, retryable = rng.choice(((True, False), (False, True), (False, False)))
            channel = rng.choice(("hl7", "fhir", "webhook"))
            stat = rng.random() < 0.5
            state.record_notification(job, channel, ok=ok, retryable=retryable, stat=stat,
                                      detail=None, seconds=0.1)  # fmt: skip
        elif action == "purge":
            for study in state.purgeable_studies(time.time() + 1, 0):
                state.purge_study(study, time.time() + 1, 0)
    return {row["state"] for row in state.query("SELECT DISTINCT state FROM jobs")}


@contextmanager
def steps_on(state: GatewayState, every: int) -> Iterator[list[int]]:
    """SQLite's virtual-machine steps (in `every`s) taken meanwhile on the state's own,
    locked connection: the work done, counted the same on any machine."""
    steps = [0]
    counting = [False]

    def tick() -> int:
        steps[0] += counting[0]
        return 0

    with state.transaction() as db:
        db.set_progress_handler(tick, every)
    counting[0] = True
    try:
        yield steps
    finally:
        counting[0] = False
        with state.transaction() as db:
            db.set_progress_handler(None, every)
