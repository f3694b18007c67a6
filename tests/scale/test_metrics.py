"""Prometheus /metrics on the exchange and the gateway's exporter: the figures an operator
watches (jobs by state, queue depth and age, turnaround, bytes, errors) match what happened."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from aifi.exchange import metrics
from aifi.exchange.app import _every
from aifi.exchange.audit import linked_count, unlinked_count
from aifi.exchange.clock import utcnow
from aifi.exchange.db import CHAIN_LOCK, Database, upgrade_schema
from aifi.exchange.metrics import SETTLED_AFTER, EndedTally, ExchangeMetrics
from aifi.exchange.models import Job
from aifi.exchange.settings import ExchangeSettings
from aifi.gateway.metrics import start_metrics_server
from aifi.gateway.receipt import OUT_OF_RESOURCES, STUDY_MISMATCH, Refusals
from aifi.gateway.state import MAX_NOTICE_ATTEMPTS, GatewayState, RoutedJob
from scale.conftest import ExchangeFactory, finish_job, set_up_parties
from scale.servers import wait_for
from support.national import samples
from support.spool import received


def test_exchange_metrics_follow_the_jobs(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    exchange = exchange_on()
    orgs = set_up_parties(exchange)
    hospital, vendor = orgs["hospital"], orgs["vendor"]
    done_study = make_ct(slices=3)
    exchange.ready_job(hospital, "product-a", done_study)
    sr = finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "w")
    waiting_study = make_ct(slices=2)
    exchange.ready_job(hospital, "product-a", waiting_study)
    refused = exchange.client.get("/jobs/no-such-job", headers=hospital.headers)
    assert refused.status_code == 404

    figures = samples(exchange.client.get("/metrics").text)
    assert figures[("aifi_exchange_database_up", ())] == 1.0
    assert figures[("aifi_exchange_jobs", (("state", "completed"),))] == 1.0
    assert figures[("aifi_exchange_jobs", (("state", "requested"),))] == 1.0
    assert figures[("aifi_exchange_jobs", (("state", "failed"),))] == 0.0
    waiting = (("priority", "routine"), ("product", "product-a"))
    assert figures[("aifi_exchange_queue_depth", waiting)] == 1.0
    assert figures[("aifi_exchange_queue_age_seconds", waiting)] >= 0.0
    assert figures[("aifi_exchange_jobs_unacknowledged", ())] == 1.0
    assert figures[("aifi_exchange_completed_last_hour", ())] == 1.0
    assert figures[("aifi_exchange_turnaround_seconds", (("quantile", "0.5"),))] > 0.0

    uploaded = sum(p.stat().st_size for p in done_study + waiting_study)
    assert figures[("aifi_exchange_upload_bytes_total", (("kind", "input"),))] == uploaded
    assert figures[("aifi_exchange_upload_bytes_total", (("kind", "result"),))] == len(sr)
    downloaded = sum(p.stat().st_size for p in done_study)
    assert figures[("aifi_exchange_download_bytes_total", (("kind", "input"),))] == downloaded
    put_input = (
        ("method", "PUT"),
        ("route", "/jobs/{job_id}/inputs/{sop_instance_uid}"),
        ("status", "201"),
    )
    assert figures[("aifi_exchange_http_requests_total", put_input)] == 5.0
    not_found = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "404"))
    assert figures[("aifi_exchange_http_requests_total", not_found)] == 1.0

    # A STAT job waits in a queue of its own, not hidden behind the routine one.
    exchange.ready_job(hospital, "product-a", make_ct(slices=1), priority="stat")
    after = samples(exchange.client.get("/metrics").text)
    stat = (("priority", "stat"), ("product", "product-a"))
    assert after[("aifi_exchange_queue_depth", stat)] == 1.0
    assert after[("aifi_exchange_queue_depth", waiting)] == 1.0
    stat_age = after[("aifi_exchange_queue_age_seconds", stat)]
    assert 0.0 <= stat_age < after[("aifi_exchange_queue_age_seconds", waiting)]
    assert after[("aifi_exchange_stat_turnaround_seconds", (("quantile", "0.5"),))] == 0.0

    # The STAT job is claimed first, though younger; its turnaround is counted apart.
    claimed = exchange.claim(vendor)
    assert claimed is not None and claimed["job"]["priority"] == "stat"
    finish_job(exchange, vendor, claimed, tmp_path / "stat")
    done = samples(exchange.client.get("/metrics").text)
    assert done[("aifi_exchange_stat_turnaround_seconds", (("quantile", "0.5"),))] > 0.0
    assert done[("aifi_exchange_completed_last_hour", ())] == 2.0
    assert ("aifi_exchange_queue_depth", stat) not in done


def test_ended_jobs_are_counted_once_as_they_settle_and_anew_by_a_new_replica(
    exchange_on: ExchangeFactory, make_ct: Any
) -> None:
    """The scrape counts the jobs that ended long enough ago once, then adds only those that
    ended since: each ended job must be in the figure once, whenever it is scraped."""
    exchange = exchange_on(expire_unfinished_seconds=3600)
    orgs = set_up_parties(exchange)
    for _ in range(3):
        exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    services = exchange.client.app.state.services
    start = utcnow()
    tally = EndedTally()

    def expired(tally: EndedTally, now: datetime) -> int:
        return tally.counts(services.db, now).get("expired", 0)

    assert expired(tally, start) == 0
    ended = start + timedelta(hours=2)
    assert services.jobs.expire_unfinished(now=ended) == 3
    assert expired(tally, ended) == 3  # ended lately: counted at each scrape
    assert expired(tally, ended + SETTLED_AFTER + timedelta(seconds=1)) == 3  # settled: added
    assert expired(tally, ended + timedelta(hours=5)) == 3  # and not again
    assert expired(EndedTally(), ended + timedelta(hours=5)) == 3  # a replica started later
    scraped = samples(exchange.client.get("/metrics").text)
    assert scraped[("aifi_exchange_jobs", (("state", "expired"),))] == 3
    assert scraped[("aifi_exchange_jobs", (("state", "requested"),))] == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # a race of threads
def test_two_scrapes_at_once_add_the_jobs_that_settled_once(
    exchange_on: ExchangeFactory, make_ct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Prometheus servers (a pair, for availability) scrape each replica on their own
    clocks, so two scrapes may add the same newly settled jobs at once. Each must be in the
    figure once: before, both added them, and the replica reported them twice until it
    restarted."""
    exchange = exchange_on(expire_unfinished_seconds=3600)
    orgs = set_up_parties(exchange)
    for _ in range(3):
        exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    services = exchange.client.app.state.services
    ended = utcnow() + timedelta(hours=2)
    assert services.jobs.expire_unfinished(now=ended) == 3
    tally = EndedTally()
    assert tally.counts(services.db, ended).get("expired") == 3  # none settled yet
    settled = ended + SETTLED_AFTER + timedelta(seconds=1)
    count = EndedTally._count
    inside, go = threading.Event(), threading.Event()

    def adding(session: Any, *where: Any) -> dict[str, int]:
        if len(where) == 2 and not inside.is_set():  # the first scrape adds what settled
            inside.set()
            go.wait(timeout=30)
        return count(session, *where)

    monkeypatch.setattr(EndedTally, "_count", staticmethod(adding))
    results: list[int] = []

    def scrape() -> None:
        results.append(tally.counts(services.db, settled).get("expired", 0))

    first = threading.Thread(target=scrape)
    first.start()
    assert inside.wait(timeout=30)
    second = threading.Thread(target=scrape)
    second.start()
    second.join(timeout=1)  # done at once when nothing stops it adding the same jobs too
    go.set()
    first.join(timeout=30)
    second.join(timeout=30)
    results.append(tally.counts(services.db, settled + timedelta(minutes=1)).get("expired", 0))
    assert results == [3, 3, 3]


def test_a_fault_in_the_versions_figure_leaves_the_job_figures_and_the_database_up(
    exchange_on: ExchangeFactory,
    make_ct: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The jobs under versions not in the catalogue are a ticket's figure: a fault of its own
    (here a statement the database refuses, which on PostgreSQL aborts the transaction) leaves
    it out and is logged, does not read as the database down (which pages), and leaves the
    connection fit for the next scrape."""
    exchange = exchange_on()
    orgs = set_up_parties(exchange)
    exchange.ready_job(orgs["hospital"], "product-a", make_ct(slices=1))
    finish_job(exchange, orgs["vendor"], exchange.claim(orgs["vendor"]), tmp_path / "w")
    counted = samples(exchange.client.get("/metrics").text)
    assert counted[("aifi_exchange_database_up", ())] == 1.0
    listed = ("aifi_exchange_version_not_in_catalogue_jobs", (("product", "product-a"),))
    assert counted[listed] == 0.0  # none to count, and said so: a missing figure is a fault
    figure_failed = ("aifi_exchange_background_failures_total", (("task", "version_figure"),))
    in_a_row = ("aifi_exchange_background_failing_rounds", (("task", "version_figure"),))
    assert counted[figure_failed] == 0.0  # from the start, so that the first fault shows
    assert counted[in_a_row] == 0.0

    def broken(session: Any) -> dict[Any, Any]:
        session.execute(text("SELECT a_fault_of_the_figures_own FROM jobs"))
        return {}

    monkeypatch.setattr(metrics, "published_versions", broken)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        scraped = exchange.client.get("/metrics").text
    assert "versions not in the catalogue could not be counted" in caplog.text
    assert "a_fault_of_the_figures_own" in caplog.text
    figures = samples(scraped)
    assert figures[("aifi_exchange_database_up", ())] == 1.0
    assert figures[("aifi_exchange_jobs", (("state", "completed"),))] == 1.0
    exported = {family.name for family in text_string_to_metric_families(scraped)}
    assert "aifi_exchange_version_not_in_catalogue_jobs" not in exported
    assert "aifi_exchange_completed_last_hour" in exported
    # Counted, and as a run of failed rounds, so that a fault that lasts raises a ticket
    # (ExchangeBackgroundFailing) whatever the scrape interval.
    assert figures[figure_failed] == 1.0
    assert figures[in_a_row] == 1.0
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        figures = samples(exchange.client.get("/metrics").text)
    assert (figures[figure_failed], figures[in_a_row]) == (2.0, 2.0)
    monkeypatch.undo()
    again = samples(exchange.client.get("/metrics").text)
    assert again[listed] == 0.0
    assert (again[figure_failed], again[in_a_row]) == (2.0, 2.0)  # one good scrape: not yet
    again = samples(exchange.client.get("/metrics").text)
    assert (again[figure_failed], again[in_a_row]) == (2.0, 0.0)  # two running end the run


def test_gateway_exporter_reads_the_gateway_state(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    for study, sizes in (("1.2.1", (100, 200)), ("1.2.2", (300,)), ("1.2.3", (50,))):
        for n, size in enumerate(sizes):
            state.record_instance(received(f"{study}.{n}", study, tmp_path, size), 0.0)
    job = RoutedJob("product-a", None, frozenset({"x"}))
    for study in ("1.2.1", "1.2.2"):
        due = state.due_studies(time.time() + 1)
        row = next(r for r in due if r["study_uid"] == study)
        assert (
            state.route_study(study, row["round"], row["due_at"], [job], study_pseudonym=study) == 1
        )
    first, second = state.query("SELECT id FROM jobs ORDER BY id")
    now = time.time()
    state.update_job(first["id"], state="delivered", submitted_at=now - 5, delivered_at=now)
    state.update_job(second["id"], state="submitted", submitted_at=now - 30)
    state.record_delivery(first["id"], "sr.dcm", "pacs", "1.2.9", None)
    state.record_delivery(first["id"], "seg.dcm", "pacs", None, "association refused")
    # The first job's STAT notice reached the RIS; the pager is being retried. The second
    # job's notice was refused by the RIS (for good), and the FHIR server was down every try.
    notice = {"seconds": 0.1}
    state.record_notification(first["id"], "hl7", ok=True, retryable=False, stat=True,
                              detail=None, **notice)  # fmt: skip
    state.record_notification(first["id"], "webhook", ok=False, retryable=True, stat=True,
                              detail="connection refused", **notice)  # fmt: skip
    state.record_notification(second["id"], "hl7", ok=False, retryable=False, stat=False,
                              detail="AE: unknown patient", **notice)  # fmt: skip
    for _ in range(MAX_NOTICE_ATTEMPTS):
        state.record_notification(second["id"], "fhir", ok=False, retryable=True, stat=False,
                                  detail="503", **notice)  # fmt: skip

    server = start_metrics_server(state, 0)
    try:
        figures = samples(httpx.get(server.url, timeout=10).text)
        # The delivered study leaves the spool: what it held no longer counts as held, but
        # still as received and uploaded.
        assert state.purge_study("1.2.1", now + 1, 0) is not None
        after = samples(httpx.get(server.url, timeout=10).text)
    finally:
        server.close()
        state.close()
    assert figures[("aifi_gateway_spool_bytes", ())] == 650.0
    assert after[("aifi_gateway_spool_bytes", ())] == 350.0
    assert after[("aifi_gateway_received_bytes", ())] == 650.0
    assert after[("aifi_gateway_uploaded_study_bytes", ())] == 600.0
    assert after[("aifi_gateway_purged_studies", ())] == 1.0
    assert after[("aifi_gateway_studies", (("state", "purged"),))] == 1.0
    assert after[("aifi_gateway_studies", (("state", "routed"),))] == 1.0
    assert figures[("aifi_gateway_state_up", ())] == 1.0
    assert figures[("aifi_gateway_jobs", (("state", "delivered"),))] == 1.0
    assert figures[("aifi_gateway_jobs", (("state", "submitted"),))] == 1.0
    assert figures[("aifi_gateway_jobs", (("state", "pending"),))] == 0.0
    assert figures[("aifi_gateway_studies", (("state", "routed"),))] == 2.0
    assert figures[("aifi_gateway_studies", (("state", "receiving"),))] == 1.0
    assert figures[("aifi_gateway_deliveries", (("state", "delivered"),))] == 1.0
    assert figures[("aifi_gateway_deliveries", (("state", "failed"),))] == 1.0

    def notices(channel: str, priority: str, outcome: str) -> float:
        labels = (("channel", channel), ("outcome", outcome), ("priority", priority))
        return figures[("aifi_gateway_notices", labels)]

    assert notices("hl7", "stat", "sent") == 1.0
    assert notices("webhook", "stat", "retrying") == 1.0
    assert notices("hl7", "routine", "failed") == 1.0
    assert notices("fhir", "routine", "failed") == 1.0
    assert notices("fhir", "routine", "retrying") == 0.0
    assert notices("webhook", "routine", "failed") == 0.0  # there from the start, at 0
    assert figures[("aifi_gateway_awaiting_result_age_seconds", ())] >= 30.0
    assert figures[("aifi_gateway_received_bytes", ())] == 650.0
    assert figures[("aifi_gateway_uploaded_study_bytes", ())] == 600.0
    assert figures[("aifi_gateway_turnaround_seconds", (("quantile", "0.5"),))] > 0.0


def test_the_gateway_tells_how_long_past_its_retention_time_it_keeps_a_study(
    tmp_path: Path,
) -> None:
    """A study done with three hours ago, kept one hour: two hours overdue, which only a
    failing sweep explains (GatewayRetentionOverdue). A study with a job under way is not
    done with, however old; purged, nothing is overdue."""
    state = GatewayState(tmp_path / "state.db")
    hour = 3600.0
    now = time.time()
    for study in ("1.4.1", "1.4.2"):
        state.record_instance(received(f"{study}.0", study, tmp_path, 10), 0.0)
        row = next(r for r in state.due_studies(now + 1) if r["study_uid"] == study)
        routed = RoutedJob("product-a", None, frozenset({study + ".1"}))
        assert (
            state.route_study(study, row["round"], row["due_at"], [routed], study_pseudonym=study)
            == 1
        )
    with state.transaction() as db:  # both arrived and were routed four hours ago
        db.execute("UPDATE studies SET last_at = ?, routed_at = ?", (now - 4 * hour,) * 2)
    done, busy = state.query("SELECT id FROM jobs ORDER BY study_uid")
    state.update_job(done["id"], state="delivered", ended_at=now - 3 * hour)
    state.update_job(busy["id"], state="submitted", submitted_at=now - 4 * hour)
    server = start_metrics_server(state, 0, retain_seconds=hour)
    overdue = ("aifi_gateway_retention_overdue_seconds", ())
    try:
        kept = samples(httpx.get(server.url, timeout=10).text)[overdue]
        assert state.purge_study("1.4.1", time.time(), hour) is not None
        purged = samples(httpx.get(server.url, timeout=10).text)[overdue]
    finally:
        server.close()
        state.close()
    assert 2 * hour <= kept < 2 * hour + 60
    assert purged == 0.0  # the other study's job is under way: not done with


def test_the_gateway_tells_how_long_its_oldest_stat_study_has_waited(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    for study in ("1.3.1", "1.3.2"):
        state.record_instance(received(f"{study}.0", study, tmp_path, 10), 0.0)
    for study, priority in (("1.3.1", "routine"), ("1.3.2", "stat")):
        row = next(r for r in state.due_studies(time.time() + 1) if r["study_uid"] == study)
        routed = RoutedJob(f"product-{priority}", priority, frozenset({study + ".1"}))
        assert (
            state.route_study(study, row["round"], row["due_at"], [routed], study_pseudonym=study)
            == 1
        )
    [stat_job] = state.query("SELECT id, study_last_at FROM jobs WHERE priority = 'stat'")
    server = start_metrics_server(state, 0)
    try:
        before = time.time()
        waiting = samples(httpx.get(server.url, timeout=10).text)
        after = time.time()
        state.update_job(stat_job["id"], state="submitted", submitted_at=after)
        sent = samples(httpx.get(server.url, timeout=10).text)
        state.update_job(stat_job["id"], state="delivered", delivered_at=time.time())
        delivered = samples(httpx.get(server.url, timeout=10).text)
    finally:
        server.close()
        state.close()
    since_last = waiting[("aifi_gateway_stat_waiting_seconds", ())]
    assert before - stat_job["study_last_at"] <= since_last <= after - stat_job["study_last_at"]
    # Sent and waiting for the exchange still counts, from the study's last instance on; the
    # routine job, also waiting, never does.
    assert sent[("aifi_gateway_stat_waiting_seconds", ())] >= since_last
    assert delivered[("aifi_gateway_stat_waiting_seconds", ())] == 0.0


def test_a_study_stat_by_its_products_priority_waits_as_stat(tmp_path: Path) -> None:
    """A route that leaves the priority to the product: the study is STAT when the product's
    catalogue entry, as the gateway last read it, says so (a routine product's is not)."""
    state = GatewayState(tmp_path / "state.db")
    for study in ("1.4.1", "1.4.2"):
        state.record_instance(received(f"{study}.0", study, tmp_path, 10), 0.0)
    for study, product in (("1.4.1", "product-routine"), ("1.4.2", "product-stat")):
        row = next(r for r in state.due_studies(time.time() + 1) if r["study_uid"] == study)
        routed = RoutedJob(product, None, frozenset({study + ".1"}))
        state.route_study(study, row["round"], row["due_at"], [routed], study_pseudonym=study)
    state.remember_product("product-routine", {"manifest": {"priority": "routine"}})
    server = start_metrics_server(state, 0)
    try:
        unknown = samples(httpx.get(server.url, timeout=10).text)
        state.remember_product("product-stat", {"manifest": {"priority": "stat"}})
        known = samples(httpx.get(server.url, timeout=10).text)
    finally:
        server.close()
        state.close()
    assert unknown[("aifi_gateway_stat_waiting_seconds", ())] == 0.0  # not known to be STAT
    assert known[("aifi_gateway_stat_waiting_seconds", ())] > 0.0


def test_the_gateway_counts_as_retrying_only_the_jobs_it_will_try_again(tmp_path: Path) -> None:
    """`aifi_gateway_jobs_retrying{step}`: an upload tried again, and a result whose delivery
    to the PACS failed, count until they get through, each under its step (GatewayBacklog
    pages on uploads only). A job whose upload needed a second try, and that the exchange
    then failed after its collection failed once, is done with: before, it counted for
    ever, each such job bringing the page nearer, and a failed delivery did not count."""
    state = GatewayState(tmp_path / "state.db")
    for study in ("1.5.1", "1.5.2"):
        state.record_instance(received(f"{study}.0", study, tmp_path, 10), 0.0)
        row = next(r for r in state.due_studies(time.time() + 1) if r["study_uid"] == study)
        routed = RoutedJob("product-a", None, frozenset({study + ".1"}))
        assert (
            state.route_study(study, row["round"], row["due_at"], [routed], study_pseudonym=study)
            == 1
        )
    failing, delivering = (row["id"] for row in state.query("SELECT id FROM jobs ORDER BY id"))
    server = start_metrics_server(state, 0)

    def now_retrying() -> tuple[float, float]:
        figures = samples(httpx.get(server.url, timeout=10).text)
        return tuple(  # type: ignore[return-value]
            figures[("aifi_gateway_jobs_retrying", (("step", step),))]
            for step in ("upload", "result")
        )

    counts = []
    try:
        # As the gateway's sending and collecting record them (GatewayService).
        state.retry_job_later(failing, "exchange unreachable", 0)
        counts.append(now_retrying())  # the upload is tried again
        assert state.mark_submitted(failing, None)
        state.mark_submitted(delivering, None)
        counts.append(now_retrying())  # both sent, waiting for the vendor
        for job in (delivering, failing):
            state.update_job(job, result_seen_at=time.time())
        counts.append(now_retrying())  # both come home: the upload's try no longer counts
        state.update_job(delivering, attempts=1, reason="delivery to the PACS failed")
        state.update_job(failing, attempts=2, reason="collecting results failed")
        counts.append(now_retrying())  # both tried again
        state.update_job(failing, state="ended", exchange_state="failed", reason="bad input")
        counts.append(now_retrying())  # the failed job is done with
        state.update_job(delivering, state="delivered", delivered_at=time.time())
        counts.append(now_retrying())
    finally:
        server.close()
        state.close()
    assert counts == [(1, 0), (0, 0), (0, 0), (0, 2), (0, 1), (0, 0)]


DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def test_every_exchange_metric_and_setting_in_the_deployment_guide_exists(
    exchange_on: ExchangeFactory,
) -> None:
    """An operator wires alerts and unit files from docs/deploy.md: each metric it names is
    exported by a fresh exchange, each AIFI_ variable it names is a setting the exchange reads."""
    guide = DEPLOY.read_text()
    exposition = exchange_on().client.get("/metrics").text
    exported = {family.name for family in text_string_to_metric_families(exposition)}
    named = set(re.findall(r"`(aifi_exchange_\w+?)(?:_total)?[{`]", guide))
    assert len(named) >= 10 and named - exported == set(), sorted(exported)

    variables = set(re.findall(r"`AIFI_([A-Z_]+)`", guide))
    assert variables, "the guide names no AIFI_ variables"
    unknown = {v for v in variables if v.lower() not in ExchangeSettings.model_fields}
    assert unknown == set(), f"docs/deploy.md names settings the exchange does not read: {unknown}"


def test_refusals_at_receipt_are_told_even_when_the_state_cannot_be_read(tmp_path: Path) -> None:
    """A disk that fails makes the gateway refuse instances ("cannot-store") and its state
    unreadable at once: the refusals must still reach Prometheus."""
    state = GatewayState(tmp_path / "state.db")
    refusals = Refusals()
    refusals.instance("dimse", "CT_1", OUT_OF_RESOURCES)
    refusals.instance("dimse", "CT_1", OUT_OF_RESOURCES)
    refusals.instance("stow", "VNA", STUDY_MISMATCH)
    refusals.request(401)
    server = start_metrics_server(state, 0, refusals=refusals)
    try:
        state.close()  # every query now fails, as on a disk gone bad
        figures = samples(httpx.get(server.url, timeout=10).text)
    finally:
        server.close()
    assert figures[("aifi_gateway_state_up", ())] == 0.0
    assert ("aifi_gateway_jobs", (("state", "pending"),)) not in figures
    refused = "aifi_gateway_refused_instances_total"
    assert (
        figures[(refused, (("reason", "cannot-store"), ("sender", "CT_1"), ("way", "dimse")))] == 2
    )
    assert figures[(refused, (("reason", "wrong-study"), ("sender", "VNA"), ("way", "stow")))] == 1
    assert figures[("aifi_gateway_stow_refused_requests_total", (("status", "401"),))] == 1


def test_exchange_metrics_name_the_hospital_a_backlog_holds_up_and_the_one_not_collecting(
    exchange_on: ExchangeFactory, make_ct: Any, tmp_path: Path
) -> None:
    """Per hospital: its jobs waiting for a vendor, and its outcomes not yet acknowledged with
    how long the oldest has waited — a gateway that stopped collecting (down, cut off, a full
    disk) shows within the hour, not when retention purges its results."""
    exchange = exchange_on()
    orgs = set_up_parties(exchange)
    hospital_a, vendor = orgs["hospital"], orgs["vendor"]
    hospital_b = exchange.org("hospital-b", "hospital")
    exchange.subscribe(hospital_b, "product-a")
    done = exchange.ready_job(hospital_b, "product-a", make_ct(slices=1))
    finish_job(exchange, vendor, exchange.claim(vendor), tmp_path / "w")
    for _ in range(2):
        exchange.ready_job(hospital_a, "product-a", make_ct(slices=1))
    # hospital-b's gateway has not collected for two hours.
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(
            update(Job).where(Job.id == done["id"]).values(ended_at=utcnow() - timedelta(hours=2))
        )

    figures = samples(exchange.client.get("/metrics").text)
    a, b = (("hospital", "hospital-a"),), (("hospital", "hospital-b"),)
    assert figures[("aifi_exchange_hospital_waiting", a)] == 2.0
    assert ("aifi_exchange_hospital_waiting", b) not in figures
    assert (
        figures[("aifi_exchange_queue_depth", (("priority", "routine"), ("product", "product-a")))]
        == 2.0
    )
    assert figures[("aifi_exchange_hospital_unacknowledged", b)] == 1.0
    assert ("aifi_exchange_hospital_unacknowledged", a) not in figures
    assert 7200.0 <= figures[("aifi_exchange_hospital_unacknowledged_age_seconds", b)] < 7300.0
    assert figures[("aifi_exchange_jobs_unacknowledged", ())] == 1.0

    acknowledged = exchange.client.post(
        f"/jobs/{done['id']}/acknowledge", headers=hospital_b.headers
    )
    assert acknowledged.status_code == 200, acknowledged.text
    after = samples(exchange.client.get("/metrics").text)
    assert ("aifi_exchange_hospital_unacknowledged_age_seconds", b) not in after
    assert after[("aifi_exchange_jobs_unacknowledged", ())] == 0.0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_entries_kept_out_of_the_hash_chain_show_until_it_takes_them(
    exchange_on: ExchangeFactory,
) -> None:
    """A database session holding the chain's advisory lock (a stuck replica, a transaction
    left open by hand) keeps every replica from linking: the figures show the entries waiting
    and how long (AuditChainStalled); once the lock is free the chain takes them all."""
    exchange = exchange_on()
    services = exchange.client.app.state.services
    entries, age = (
        "aifi_exchange_audit_unlinked_entries",
        "aifi_exchange_audit_unlinked_age_seconds",
    )

    def figure(name: str) -> float:
        return samples(exchange.client.get("/metrics").text)[(name, ())]

    wait_for(lambda: figure(entries) == 0.0, 30, "the exchange's first entries to be linked")
    dsn = services.db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        set_up_parties(exchange)  # organisations, a product, a subscription: audited
        wait_for(lambda: figure(age) > 2.0, 30, "the unlinked entries to age")
        assert figure(entries) >= 4
        assert services.audit.chain() == 0  # this replica, too, leaves the round to the holder
    wait_for(lambda: figure(entries) == 0.0, 30, "the chain to take the entries")
    assert figure(age) == 0.0
    with services.db.session() as session:
        assert unlinked_count(session) == 0 and linked_count(session) >= 4


def test_a_background_task_that_fails_is_counted_until_it_works_again(
    exchange_on: ExchangeFactory,
) -> None:
    """The database refuses the audit chain's links (a trigger stands in for a broken grant
    or a DBA's mistake): each failed round is counted under its task, the entries wait
    unlinked, and once the database takes links again the chain catches up."""
    exchange = exchange_on()
    db = exchange.client.app.state.services.db
    failed = ("aifi_exchange_background_failures_total", (("task", "audit_chain"),))

    def figures() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(exchange.client.get("/metrics").text)

    in_a_row = ("aifi_exchange_background_failing_rounds", (("task", "audit_chain"),))
    assert figures()[failed] == 0.0  # there from the start
    assert figures()[in_a_row] == 0.0
    assert figures()[("aifi_exchange_background_failures_total", (("task", "retention"),))] == 0
    assert figures()[("aifi_exchange_background_failing_rounds", (("task", "retention"),))] == 0
    with db.engine.begin() as connection:
        if db.is_postgresql:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_links() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'links refused'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_links BEFORE UPDATE ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION refuse_links()"
            )
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_links BEFORE UPDATE ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'links refused'); END"
            )
    set_up_parties(exchange)  # audited: entries to link
    wait_for(lambda: figures()[in_a_row] >= 2, 30, "linking rounds to fail in a row")
    now = figures()
    assert now[failed] >= 2
    assert now[("aifi_exchange_audit_unlinked_entries", ())] >= 4
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "DROP TRIGGER refuse_links ON audit_log"
            if db.is_postgresql
            else "DROP TRIGGER refuse_links"
        )
    wait_for(
        lambda: figures()[("aifi_exchange_audit_unlinked_entries", ())] == 0,
        30,
        "the chain to catch up",
    )
    wait_for(lambda: figures()[in_a_row] == 0.0, 30, "two good rounds running to end the run")
    assert figures()[failed] >= 2  # what failed stays counted


class Enough(BaseException):
    """Ends a run of `_every` (which goes on past any Exception) after the rounds a test asks."""


def test_rounds_failed_while_the_database_did_not_answer_make_no_run_of_the_tasks_own(
    tmp_path: Path,
) -> None:
    """ExchangeDatabaseDown pages for an outage, during which every task fails. Those rounds
    are counted, but make no run of the task's own: a ten-minute task would otherwise read
    two failed rounds until its next round, long after the database came back, and be
    ticketed for nothing. The same failures while the database answers make one. The
    database that does not answer is a PostgreSQL address nobody listens on."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    answering = Database(url)
    upgrade_schema(answering.engine)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = int(sock.getsockname()[1])
    silent = Database(f"postgresql+psycopg://aifi@127.0.0.1:{nobody}/aifi")
    exported = ExchangeMetrics(answering)
    rounds = exported.rounds("audit_anchor")

    def figures() -> tuple[float | None, float | None]:
        labels = {"task": "audit_anchor"}
        return (
            exported.registry.get_sample_value("aifi_exchange_background_failures_total", labels),
            exported.registry.get_sample_value("aifi_exchange_background_failing_rounds", labels),
        )

    def run(database: Database, failing: int) -> None:
        done: list[int] = []

        def task() -> None:
            done.append(1)
            if len(done) > failing:
                raise Enough
            raise RuntimeError("the anchor could not be written")

        with pytest.raises(Enough):
            asyncio.run(_every(0.0, task, rounds, database.answers))

    try:
        assert figures() == (0.0, 0.0)
        run(silent, failing=3)
        assert figures() == (3.0, 0.0)  # counted; no run of the task's own
        run(answering, failing=2)
        assert figures() == (5.0, 2.0)
        run(silent, failing=1)
        assert figures() == (6.0, 2.0)  # the run stands as it was
        assert not silent.answers() and answering.answers()
    finally:
        silent.dispose()
        answering.dispose()
