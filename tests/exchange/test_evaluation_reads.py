"""The clinical pillar's evaluation and drift read what they need of every job from the
database, and take the product's triage flag out of its summary there: on each backend, the
flag reaches the figures as the product gave it. Each job keeps the product version that ran
it, counted per version; a version the catalogue has no record of is flagged on the page and
counted in the exchange's /metrics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from aifi.exchange.audit import Actor
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.governance_models import EligibleCount, JobFeedback
from aifi.exchange.models import Job, Product, ProductRelease
from aifi.exchange.months import Months
from aifi.exchange.triage import triage_call
from aifi.exchange.versions import summary_version
from aifi.governance import (
    NATIONAL,
    UNRECORDED,
    Agreement,
    Feedback,
    JobRecord,
    drift_charts,
    evaluate,
)
from aifi.governance import EligibleCount as EligibleIn
from aifi.governance.evaluation import ProductEvaluation, with_releases
from aifi.governance.service import ClinicalService
from aifi.results.summary import AlgorithmSummary, ResultSummary, Triage, TriageFlag
from support.national import samples

OPERATOR = Actor(organisation_id="operator", role="operator")


def claimed(
    exchange: Any, parties: dict[str, Any], make_ct: Any, product: str = "product-a"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job of hospital A's for `product` (-a or -b), ready, and its claim by the product's
    vendor."""
    job = exchange.ready_job(parties["hospital_a"], product, make_ct(slices=1))
    claim = exchange.claim(parties[f"vendor_{product[-1]}"], start=True)
    assert claim is not None and claim["job"]["id"] == job["id"]
    return job, claim


def complete(
    exchange: Any, parties: dict[str, Any], make_ct: Any, summary: Any, product: str = "product-a"
) -> str:
    job, claim = claimed(exchange, parties, make_ct, product)
    done = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        json=summary,
        params={"complete": "true"},
        headers={"X-Lease-Token": claim["lease_token"], **parties[f"vendor_{product[-1]}"].headers},
    )
    assert done.status_code == 201, done.text
    return str(job["id"])


def test_the_triage_flag_in_each_summary_reaches_evaluation_and_drift(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    flags = ["positive", "positive", "negative", "none", None]
    for flag in flags:
        summary = ResultSummary(
            product_id="product-a",
            product_version="1.0.0",
            algorithm=AlgorithmSummary(name="a", version="1.0.0", manufacturer="vendor-a"),
            triage=Triage(flag=TriageFlag(flag or "none")),
        ).model_dump(mode="json", exclude=set() if flag else {"triage"})
        complete(exchange, parties, make_ct, summary)
    services = exchange.client.app.state.services
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)

    [chart] = [c for c in clinical.drift(OPERATOR) if c.hospital_id == "hospital-a"]
    [point] = chart.chart.points
    # The positive rate is over the studies the product flagged: "none" and no triage are not.
    assert (point.studies, point.positives) == (3, 2)

    rows = {(r.hospital_id, r.product_id): r for r in clinical.evaluation(OPERATOR)}
    for hospital in ("hospital-a", NATIONAL):
        row = rows[(hospital, "product-a")]
        assert (row.volume, row.completed, row.failed) == (len(flags), len(flags), 0)
        assert row.turnaround_p50_seconds is not None and row.turnaround_p50_seconds >= 0


def versioned_summary(
    version: str, flag: str = "positive", product: str = "product-a"
) -> dict[str, Any]:
    return ResultSummary(
        product_id=product,
        product_version=version,
        algorithm=AlgorithmSummary(name="a", version=version, manufacturer="vendor-a"),
        triage=Triage(flag=TriageFlag(flag)),
    ).model_dump(mode="json")


def test_each_job_keeps_the_version_that_ran_it_and_evaluation_counts_versions_apart(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """A job is created for the catalogue's version and keeps the version its result summary
    names; evaluation per version counts each apart, in the order each was first requested."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]

    def job_of(job_id: str) -> dict[str, Any]:
        answer = exchange.client.get(f"/jobs/{job_id}", headers=hospital.headers)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    first = complete(exchange, parties, make_ct, versioned_summary("1.0"))
    failed, claim = claimed(exchange, parties, make_ct)
    assert failed["product_version"] == "1.0"  # the catalogue's, as it was created
    fail = exchange.client.post(
        f"/jobs/{failed['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "the model ran out of memory"},
        headers=vendor.headers,
    )
    assert fail.status_code == 200, fail.text

    # The vendor publishes 2.0; a worker still running 1.0 completes one job created for it.
    exchange.product(vendor, "product-a", version="2.0")
    second = complete(exchange, parties, make_ct, versioned_summary("2.0", "negative"))
    late = complete(exchange, parties, make_ct, versioned_summary("1.0"))
    assert [job_of(j)["product_version"] for j in (first, failed["id"], second, late)] == [
        "1.0", "1.0", "2.0", "1.0",
    ]  # fmt: skip

    # A summary naming no version a job can keep is refused, and the job stays held for a
    # proper one.
    held, claim = claimed(exchange, parties, make_ct)
    # None, too long for the catalogue, not printable, a space at an end (counted apart).
    for bad in ("", "v" * 65, "2.0\x00", "2.0 "):
        refused = exchange.client.put(
            f"/jobs/{held['id']}/results/summary.json",
            json={**versioned_summary("2.0"), "product_version": bad},
            params={"complete": "true"},
            headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
        )
        assert refused.status_code == 422, refused.text
        assert "rule 'summary-json': product_version: must be 1 to 64" in refused.json()["detail"]
    assert job_of(held["id"])["state"] == "in-progress"
    assert job_of(held["id"])["product_version"] == "2.0"

    services = exchange.client.app.state.services
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)
    rows = {
        (r.hospital_id, r.product_version): r
        for r in clinical.evaluation(OPERATOR, by_version=True)
        if r.product_id == "product-a"
    }
    assert list(rows) == [
        ("hospital-a", "1.0"), ("hospital-a", "2.0"), (NATIONAL, "1.0"), (NATIONAL, "2.0"),
    ]  # fmt: skip
    for hospital_id in ("hospital-a", NATIONAL):
        old, new = rows[(hospital_id, "1.0")], rows[(hospital_id, "2.0")]
        assert (old.completed, old.failed, old.volume) == (2, 1, 3)
        # Volume counts the studies routed to it: the held job's too.
        assert (new.completed, new.failed, new.volume) == (1, 0, 2)
        assert old.failure_rate.denominator == 3 and new.uptake is None
        # All on one day: the days say when each version ran, no finer.
        assert old.first_requested_on == new.first_requested_on == old.last_requested_on
    [overall] = [
        r
        for r in clinical.evaluation(OPERATOR)
        if (r.product_id, r.hospital_id) == ("product-a", NATIONAL)
    ]
    assert overall.product_version is None and (overall.completed, overall.failed) == (3, 1)


def per_version_of(exchange: Any, actor: Actor = OPERATOR) -> list[Any]:
    services = exchange.client.app.state.services
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)
    return clinical.evaluation(actor, by_version=True)


def test_a_failure_counts_under_the_version_the_worker_names(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """After a release, workers still running the version before fail jobs created for the
    new one: a worker that names its version has the failure counted under it, not against
    the new version. A version no job could keep is refused, and the job stays held."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    exchange.product(vendor, "product-a", version="2.0")

    def failed(version: str | None) -> dict[str, Any]:
        job, claim = claimed(exchange, parties, make_ct)
        assert job["product_version"] == "2.0"
        body = {"lease_token": claim["lease_token"], "reason": "out of memory"}
        for bad in ("", "v" * 65, "1.0\x00", "1.0\t", "1.0\u200b", " 1.0", "1.0 "):
            refused = exchange.client.post(
                f"/jobs/{job['id']}/fail",
                json={**body, "product_version": bad},
                headers=vendor.headers,
            )
            assert refused.status_code == 422, refused.text
            assert (
                f"job {job['id']}: rule 'product-version': product_version: must be 1 to 64 "
                f"printable characters with no space at either end, the version that failed "
                f"the job as the catalogue names it (given {bad!r}, {len(bad)} characters)"
            ) == refused.json()["detail"]
        held = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert (held["state"], held["product_version"]) == ("in-progress", "2.0")
        answer = exchange.client.post(
            f"/jobs/{job['id']}/fail",
            json=body if version is None else {**body, "product_version": version},
            headers=vendor.headers,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    by_old_worker, by_unnamed = failed("1.0"), failed(None)
    assert (by_old_worker["state"], by_old_worker["product_version"]) == ("failed", "1.0")
    assert (by_unnamed["state"], by_unnamed["product_version"]) == ("failed", "2.0")
    assert by_old_worker["reason"] == by_unnamed["reason"] == "out of memory"

    rows = {
        (r.hospital_id, r.product_version): (r.volume, r.completed, r.failed)
        for r in per_version_of(exchange)
        if r.product_id == "product-a"
    }
    assert rows == {
        ("hospital-a", "1.0"): (1, 0, 1), ("hospital-a", "2.0"): (1, 0, 1),
        (NATIONAL, "1.0"): (1, 0, 1), (NATIONAL, "2.0"): (1, 0, 1),
    }  # fmt: skip


def test_a_catalogue_version_with_a_space_at_an_end_from_before_the_rule_goes_on(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """A version published before the exchange refused a space at either end: its manifest
    published again (a deployment starting) is taken, and summaries and failures name it as
    the catalogue does, after the next release too; it is never split from itself. A new such
    version, or a result naming another one, is refused."""
    vendor = parties["vendor_a"]
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(update(Product).where(Product.id == "product-a").values(version="2.0 "))
    assert exchange.product(vendor, "product-a", version="2.0 ")["version"] == "2.0 "

    done = complete(exchange, parties, make_ct, versioned_summary("2.0 "))
    kept = exchange.client.get(f"/jobs/{done}", headers=parties["hospital_a"].headers).json()
    assert kept["product_version"] == "2.0 "
    job, claim = claimed(exchange, parties, make_ct)
    body = {"lease_token": claim["lease_token"], "reason": "out of memory"}
    for other in ("3.0 ", " 2.0"):
        refused = exchange.client.put(
            f"/jobs/{job['id']}/results/summary.json",
            json=versioned_summary(other),
            params={"complete": "true"},
            headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
        )
        assert refused.status_code == 422, refused.text
        refused = exchange.client.post(
            f"/jobs/{job['id']}/fail", json={**body, "product_version": other},
            headers=vendor.headers,
        )  # fmt: skip
        assert refused.status_code == 422, refused.text
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail", json={**body, "product_version": "2.0 "}, headers=vendor.headers
    )
    assert failed.status_code == 200, failed.text
    assert (failed.json()["state"], failed.json()["product_version"]) == ("failed", "2.0 ")

    # After the next release, a worker still running "2.0 " names it for a job made for 2.1.
    assert exchange.product(vendor, "product-a", version="2.1")["version"] == "2.1"
    with services.db.session() as session:  # admitted again, as the operator would
        session.execute(update(Product).where(Product.id == "product-a").values(status="admitted"))
    late = complete(exchange, parties, make_ct, versioned_summary("2.0 "))
    kept = exchange.client.get(f"/jobs/{late}", headers=parties["hospital_a"].headers).json()
    assert kept["product_version"] == "2.0 "
    rows = {
        r.product_version: (r.completed, r.failed, r.in_catalogue)
        for r in per_version_of(exchange)
        if (r.product_id, r.hospital_id) == ("product-a", NATIONAL)
    }
    assert rows == {"2.0 ": (2, 1, True)}

    manifest = {
        "id": "product-a", "vendor": vendor.id, "name": "Product product-a", "version": "3.0 ",
        "clinical_area": "quantification",
    }  # fmt: skip
    answer = exchange.client.post("/products", json=manifest, headers=vendor.headers)
    assert answer.status_code == 422, answer.text
    assert "no space at either end" in answer.json()["detail"]


def test_evaluation_per_version_says_which_versions_the_catalogue_never_named(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """A summary naming a version the vendor never published (a typo that splits a version
    over two rows, or a version never put up for review) gets a row flagged so; a version
    published, replaced and published again keeps the day it was first published."""
    exchange.product(parties["vendor_a"], "product-a", version="2.0")
    for version in ("1.0", "2.0", "v2.0"):
        complete(exchange, parties, make_ct, versioned_summary(version))
    exchange.product(parties["vendor_a"], "product-a", version="1.0")  # back to 1.0

    services = exchange.client.app.state.services
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)
    with services.db.session() as session:
        published = session.execute(
            select(ProductRelease.version, ProductRelease.published_at).where(
                ProductRelease.product_id == "product-a"
            )
        ).all()
    first = {version: as_utc(at) for version, at in published}
    assert sorted(first) == ["1.0", "2.0"] and first["1.0"] <= first["2.0"]
    rows = {
        (r.hospital_id, r.product_version): (r.in_catalogue, r.published_on, r.completed)
        for r in per_version_of(exchange)
        if r.product_id == "product-a"
    }
    for hospital_id in ("hospital-a", NATIONAL):
        assert rows[(hospital_id, "1.0")] == (True, first["1.0"].date(), 1)
        assert rows[(hospital_id, "2.0")] == (True, first["2.0"].date(), 1)
        assert rows[(hospital_id, "v2.0")] == (False, None, 1)
    # Over all versions, nothing to say.
    overall = [r for r in clinical.evaluation(OPERATOR) if r.product_id == "product-a"]
    assert overall and all(r.in_catalogue is r.published_on is None for r in overall)


def test_a_version_another_product_published_is_not_this_products(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    exchange.product(parties["vendor_b"], "product-b", version="2.0")
    complete(exchange, parties, make_ct, versioned_summary("2.0"))  # product-a never had 2.0
    rows = {
        (r.hospital_id, r.product_version): r.in_catalogue
        for r in per_version_of(exchange)
        if r.product_id == "product-a"
    }
    assert rows == {("hospital-a", "2.0"): False, (NATIONAL, "2.0"): False}


def not_in_catalogue(exchange: Any) -> dict[str, float]:
    """The exchange's jobs under a version the catalogue has no record of, per product, as
    Prometheus scrapes them."""
    scraped = samples(exchange.client.get("/metrics").text)
    return {
        dict(labels)["product"]: value
        for (name, labels), value in scraped.items()
        if name == "aifi_exchange_version_not_in_catalogue_jobs"
    }


def test_the_exchange_counts_the_last_hours_jobs_under_a_version_it_has_no_record_of(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """What the page flags reaches the operator's monitoring (the ProductVersionNotInCatalogue
    alert reads it): the jobs that ended in the last hour under a version the catalogue has
    no record of, completed or failed, per product. A job with no version kept is not one; a
    version published since, and a job that ended over an hour ago, no longer count."""
    vendor = parties["vendor_a"]
    services = exchange.client.app.state.services
    exchange.product(parties["vendor_b"], "product-b", version="3.0")  # not product-a's
    exchange.product(vendor, "product-a", version="2.0")
    exchange.subscribe(parties["hospital_a"], "product-b")

    none = {"product-a": 0.0, "product-b": 0.0}  # every product listed: missing is a fault
    assert not_in_catalogue(exchange) == none
    published = ("1.0", "2.0")  # the one before, and the current
    unkept, *_ = [complete(exchange, parties, make_ct, versioned_summary(v)) for v in published]
    with services.db.session() as session:  # as a job of an earlier release ended: no version
        session.execute(update(Job).where(Job.id == unkept).values(product_version=None))
    assert not_in_catalogue(exchange) == none
    long_ago, *_ = [complete(exchange, parties, make_ct, versioned_summary(v))
                    for v in ("v2.0", "v2.0", "3.0")]  # fmt: skip
    job, claim = claimed(exchange, parties, make_ct)
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "crashed", "product_version": "2.1"},
        headers=vendor.headers,
    )
    assert failed.status_code == 200, failed.text
    other = versioned_summary("3.1", product="product-b")  # product-b's own, never published
    complete(exchange, parties, make_ct, other, "product-b")
    assert not_in_catalogue(exchange) == {"product-a": 4.0, "product-b": 1.0}

    with services.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == long_ago)
            .values(ended_at=utcnow() - timedelta(hours=1, minutes=1))
        )
    assert not_in_catalogue(exchange) == {"product-a": 3.0, "product-b": 1.0}
    exchange.product(vendor, "product-a", version="2.1")  # the version its worker ran
    assert not_in_catalogue(exchange) == {"product-a": 2.0, "product-b": 1.0}


def test_a_version_a_rolling_upgrade_left_unrecorded_counts_for_the_jobs_it_was_to_run(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """Replicas of the previous release publish without recording: a version they published
    and replaced stays on the jobs created for it, as the page flags it. The jobs it ran or
    ran out of time count (as evaluation counts them the product's), a cancelled one does not
    (nothing ran it); the product's current version, unrecorded too, is published."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    services = exchange.client.app.state.services

    def published_by_a_previous_release(version: str) -> None:
        with services.db.session() as session:
            session.execute(
                update(Product)
                .where(Product.id == "product-a")
                .values(version=version, updated_at=utcnow())
            )

    published_by_a_previous_release("1.5")
    job, claim = claimed(exchange, parties, make_ct)
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail", json={"lease_token": claim["lease_token"], "reason": "crashed"},
        headers=vendor.headers,
    )  # fmt: skip
    assert failed.status_code == 200 and failed.json()["product_version"] == "1.5"
    lapsed, _ = claimed(exchange, parties, make_ct)
    with services.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == lapsed["id"])
            .values(
                attempts=services.settings.max_attempts,
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    services.jobs.expire_leases()  # unless the exchange's own sweep came first: expired either way
    withdrawn = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    cancelled = exchange.client.post(
        f"/jobs/{withdrawn['id']}/cancel", json={"reason": "withdrawn"}, headers=hospital.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    published_by_a_previous_release("1.6")  # 1.5 is now neither current nor recorded
    complete(exchange, parties, make_ct, versioned_summary("1.6"))

    with services.db.session() as session:
        kept = sorted(tuple(row) for row in session.execute(select(Job.state, Job.product_version)))
    assert kept == [("cancelled", "1.5"), ("completed", "1.6"), ("expired", "1.5"),
                    ("failed", "1.5")]  # fmt: skip
    assert not_in_catalogue(exchange) == {"product-a": 2.0, "product-b": 0.0}
    flagged = {(r.hospital_id, r.product_version): r.in_catalogue for r in per_version_of(exchange)}
    assert flagged == {
        ("hospital-a", "1.5"): False, ("hospital-a", "1.6"): True,
        (NATIONAL, "1.5"): False, (NATIONAL, "1.6"): True,
    }  # fmt: skip


def test_a_version_published_again_keeps_its_first_day(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    services = exchange.client.app.state.services
    long_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(days=40)
    with services.db.session() as session:
        session.execute(
            update(ProductRelease)
            .where(ProductRelease.product_id == "product-a", ProductRelease.version == "1.0")
            .values(published_at=long_ago)
        )
    exchange.product(parties["vendor_a"], "product-a", version="2.0")
    exchange.product(parties["vendor_a"], "product-a", version="1.0")  # back to 1.0
    complete(exchange, parties, make_ct, versioned_summary("1.0"))
    rows = {
        (r.hospital_id, r.product_version): r.published_on
        for r in per_version_of(exchange)
        if r.product_id == "product-a"
    }
    assert rows == {("hospital-a", "1.0"): long_ago.date(), (NATIONAL, "1.0"): long_ago.date()}


def test_each_party_sees_the_flag_on_the_rows_it_may_see(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    """The hospital its own rows and the national one, another hospital the national one, the
    vendor its product's, another vendor none."""
    complete(exchange, parties, make_ct, versioned_summary("v1.0"))
    seen = {}
    for name, role in (("hospital_a", "hospital"), ("hospital_b", "hospital"),
                       ("vendor_a", "vendor"), ("vendor_b", "vendor")):  # fmt: skip
        actor = Actor(organisation_id=parties[name].id, role=role)
        seen[name] = sorted(
            (r.product_id, r.hospital_id, r.product_version, r.in_catalogue)
            for r in per_version_of(exchange, actor)
        )
    flagged = ("product-a", NATIONAL, "v1.0", False)
    assert seen["hospital_a"] == [("product-a", "hospital-a", "v1.0", False), flagged]
    assert seen["hospital_b"] == [flagged]
    assert seen["vendor_a"] == seen["hospital_a"]
    assert seen["vendor_b"] == []


def random_jobs(rng: random.Random) -> tuple[list[dict[str, Any]], ...]:
    """Jobs, feedback and eligible counts as the exchange stores them: every state, flag and
    verdict, jobs that never became ready, ties, and period edges (a month's last minutes,
    ISO weeks that belong to the year before or after, a job requested in one month and ended
    in the next, one requested at a month's first moment), and studies sent again (a job of a
    study an earlier job had, a little later: mostly at its hospital to its product, else at
    the other hospital or to the other product, where it is a study of its own). Each job
    has the version it was created for, or none (from before versions were kept), and a
    summary may name another (the version that produced the result), or one no job can keep."""
    edges = [
        datetime(2026, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2027, 1, 1, 8, 0, tzinfo=UTC),  # a Friday: ISO week 2026-W53
        datetime(2025, 12, 29, 0, 0, 1, tzinfo=UTC),  # a Monday: ISO week 2026-W01
        datetime(2026, 6, 15, 12, 0, tzinfo=UTC),
        datetime(2026, 2, 1, 0, 30, tzinfo=UTC),  # requested (an hour before) in January
        datetime(2026, 3, 1, 1, 0, tzinfo=UTC),  # requested at March's first moment
    ]
    states = ["completed"] * 6 + ["failed", "expired", "cancelled", "in-progress", "requested"]
    # As products sent them: the schema's flags, a flag it does not know, a flag that is not
    # a string, triage that is not an object, and no triage.
    summaries: list[dict[str, Any]] = [
        *({"triage": {"flag": flag}} for flag in ("positive", "negative", "none")),
        {"triage": {"flag": "maybe"}},
        {"triage": {"flag": 1}},
        {"triage": "positive"},
        {"findings": []},
    ]
    # The version a summary names: mostly a catalogue's, else none, empty or too long
    # (summaries from before the schema required one a job can keep).
    named = ["1.0", "2.0", "2.0", "2.1-rc", None, "", "v" * 65]
    jobs: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for n in range(240):
        state = rng.choice(states)
        ended = rng.choice(edges) + timedelta(days=rng.choice([0, rng.randrange(400)]))
        summary = dict(rng.choice(summaries))
        if (version := rng.choice(named)) is not None:
            summary["product_version"] = version
        if n < 2 * len(edges):  # each edge for certain: a positive and a negative call
            state, ended = "completed", edges[n % len(edges)]
            summary = {"triage": {"flag": ("positive", "negative")[n // len(edges)]}}
        # Whole seconds for some, so some turnarounds tie; microseconds for others.
        took = rng.choice([30.0, 60.0, rng.uniform(5, 900)])
        ready = None if rng.random() < 0.05 else ended - timedelta(seconds=took)
        product, vendor = rng.choice([("product-a", "vendor-a"), ("product-b", "vendor-b")])
        hospital, study = rng.choice(["hospital-a", "hospital-b"]), f"2.25.{n}"
        if n >= 2 * len(edges) and rng.random() < 0.3:
            earlier = jobs[rng.randrange(n)]
            study = earlier["study_uid"]
            if rng.random() < 0.8:  # else drawn anew: elsewhere, the same UID is its own study
                hospital = earlier["hospital_id"]
                product, vendor = earlier["product_id"], earlier["vendor_id"]
            ended = earlier["created_at"] + timedelta(hours=1, minutes=rng.randrange(1, 30))
            ready = None if ready is None else ended - timedelta(seconds=took)
        # What the gateway said of the results, for any state (it is kept for completed jobs
        # alone, but evaluation must not count it for others either).
        delivery = rng.choice(
            [None, "delivered", "delivered", "unfileable", "unmapped", "purged", "let_go", "lost"]
        )
        job = {
            "id": f"job-{n:04d}",
            "hospital_id": hospital,
            "product_id": product,
            "vendor_id": vendor,
            "idempotency_key": f"k{n}",
            "study_uid": study,
            "state": state,
            "summary": summary,
            "created_at": ended - timedelta(hours=1),
            "ready_at": ready,
            "ended_at": ended if state in ("completed", "failed", "expired", "cancelled") else None,
            "updated_at": ended,
            "delivery": delivery,
            # Images of the study the exchange lost: a failure then is not the product's.
            "inputs_lost_at": ended if rng.random() < 0.15 else None,
            "product_version": rng.choice(["1.0", "1.0", "2.0", None]),
        }
        jobs.append(job)
        if rng.random() < 0.6:
            feedback.append(
                {
                    "job_id": job["id"],
                    "hospital_id": job["hospital_id"],
                    "agreement": rng.choice(list(Agreement)).value,
                    "radiologist_positive": rng.choice([True, False, None]),
                    "created_at": ended,
                }
            )
    eligible = [
        {"hospital_id": "hospital-a", "product_id": "product-a", "month": m, "studies": s}
        for m, s in (("2026-01", 70), ("2026-02", 55))
    ] + [{"hospital_id": "hospital-b", "product_id": "product-b", "month": "2026-06", "studies": 9}]
    return jobs, feedback, eligible


def stored(exchange: Any, jobs: list[dict[str, Any]], *rows: list[dict[str, Any]]) -> Any:
    """The jobs, feedback and eligible counts written to the exchange's database, each job's
    flag and version read by the sweeps (as for rows of a replica of an earlier release); its
    services."""
    feedback, eligible = rows
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(insert(Job), jobs)
        session.execute(insert(JobFeedback), feedback)
        session.execute(insert(EligibleCount), eligible)
    assert services.jobs.read_triage_flags() == len(jobs)
    assert services.jobs.read_product_versions() == len(jobs)  # each has a summary
    return services


def one_by_one(
    jobs: list[dict[str, Any]], feedback: list[dict[str, Any]], eligible: list[dict[str, Any]]
) -> tuple[list[JobRecord], list[Feedback], list[EligibleIn]]:
    """The same rows as the row-by-row definitions take them; the version a job's summary
    names, where a job can keep it, is the one it ran."""
    records = [
        JobRecord(
            **{
                k: job[k]
                for k in (
                    "product_id",
                    "hospital_id",
                    "state",
                    "ready_at",
                    "ended_at",
                    "delivery",
                    "created_at",
                )
            },  # fmt: skip
            job_id=job["id"],
            ai_positive=triage_call(job["summary"]),
            inputs_lost=job["inputs_lost_at"] is not None,
            study_uid=job["study_uid"],
            product_version=summary_version(job["summary"] or {}) or job["product_version"],
        )
        for job in jobs
    ]
    notes = [
        Feedback(
            job_id=f["job_id"],
            agreement=Agreement(f["agreement"]),
            radiologist_positive=f["radiologist_positive"],
        )
        for f in feedback
    ]
    counts = [
        EligibleIn(product_id=e["product_id"], hospital_id=e["hospital_id"], studies=e["studies"])
        for e in eligible
    ]
    return records, notes, counts


def catalogued(services: Any, *counted: Any) -> list[ProductEvaluation]:
    """Evaluation per version counted row by row, with the versions the catalogue named: here
    each product's one version, published when the product was registered."""
    published = {
        (p.id, p.version): as_utc(p.created_at) for p in services.catalogue.list_products()
    }
    return with_releases(evaluate(*counted, by_version=True), published)


def assert_same_evaluation(counted: list[Any], expected: list[Any]) -> None:
    assert [(r.product_id, r.hospital_id, r.product_version) for r in counted] == [
        (r.product_id, r.hospital_id, r.product_version) for r in expected
    ]
    for got, want in zip(counted, expected, strict=True):
        # SQLite's date functions count milliseconds: turnarounds agree to within one.
        for field in ("turnaround_p50_seconds", "turnaround_p95_seconds"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), abs=2e-3), field
        exact = {"turnaround_p50_seconds", "turnaround_p95_seconds"}
        assert got.model_dump(exclude=exact) == want.model_dump(exclude=exact)


def test_the_database_counts_the_figures_as_rows_counted_one_by_one_do(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """Evaluation and drift are counted by the database (aggregates); the same jobs, feedback
    and eligible counts counted row by row in Python must give the same figures."""
    jobs, feedback, eligible = random_jobs(random.Random(7))
    services = stored(exchange, jobs, feedback, eligible)
    # Each flag is read once.
    assert services.jobs.read_triage_flags() == 0
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)

    records, notes, counts = one_by_one(jobs, feedback, eligible)
    expected = evaluate(records, notes, counts)
    counted = clinical.evaluation(OPERATOR)
    assert len(counted) == 6  # two products × (two hospitals + national)
    assert_same_evaluation(counted, expected)
    assert any(r.sensitivity.denominator > 0 for r in counted)
    assert any(r.uptake is not None for r in counted)
    assert all(0 < r.undelivered.numerator < r.undelivered.denominator for r in counted)

    # Per version: the same figures again, a row per version each job ran.
    per_version = clinical.evaluation(OPERATOR, by_version=True)
    assert_same_evaluation(per_version, catalogued(services, records, notes, counts))
    # The catalogue named 1.0 only; the summaries named the others.
    assert {r.product_version: r.in_catalogue for r in per_version} == {
        "1.0": True, "2.0": False, "2.1-rc": False, UNRECORDED: None,
    }  # fmt: skip
    versions = {(r.product_id, r.hospital_id): [] for r in counted}
    for row in per_version:
        versions[(row.product_id, row.hospital_id)].append(row)
    for (product, hospital), rows in versions.items():
        # Every version, and the jobs whose version was never kept, in the order each
        # was first requested; no uptake (eligible studies are counted per product).
        assert {r.product_version for r in rows} == {"1.0", "2.0", "2.1-rc", UNRECORDED}
        firsts = [r.first_requested_on for r in rows]
        assert firsts == sorted(firsts) and all(r.uptake is None for r in rows)
        [overall] = [r for r in counted if (r.product_id, r.hospital_id) == (product, hospital)]
        for field in ("completed", "failed", "feedback", "images_lost"):
            assert sum(getattr(r, field) for r in rows) == getattr(overall, field), field
        assert min(firsts) == overall.first_requested_on

    for granularity in ("month", "week"):
        want_charts = drift_charts(records, granularity=granularity)
        got_charts = clinical.drift(OPERATOR, granularity=granularity)
        assert [c.model_dump() for c in got_charts] == [c.model_dump() for c in want_charts]
    weekly = {
        p.period for c in clinical.drift(OPERATOR, granularity="week") for p in c.chart.points
    }
    assert {"2026-W53", "2026-W01", "2026-W05"} <= weekly


@pytest.mark.parametrize(
    ("months", "start", "end"),
    [
        (Months("2026-02", "2026-06"), datetime(2026, 2, 1), datetime(2026, 7, 1)),
        (Months("2026-03", "2026-03"), datetime(2026, 3, 1), datetime(2026, 4, 1)),
        (Months(since="2026-12"), datetime(2026, 12, 1), datetime(9999, 1, 1)),
        (Months(until="2026-02"), datetime(1, 1, 1), datetime(2026, 3, 1)),
    ],
    ids=["february-to-june", "march", "from-december", "until-february"],
)
def test_a_period_counts_the_jobs_of_its_months_only(
    exchange: Any, parties: dict[str, Any], months: Months, start: datetime, end: datetime
) -> None:
    """Evaluation counts the jobs requested in the months asked for, with those months'
    eligible counts; drift the jobs that ended in them. Row by row, the same figures."""
    start, end = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
    jobs, feedback, eligible = random_jobs(random.Random(11))
    services = stored(exchange, jobs, feedback, eligible)
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)

    requested = [j for j in jobs if start <= j["created_at"] < end]
    reported = [
        e for e in eligible if start <= datetime.fromisoformat(e["month"] + "-01T00:00Z") < end
    ]
    assert 0 < len(requested) < len(jobs)
    expected = evaluate(*one_by_one(requested, feedback, reported))
    counted = clinical.evaluation(OPERATOR, months)
    assert_same_evaluation(counted, expected)
    per_version = catalogued(services, *one_by_one(requested, feedback, reported))
    assert_same_evaluation(clinical.evaluation(OPERATOR, months, by_version=True), per_version)
    studies = {(j["hospital_id"], j["product_id"], j["study_uid"]) for j in requested}
    assert sum(r.volume for r in counted if r.hospital_id == NATIONAL) == len(studies)
    assert len(studies) < len(requested)  # studies sent again are in the data

    ended = [j for j in jobs if j["ended_at"] is not None and start <= j["ended_at"] < end]
    records, _notes, _counts = one_by_one(ended, [], [])
    for granularity in ("month", "week"):
        want = drift_charts(records, granularity=granularity)
        got = clinical.drift(OPERATOR, granularity=granularity, months=months)
        assert [c.model_dump() for c in got] == [c.model_dump() for c in want]
    # The edges are in the data: a job requested in January and ended in February counts in
    # February's drift, not its evaluation; one requested at March's first moment is March's,
    # not February's.
    if months.since == "2026-02":
        assert any(j["ended_at"] and j["created_at"] < start <= j["ended_at"] for j in jobs)
    if months.since == "2026-03":
        assert any(j["created_at"] == start for j in jobs)
    if months.until == "2026-02":
        assert any(j["created_at"] == end for j in jobs)
