"""The tenant walls around what is not a job: every refused read on record, the web pages'
refusals too; the catalogue's products not yet admitted kept to their vendor; the uptake
denominator only from a product's own hospitals. On the embedded backend: these are the
routes' rules, the same on every database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from aifi.exchange.app import create_app
from aifi.exchange.db import Database
from aifi.exchange.models import Product
from aifi.exchange.settings import ExchangeSettings
from aifi.web import mount
from scale.exchange_api import OPERATOR_KEY, Exchange, Org, backend_settings

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
PASSWORD = "correct horse battery"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def exchange(settings: ExchangeSettings) -> Iterator[Exchange]:
    """The exchange as `aifi exchange` serves it: with the web pages and clinical API."""
    with TestClient(create_app(settings, extensions=[mount])) as client:
        yield Exchange(client)


def entries(exchange: Exchange) -> list[dict[str, Any]]:
    answer = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def refusals_of(exchange: Exchange, organisation: str) -> list[dict[str, Any]]:
    return [
        e for e in entries(exchange)
        if e["organisation_id"] == organisation and e["outcome"] == "refused"
    ]  # fmt: skip


def completed_job(exchange: Exchange, parties: dict[str, Org], make_ct: Any, tmp: Path) -> str:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job, claim, made = exchange.worked_on(hospital, vendor, make_ct(slices=1), tmp / "out")
    done = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        params={"complete": "true"},
        content=json.dumps(made.summary).encode(),
        headers={"Content-Type": "application/json", "X-Lease-Token": claim["lease_token"],
                 **vendor.headers},
    )  # fmt: skip
    assert done.status_code == 201, done.text
    return str(job["id"])


def logged_in(exchange: Exchange, organisation: str, username: str) -> TestClient:
    """A person of `organisation` logged in to the pages, in a browser of their own."""
    made = exchange.client.post(
        "/users",
        json={"organisation_id": organisation, "username": username, "display_name": username,
              "role": "radiologist", "password": PASSWORD},
        headers=OPERATOR,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    browser = TestClient(exchange.client.app)
    answer = browser.post(
        "/ui/login", data={"username": username, "password": PASSWORD}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return browser


#: (who, path, query, status, route as the entry names it): reads refused by a role or a
#: query outside the audited read of a job.
REFUSED_READS = [
    ("hospital_b", "/audit", {}, 403, "/audit"),
    ("hospital_b", "/audit/verify", {}, 403, "/audit/verify"),
    ("vendor_b", "/audit/search", {"patient": "PTEST"}, 403, "/audit/search"),
    ("vendor_b", "/audit/fhir/AuditEvent", {"patient": "PTEST"}, 403, "/audit/fhir/AuditEvent"),
    ("vendor_b", "/jobs", {"with_results": "true"}, 403, "/jobs"),
    ("vendor_b", "/jobs", {"idempotency_key": "guess"}, 403, "/jobs"),
    ("vendor_b", "/products/product-a/dossier", {}, 404, "/products/{product_id}/dossier"),
    ("vendor_b", "/products/product-a/admission", {}, 404, "/products/{product_id}/admission"),
    (
        "vendor_b", "/products/product-a/record-of-processing", {}, 403,
        "/products/{product_id}/record-of-processing",
    ),
    (
        "hospital_b", "/products/product-a/record-of-processing", {"hospital": "hospital-a"}, 404,
        "/products/{product_id}/record-of-processing",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "path", "query", "status", "route"),
    REFUSED_READS,
    ids=[f"{w}{p}{'?' + '&'.join(q) if q else ''}" for w, p, q, _, _ in REFUSED_READS],
)
def test_a_read_refused_by_its_role_or_query_is_on_record_once(
    exchange: Exchange,
    parties: dict[str, Org],
    who: str,
    path: str,
    query: dict[str, str],
    status: int,
    route: str,
) -> None:
    """docs/api.md: every refusal of a request made with an organisation's key is logged,
    reads and changes alike: probing the log, another vendor's dossier or another hospital's
    record of processing leaves a trace naming the route and the answer."""
    caller = parties[who]
    answer = exchange.client.get(path, params=query, headers=caller.headers)
    assert answer.status_code == status, answer.text
    [entry] = refusals_of(exchange, caller.id)
    assert (entry["action"], entry["role"]) == ("read", who.split("_")[0])
    assert entry["detail"] == f"GET {route}: {answer.json()['detail']}"


def test_a_read_the_audited_read_refuses_is_on_record_once(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> None:
    """Refused inside the job's audited read, which stores its own refusal: not twice."""
    job = exchange.ready_job(parties["hospital_a"], "product-a", make_ct(slices=1))
    other = parties["hospital_b"]
    assert exchange.client.get(f"/jobs/{job['id']}", headers=other.headers).status_code == 404
    assert [e["object_id"] for e in refusals_of(exchange, other.id)] == [job["id"]]


def test_a_page_refusing_someone_logged_in_is_on_record_once(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any, tmp_path: Path
) -> None:
    """Another hospital's radiologist writing feedback on the job through the pages, and the
    operator asking a page for its pixels, are refused on record as the API's probes are;
    a refusal the service stored already (an admission the person's role may not make) is
    not stored a second time by the page."""
    job_id = completed_job(exchange, parties, make_ct, tmp_path)
    other = parties["hospital_b"]
    browser = logged_in(exchange, other.id, "bob")
    web = browser.post(
        f"/ui/jobs/{job_id}/feedback", data={"agreement": "disagree"}, follow_redirects=False
    )
    assert web.status_code == 404
    [feedback] = refusals_of(exchange, other.id)
    assert (feedback["action"], feedback["object_type"], feedback["object_id"]) == (
        "update", "job", job_id,
    )  # fmt: skip
    # Refused and stored by the service (the admission rules), and passed on by the page.
    moved = browser.post(
        "/ui/products/product-a/admission", data={"action": "admit"}, follow_redirects=False
    )
    assert moved.status_code == 403, moved.text
    assert [(e["action"], e["object_type"]) for e in refusals_of(exchange, other.id)] == [
        ("update", "job"), ("update", "admission"),
    ]  # fmt: skip
    operator = logged_in(exchange, "operator", "olivia")
    assert operator.get(f"/ui/jobs/{job_id}/key-image.png").status_code == 403
    [pixels] = refusals_of(exchange, "operator")
    assert (pixels["action"], pixels["object_type"], pixels["object_id"]) == (
        "read", "job", job_id,
    )  # fmt: skip
    assert pixels["detail"] == (
        "GET /ui/jobs/{job_id}/key-image.png: key images are for the hospital that sent the study"
    )


def test_reading_admission_and_feedback_is_on_record(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any, tmp_path: Path
) -> None:
    """docs/clinical-pillar.md: every read of feedback and admission is written. The job's
    page reads its feedback (once there is some) with the job."""
    vendor = parties["vendor_a"]
    history = exchange.client.get("/products/product-a/admission", headers=vendor.headers)
    assert history.status_code == 200, history.text
    [admission] = [e for e in entries(exchange) if e["object_type"] == "admission"]
    assert (admission["organisation_id"], admission["action"], admission["object_id"]) == (
        vendor.id, "read", "product-a",
    )  # fmt: skip
    job_id = completed_job(exchange, parties, make_ct, tmp_path)
    browser = logged_in(exchange, "hospital-a", "rita")
    assert browser.get(f"/ui/jobs/{job_id}").status_code == 200
    assert not [e for e in entries(exchange) if e["object_type"] == "feedback"]  # none yet
    given = browser.post(
        f"/ui/jobs/{job_id}/feedback", data={"agreement": "agree"}, follow_redirects=False
    )
    assert given.status_code == 303, given.text
    assert browser.get(f"/ui/jobs/{job_id}").status_code == 200
    feedback = [e for e in entries(exchange) if e["object_type"] == "feedback"]
    assert [(e["action"], e["object_id"]) for e in feedback] == [
        ("create", job_id), ("read", job_id),
    ]  # fmt: skip
    assert feedback[1]["patient_pseudonym"] == feedback[0]["patient_pseudonym"] != ""


def national_row(exchange: Exchange, reader: Org, product: str) -> dict[str, Any]:
    rows = exchange.client.get("/evaluation", headers=reader.headers).json()
    [row] = [r for r in rows if r["product_id"] == product and r["hospital_id"] == "national"]
    return dict(row)


def test_only_a_products_own_hospitals_count_its_eligible_studies(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any, tmp_path: Path
) -> None:
    """The national uptake a vendor is judged on is routed ÷ eligible over its hospitals. A
    hospital that never subscribed to the product (its gateway's route to it misconfigured,
    or a hospital that means harm) cannot move it, nor count for a product that does not
    exist; a hospital that ended its subscription still reports the months it had one."""
    completed_job(exchange, parties, make_ct, tmp_path)
    month = datetime.now(UTC).strftime("%Y-%m")
    hospital_a, hospital_b = parties["hospital_a"], parties["hospital_b"]

    def put(hospital: Org, product: str, studies: int) -> Any:
        body = {"product_id": product, "month": month, "studies": studies}
        return exchange.client.put("/eligible", json=body, headers=hospital.headers)

    assert put(hospital_a, "product-a", 4).status_code == 204
    before = national_row(exchange, parties["vendor_a"], "product-a")
    assert (before["eligible"], before["uptake"]["numerator"]) == (4, 1)
    forged, ghost = put(hospital_b, "product-a", 1_000_000), put(hospital_b, "no-such", 1)
    assert (forged.status_code, ghost.status_code) == (403, 403)
    assert forged.json()["detail"] == (
        "hospital 'hospital-b' has never subscribed to 'product-a': eligible studies are "
        "counted for its products only"
    )
    assert national_row(exchange, parties["vendor_a"], "product-a") == before
    assert [e["object_id"] for e in refusals_of(exchange, hospital_b.id)] == ["", ""]
    ended = exchange.client.delete("/subscriptions/product-a", headers=hospital_a.headers)
    assert ended.status_code == 204, ended.text
    assert put(hospital_a, "product-a", 5).status_code == 204


def test_a_product_never_admitted_is_its_vendors_and_the_operators(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A draft (an unreleased idea) or one in its first review is shown to its vendor and the
    operator only, as its dossier is: another vendor or a hospital is answered as if it did
    not exist, on record. Once admitted, everyone reads it in the catalogue; back under review
    for a new version, hospitals subscribed to it still read it (their gateways route by its
    manifest)."""
    chosen = backend_settings("sqlite", tmp_path, request.config, admit_on_register=False)
    try:
        with TestClient(create_app(chosen.settings, extensions=[mount])) as client:
            exchange = Exchange(client)
            owner, other = exchange.org("vendor-a", "vendor"), exchange.org("vendor-b", "vendor")
            subscribed = exchange.org("hospital-a", "hospital")
            stranger = exchange.org("hospital-b", "hospital")
            made = exchange.product(owner, "secret-draft", intended_use="an unreleased idea")
            assert made["status"] == "draft"

            def seen(reader: Org | None) -> tuple[int, bool]:
                headers = reader.headers if reader is not None else OPERATOR
                one = client.get("/products/secret-draft", headers=headers)
                listed = client.get("/products", headers=headers).json()
                return one.status_code, any(p["id"] == "secret-draft" for p in listed)

            assert [seen(r) for r in (owner, None, other, subscribed)] == [
                (200, True), (200, True), (404, False), (404, False),
            ]  # fmt: skip
            assert client.get("/products/secret-draft", headers=other.headers).json() == {
                "detail": "no product 'secret-draft'"
            }
            refused = [e for e in refusals_of(exchange, other.id) if e["action"] == "read"]
            assert [e["object_id"] for e in refused] == ["secret-draft"] * 2

            database = Database(chosen.settings.resolved_database_url())
            try:

                def status(value: str) -> None:
                    with database.session() as session:
                        session.execute(
                            update(Product).where(Product.id == "secret-draft").values(status=value)
                        )

                status("admitted")
                assert [seen(r) for r in (other, subscribed, stranger)] == [(200, True)] * 3
                exchange.subscribe(subscribed, "secret-draft")
                status("under-review")  # a new version, in review
                assert [seen(r) for r in (owner, subscribed, other, stranger)] == [
                    (200, True), (200, True), (404, False), (404, False),
                ]  # fmt: skip
            finally:
                database.dispose()
    finally:
        chosen.close()
