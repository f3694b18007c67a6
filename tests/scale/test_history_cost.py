"""The exchange keeps a row for every job it ever held (about 11 million a year, nationally).
What every replica does over and over — the lease sweep each second, the unfinished-expiry
sweep, the scrape, a gateway's page through its jobs — must read the jobs under way or the
latest, not that history.

Ten times the history leaves their work as it was: counted in the virtual machine's steps
on SQLite, and in the pages their plans read on PostgreSQL (the table's statistics taken),
the same on any machine. Before, the lease sweep read every job each second (0.6–1.2 s a
round with a million, holding SQLite's write lock); the unfinished-expiry sweep read every
job older than a week, and the scrape's count of jobs under way read every job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert

from aifi.exchange.app import create_app
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database
from aifi.exchange.models import Job
from aifi.web import mount
from scale.conftest import ExchangeFactory, set_up_parties
from scale.exchange_api import Exchange, Org, backend_settings

#: A round running meanwhile would add its statements to what a test measures.
pytestmark = pytest.mark.usefixtures("quiet_replica")


def add_history(db: Database, orgs: dict[str, Org], jobs: int) -> None:
    """Jobs done with long ago: completed, fetched and acknowledged, their files purged."""
    long_ago = utcnow() - timedelta(days=400)
    rows = [
        {
            "id": str(uuid.uuid4()), "hospital_id": orgs["hospital"].id,
            "vendor_id": orgs["vendor"].id, "product_id": "product-a",
            "idempotency_key": f"history-{n}-{uuid.uuid4()}", "study_uid": f"2.25.{n}",
            "state": "completed", "inputs_complete": True, "input_count": 1, "attempts": 1,
            "created_at": long_ago, "ready_at": long_ago, "claimed_at": long_ago,
            "ended_at": long_ago, "acknowledged_at": long_ago, "updated_at": long_ago,
            "inputs_swept_at": long_ago, "results_swept_at": long_ago, "triage_flag": "none",
            "summary": {"triage": {"flag": "none"}},
        }
        for n in range(jobs)
    ]  # fmt: skip
    with db.session() as session:
        session.execute(insert(Job), rows)


@contextmanager
def statements_of(db: Database) -> Iterator[list[tuple[str, Any, int]]]:
    """The statements run meanwhile on `db`, with their parameters and, on SQLite, their
    virtual-machine steps (in tens)."""
    seen: list[tuple[str, Any, int]] = []
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    def before(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        steps[0] = 0
        if not db.is_postgresql:
            conn.connection.dbapi_connection.set_progress_handler(tick, 10)

    def after(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if not db.is_postgresql:
            conn.connection.dbapi_connection.set_progress_handler(None, 10)
        seen.append((statement, params, steps[0]))

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(db.engine, "after_cursor_execute", after)


def blocks_read(db: Database, statements: list[tuple[str, Any, int]]) -> int:
    """The pages PostgreSQL's plans read to run these statements again (statistics taken),
    each in a transaction rolled back."""
    blocks = 0
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE jobs")
        conn.commit()
        for statement, params, _ in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH")):
                continue
            with conn.begin() as transaction:
                [(plan,)] = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
                ).all()
                transaction.rollback()
            top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
            blocks += int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])
    return blocks


def cost(db: Database, run: Callable[[], object]) -> int:
    """What `run` costs the database: virtual-machine steps (in tens) on SQLite, pages read
    on PostgreSQL."""
    with statements_of(db) as seen:
        run()
    if db.is_postgresql:
        return blocks_read(db, seen)
    return sum(steps for _, _, steps in seen)


def repeated_work(exchange: Exchange, hospital: Org, first: str) -> dict[str, Callable[[], object]]:
    services = exchange.client.app.state.services

    def next_page() -> None:  # a gateway's page through its jobs, after today's first
        page = exchange.client.get("/jobs", params={"after": first}, headers=hospital.headers)
        assert page.status_code == 200 and len(page.json()) == 1, page.text

    return {
        "lease sweep": services.jobs.expire_leases,
        "unfinished-expiry sweep": services.jobs.expire_unfinished,
        "scrape": lambda: exchange.client.get("/metrics"),
        "a page of jobs": next_page,
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_what_every_replica_repeats_reads_the_jobs_under_way_not_the_history(
    exchange_on: ExchangeFactory, make_ct: Any, backend: str
) -> None:
    exchange = exchange_on()
    orgs = set_up_parties(exchange)
    services = exchange.client.app.state.services
    # Today's work: a job waiting, and one a vendor holds.
    first = exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    assert exchange.claim(orgs["vendor"], product_id="product-a") is not None
    work = repeated_work(exchange, orgs["hospital"], first["id"])
    add_history(services.db, orgs, 2000)
    for run in work.values():
        run()  # as on a replica that has run for a while
    costs = {name: [cost(services.db, run)] for name, run in work.items()}
    add_history(services.db, orgs, 18000)
    for name, run in work.items():
        costs[name].append(cost(services.db, run))
    grown = {name: both for name, both in costs.items() if both[1] > both[0] * 1.1 + 5}
    assert grown == {}, costs
    assert all(before > 0 for before, _ in costs.values()), costs


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_replica_counts_the_jobs_ended_long_ago_as_it_starts_not_at_its_first_scrape(
    exchange_on: ExchangeFactory, make_ct: Any, backend: str
) -> None:
    """Each replica counts every job that ended long ago once (some 7 s at a national year's
    jobs, near Prometheus's 10 s scrape timeout). It does so as it starts, so that even its
    first scrape reads only the jobs that ended lately."""
    exchange = exchange_on()
    orgs = set_up_parties(exchange)
    exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    services = exchange.client.app.state.services

    def first_scrape_of_a_new_replica() -> tuple[int, float]:
        with TestClient(create_app(services.settings)) as replica:
            counted_at_start = replica.app.state.metrics.warmed.wait(timeout=120)
            assert counted_at_start, "the replica did not count the ended jobs as it started"
            seen: list[Any] = []
            spent = cost(
                replica.app.state.services.db, lambda: seen.append(replica.get("/metrics"))
            )
        [scraped] = seen
        assert scraped.status_code == 200, scraped.text
        completed = [
            line for line in scraped.text.splitlines()
            if line.startswith('aifi_exchange_jobs{state="completed"}')
        ]  # fmt: skip
        return spent, float(completed[0].rsplit(" ", 1)[1])

    add_history(services.db, orgs, 2000)
    before, counted = first_scrape_of_a_new_replica()
    assert counted == 2000
    add_history(services.db, orgs, 18000)
    after, counted = first_scrape_of_a_new_replica()
    assert counted == 20000
    assert 0 < after <= before * 1.1 + 5, (before, after)


PASSWORD = "correct horse battery"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_the_home_pages_read_the_jobs_under_way_and_the_latest_not_the_history(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, make_ct: Any
) -> None:
    """Each user's home page: the operator's national overview (jobs under way, the last
    days' ends), a radiologist's and a vendor engineer's live list of their latest jobs."""
    chosen = backend_settings(backend, tmp_path, request.config)
    try:
        with TestClient(create_app(chosen.settings, extensions=[mount])) as client:
            exchange = Exchange(client)
            orgs = set_up_parties(exchange)
            users = {"olivia": "operator", "rita": orgs["hospital"].id, "victor": orgs["vendor"].id}
            roles = {"olivia": "operator", "rita": "radiologist", "victor": "vendor-engineer"}
            for username, organisation in users.items():
                created = client.post(
                    "/users",
                    json={
                        "organisation_id": organisation, "username": username,
                        "password": PASSWORD, "display_name": username.title(),
                        "role": roles[username],
                    },
                    headers=exchange.operator.headers,
                )  # fmt: skip
                assert created.status_code == 201, created.text
            exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
            services = client.app.state.services

            def home(username: str) -> Callable[[], int]:
                def visit() -> None:
                    page = client.get("/ui/")
                    assert page.status_code == 200, page.text

                def logged_in() -> None:
                    client.cookies.clear()
                    form = {"username": username, "password": PASSWORD}
                    assert client.post("/ui/login", data=form).status_code in (200, 303)

                def measured() -> int:
                    logged_in()
                    return cost(services.db, visit)

                return measured

            pages = {username: home(username) for username in users}
            add_history(services.db, orgs, 2000)
            costs = {name: [visit()] for name, visit in pages.items()}
            add_history(services.db, orgs, 18000)
            for name, visit in pages.items():
                costs[name].append(visit())
    finally:
        chosen.close()
    grown = {name: both for name, both in costs.items() if both[1] > both[0] * 1.1 + 5}
    assert grown == {}, costs
