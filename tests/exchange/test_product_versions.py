"""The version a job keeps, and the catalogue's record of each version published. A summary
stored by a replica of the previous release (during a rolling upgrade) or before the exchange
kept versions: the sweep reads its version, by the same rule as a job completing now, a batch
at a time, on each backend. Publications at once, and by replicas of the previous release,
are recorded once, each at its first moment."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from aifi.exchange.audit import Actor
from aifi.exchange.clock import as_utc
from aifi.exchange.models import Job, Product, ProductRelease
from aifi.exchange.versions import BATCH, read_unread_versions, summary_version
from aifi.governance.service import ClinicalService

T = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
OPERATOR = Actor(organisation_id="operator", role="operator")


def row(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"job-{n}",
        "hospital_id": "hospital-a",
        "product_id": "product-a",
        "vendor_id": "vendor-a",
        "idempotency_key": f"k{n}",
        "study_uid": f"2.25.{n}",
        "state": "completed",
        "created_at": T,
        "ready_at": T,
        "ended_at": T + timedelta(minutes=1),
        "updated_at": T,
        **extra,
    }


def kept(exchange: Any) -> dict[str, tuple[str | None, bool | None]]:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        rows = session.execute(select(Job.id, Job.product_version, Job.version_read)).all()
    return {job_id: (version, read) for job_id, version, read in rows}


def stored(exchange: Any, rows: list[dict[str, Any]]) -> Any:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(insert(Job), rows)
    return services


def test_a_job_completed_by_a_replica_of_the_previous_release_gets_its_summarys_version(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """The previous release writes the summary and its triage flag, not the version: the
    sweep reads it, whether a new replica created the job (for the catalogue's 2.0) or an
    old one did (no version)."""
    old_worker = {"product_version": "1.0", "triage": {"flag": "positive"}}
    services = stored(
        exchange,
        [
            row(1, summary=old_worker, triage_flag="positive", product_version="2.0"),
            row(2, summary=old_worker, triage_flag="positive"),
            # Failed under 2.0: no summary, nothing to read, the version it was created for.
            row(3, state="failed", product_version="2.0"),
        ],
    )
    assert services.jobs.read_product_versions() == 2
    assert kept(exchange) == {
        "job-1": ("1.0", True),
        "job-2": ("1.0", True),
        "job-3": ("2.0", None),
    }
    assert services.jobs.read_product_versions() == 0  # each is read once


#: What summaries stored before versions were checked may name, and what a job keeps of it
#: when it was created for 1.0: the same rule as `summary_version`, on each database.
NAMED: dict[str, tuple[Any, str]] = {
    "a-version": ("2.1.0", "2.1.0"),
    "the-longest": ("v" * 64, "v" * 64),
    "too-long": ("v" * 65, "1.0"),
    "empty": ("", "1.0"),
    "a-line-break": ("2.0\n", "1.0"),
    # Kept as named: refused anew, but stored before, or as the catalogue published it so.
    "a-trailing-space": ("2.0 ", "2.0 "),
    "a-leading-space": (" 2.0", " 2.0"),
    "a-space-inside": ("2.0 beta", "2.0 beta"),
    "a-number": (2, "1.0"),
    "true": (True, "1.0"),
    "null": (None, "1.0"),
    "an-object": ({"major": 2}, "1.0"),
}


@pytest.mark.parametrize("batch", [3, BATCH])
def test_the_sweep_reads_a_version_as_a_completing_job_does(
    exchange: Any, parties: dict[str, Any], batch: int
) -> None:
    """Batch by batch (three at a time here, as a national table would be read), every
    summary is read, and a value no job can keep leaves the version the job was created for;
    a summary naming none at all too."""
    summaries = {name: {"product_version": named} for name, (named, _) in NAMED.items()}
    summaries["none-named"] = {"triage": {"flag": "none"}}
    services = stored(
        exchange,
        [
            row(n, id=name, idempotency_key=name, summary=summary, product_version="1.0")
            for n, (name, summary) in enumerate(summaries.items())
        ],
    )
    assert read_unread_versions(services.db, batch=batch) == len(summaries)
    versions = {job: version for job, (version, _read) in kept(exchange).items()}
    assert versions == {**{name: want for name, (_, want) in NAMED.items()}, "none-named": "1.0"}
    assert versions == {job: summary_version(s) or "1.0" for job, s in summaries.items()}
    assert read_unread_versions(services.db, batch=batch) == 0


#: Summaries an earlier exchange accepted that the database cannot take a value out of: a NUL
#: anywhere (PostgreSQL), a lone surrogate (in the version on SQLite, anywhere on PostgreSQL).
POISON: dict[str, dict[str, Any]] = {
    "nul-in-version": {"product_version": "2.0\x00x"},
    "nul-in-a-label": {"product_version": "2.0", "label": "a\x00b"},
    "nul-nested": {"product_version": "2.0", "findings": [{"label": "a\x00b"}]},
    "surrogate-in-version": {"product_version": "2.0\ud800"},
    "surrogate-in-a-label": {"product_version": "2.0", "label": "a\ud800"},
}


@pytest.mark.parametrize("poison", list(POISON), ids=list(POISON))
def test_one_old_summary_the_database_cannot_read_does_not_stop_the_sweep(
    exchange: Any, parties: Any, poison: str
) -> None:
    """Its batch is read whole by Python instead: every job is read in one round, the
    poisoned one keeping what the rule keeps of it."""
    services = stored(
        exchange,
        [row(0, summary=POISON[poison], product_version="1.0")]
        + [row(n, summary={"product_version": "2.0"}, product_version="1.0") for n in range(1, 6)],
    )
    assert read_unread_versions(services.db, batch=2) == 6
    versions = kept(exchange)
    assert all(versions[f"job-{n}"] == ("2.0", True) for n in range(1, 6)), versions
    # SQLite hands a version back cut at its NUL (documented in aifi.exchange.versions).
    cut = poison == "nul-in-version" and not services.db.is_postgresql
    expected = "2.0" if cut else summary_version(POISON[poison]) or "1.0"
    assert versions["job-0"] == (expected, True)


def test_replicas_sweeping_at_once_read_each_version_once(exchange: Any, parties: Any) -> None:
    """Four sweeps at once, fifty at a time: every job gets its own version, none is left,
    and on PostgreSQL (rows locked and skipped) each is read by one sweep only."""
    jobs = 1_500
    services = stored(
        exchange,
        [row(n, summary={"product_version": f"v{n}"}, product_version="1.0") for n in range(jobs)],
    )
    counts: list[int] = []
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        counts.append(read_unread_versions(services.db, batch=50))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(counts) == 4  # no sweep failed
    versions = kept(exchange)
    assert all(versions[f"job-{n}"] == (f"v{n}", True) for n in range(jobs))
    if services.db.is_postgresql:
        assert sum(counts) == jobs


@pytest.mark.parametrize("version", ["1.0\u00a0beta", "2.0\t", "1.0\u200b", "2.0 ", " 2.0"])
def test_the_catalogue_refuses_a_version_no_summary_may_name(
    exchange: Any, parties: Any, version: str
) -> None:
    """Completion refuses a summary whose version is not printable or has a space at either
    end, so the catalogue refuses such a version first, saying why (else every completion of
    the product would fail)."""
    vendor = parties["vendor_b"]
    manifest = {
        "id": "product-b", "vendor": vendor.id, "name": "Product product-b", "version": version,
        "clinical_area": "quantification",
    }  # fmt: skip
    answer = exchange.client.post("/products", json=manifest, headers=vendor.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (
        f"product 'product-b': version {version!r} must hold printable characters only (no "
        "tab, line break, control or invisible character) and no space at either end: each "
        "result's summary names it as its product_version"
    )
    product = exchange.client.get("/products/product-b", headers=vendor.headers).json()
    assert product["version"] == "1.0"  # the catalogue kept the version it had


@pytest.mark.parametrize(
    ("product_id", "kept"), [("product-new", ["3.0"]), ("product-b", ["1.0", "3.0"])]
)
def test_a_version_published_several_times_at_once_is_one_release(
    exchange: Any, parties: Any, product_id: str, kept: list[str]
) -> None:
    """A vendor's deployment starting several workers, each publishing the manifest at once (of
    a new product, or a new version of product-b's 1.0): each is answered, and the catalogue
    holds one product and records the version once."""
    vendor = parties["vendor_b"]
    manifest = {
        "id": product_id, "vendor": vendor.id, "name": "Product", "version": "3.0",
        "clinical_area": "quantification",
    }  # fmt: skip
    assert published_at_once(exchange, vendor, [manifest] * 4) == [201] * 4
    assert releases(exchange, product_id) == kept
    product = exchange.client.get(f"/products/{product_id}", headers=vendor.headers).json()
    assert (product["version"], product["vendor"]) == ("3.0", vendor.id)


def releases(exchange: Any, product_id: str) -> list[str]:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        return sorted(
            session.scalars(
                select(ProductRelease.version).where(ProductRelease.product_id == product_id)
            )
        )


def published_by_a_previous_release(exchange: Any, product_id: str, version: str) -> datetime:
    """What a replica of the previous release does publishing `version`, three days ago: it
    changes the product's row and records no release. When it did so."""
    published = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    with exchange.client.app.state.services.db.session() as session:
        session.execute(
            update(Product)
            .where(Product.id == product_id)
            .values(version=version, updated_at=published)
        )
    return published


def first_published(exchange: Any, product_id: str, version: str) -> datetime:
    with exchange.client.app.state.services.db.session() as session:
        [when] = session.scalars(
            select(ProductRelease.published_at).where(
                ProductRelease.product_id == product_id, ProductRelease.version == version
            )
        )
    return as_utc(when)


def test_a_version_a_replica_of_the_previous_release_published_counts_as_published(
    exchange: Any, parties: Any, make_ct: Any
) -> None:
    """During a rolling upgrade a replica of the previous release publishes 2.0: it changes the
    product's row and records no release. Evaluation takes the catalogue's own version as
    published all the same, and a replica of this release records 2.0 when the vendor
    publishes 3.0."""
    services = exchange.client.app.state.services
    published = published_by_a_previous_release(exchange, "product-a", "2.0")
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    assert job["product_version"] == "2.0"
    claim = exchange.claim(vendor, start=True)
    assert claim is not None
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "no brain in view"},
        headers=vendor.headers,
    )
    assert failed.status_code == 200, failed.text
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)
    rows = {
        (r.hospital_id, r.product_version): (r.in_catalogue, r.published_on)
        for r in clinical.evaluation(OPERATOR, by_version=True)
        if r.product_id == "product-a"
    }
    said = (True, published.date())
    assert rows == {("hospital-a", "2.0"): said, ("national", "2.0"): said}
    assert releases(exchange, "product-a") == ["1.0"]
    exchange.product(vendor, "product-a", version="3.0")  # on a replica of this release
    assert releases(exchange, "product-a") == ["1.0", "2.0", "3.0"]
    assert first_published(exchange, "product-a", "2.0") == published


def test_a_version_an_old_replica_published_keeps_its_day_when_published_again(
    exchange: Any, parties: Any
) -> None:
    """An old replica published 2.0 three days ago (no release recorded); a worker restarting
    publishes the same 2.0 through a replica of this release: 2.0 is dated by the product's
    last change, not by today."""
    published = published_by_a_previous_release(exchange, "product-a", "2.0")
    exchange.product(parties["vendor_a"], "product-a", version="2.0")
    assert first_published(exchange, "product-a", "2.0") == published


def test_a_new_version_and_the_current_one_published_at_once_are_both_answered(
    exchange: Any, parties: Any
) -> None:
    """A vendor's rollout: a new worker publishes the next version while an old one, restarting,
    publishes the current one again, whose release a replica of the previous release did not
    record. Each takes the product's row in turn (no deadlock on PostgreSQL), in every round."""
    services = exchange.client.app.state.services
    vendor = parties["vendor_b"]
    base = {"id": "product-b", "vendor": vendor.id, "name": "Product product-b",
            "clinical_area": "quantification"}  # fmt: skip
    current = "1.0"
    for round_ in range(1, 6):
        with services.db.session() as session:
            session.execute(
                delete(ProductRelease).where(
                    ProductRelease.product_id == "product-b", ProductRelease.version == current
                )
            )
        following = f"{round_ + 1}.0"
        answers = published_at_once(
            exchange, vendor, [{**base, "version": v} for v in (following, current)]
        )
        assert answers == [201, 201], round_
        assert current in releases(exchange, "product-b")
        current = exchange.client.get("/products/product-b", headers=vendor.headers).json()[
            "version"
        ]


def published_at_once(exchange: Any, vendor: Any, manifests: list[dict[str, Any]]) -> list[int]:
    """Publish every manifest at the same moment, one thread each; their answers' statuses,
    in the order given."""
    start = threading.Barrier(len(manifests))
    answers = [0] * len(manifests)

    def publish(n: int) -> None:
        start.wait()
        answers[n] = exchange.client.post(
            "/products", json=manifests[n], headers=vendor.headers
        ).status_code

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(len(manifests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers
