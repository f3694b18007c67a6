"""The clinical pillar through the exchange's API: admission gates subscriptions and jobs,
feedback reaches the metrics, hospitals rank clinical areas, the audit log exports as FHIR."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from aifi.dicom.deid import Deidentifier, PseudonymKey
from aifi.exchange.audit import Actor
from aifi.governance.service import ClinicalService
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import VendorClient, Worker
from support.pillar import Pillar, complete_dossier, kit_report, tissue_manifest

PRODUCT = tissue_volume.PRODUCT_ID


def admit(pillar: Pillar, tmp_path: Path, *, until: str = "admit") -> None:
    """The whole admission path: register, dossier, kit report, submit, review, admit (or up
    to the action `until`)."""
    manifest = tissue_manifest()
    with pillar.api("aifi-reference") as vendor, pillar.api("operator") as operator:
        assert vendor.post("/products", json=manifest).json()["status"] == "draft"
        vendor.put(
            f"/products/{PRODUCT}/dossier", json=complete_dossier(manifest)
        ).raise_for_status()
        report = kit_report(tmp_path / "kit")
        vendor.put(f"/products/{PRODUCT}/conformance-report", json=report).raise_for_status()
        assert vendor.get(f"/products/{PRODUCT}/dossier").json()["gaps"] == []
        for client, action in ((vendor, "submit"), (operator, "start-review"), (operator, "admit")):
            response = client.post(f"/products/{PRODUCT}/admission", json={"action": action})
            assert response.status_code == 200, response.text
            if action == until:
                break
    assert until != "admit" or response.json()["state"] == "admitted"


def test_a_version_published_while_the_operator_admits_is_not_admitted_unreviewed(
    pillar: Pillar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator admits 1.0.0, checking its dossier; the vendor publishes 1.1.0 just then.
    The admission was of 1.0.0: it is refused (409, on record), and 1.1.0 stays under
    review instead of being admitted without one."""
    admit(pillar, tmp_path, until="start-review")
    newer = {**tissue_manifest(), "version": "1.1.0"}
    published: list[int] = []
    checked = ClinicalService.dossier

    def published_meanwhile(self: ClinicalService, actor: Actor, product_id: str) -> Any:
        answer = checked(self, actor, product_id)  # the operator's check of 1.0.0's dossier
        if actor.role == "operator" and not published:
            with pillar.api("aifi-reference") as vendor:
                published.append(vendor.post("/products", json=newer).status_code)
        return answer

    monkeypatch.setattr(ClinicalService, "dossier", published_meanwhile)
    with pillar.api("operator") as operator:
        refused = operator.post(f"/products/{PRODUCT}/admission", json={"action": "admit"})
        product = operator.get(f"/products/{PRODUCT}").json()
        history = operator.get(f"/products/{PRODUCT}/admission").json()
        audit = operator.get("/audit", params={"limit": 5000}).json()
    assert published == [201]
    assert refused.status_code == 409, refused.text
    assert "changed meanwhile (version 1.1.0, under-review" in refused.json()["detail"]
    assert (product["version"], product["status"]) == ("1.1.0", "under-review")
    assert [h["to"] for h in history] == ["submitted", "under-review"]
    moves = [e for e in audit if (e["object_type"], e["action"]) == ("admission", "update")]
    assert (moves[-1]["object_id"], moves[-1]["outcome"]) == (PRODUCT, "refused")


def submit_job(pillar: Pillar, folder: Path, hospital: str = "hospital-a") -> str:
    write_study("ct-head", folder / "raw", seed=5, size="small")
    engine = Deidentifier(PseudonymKey(b"h" * 32))
    files = []
    for path in sorted((folder / "raw").rglob("*.dcm")):
        target = folder / "pseudo" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        engine.deidentify_file(path, target)
        files.append(target)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with pillar.api(hospital) as api:
        job = api.post(
            "/jobs", json={"product_id": PRODUCT, "study_uid": study, "idempotency_key": study}
        )
        assert job.status_code == 201, job.text
        job_id = str(job.json()["id"])
        for path in files:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            api.put(f"/jobs/{job_id}/inputs/{uid}", content=path.read_bytes()).raise_for_status()
        api.post(f"/jobs/{job_id}/ready", json={"instances": len(files)}).raise_for_status()
    return job_id


def test_only_an_admitted_product_takes_subscriptions_and_jobs(
    pillar: Pillar, tmp_path: Path
) -> None:
    manifest = tissue_manifest()
    with pillar.api("aifi-reference") as vendor, pillar.api("hospital-a") as hospital:
        vendor.post("/products", json=manifest).raise_for_status()
        refused = hospital.post("/subscriptions", json={"product_id": PRODUCT})
        assert refused.status_code == 403 and "draft" in refused.json()["detail"]
        # Submitting an incomplete dossier names what is missing.
        incomplete = vendor.post(f"/products/{PRODUCT}/admission", json={"action": "submit"})
        assert incomplete.status_code == 422 and "dossier-complete" in incomplete.json()["detail"]
        # A hospital may not admit; another vendor does not see the product's dossier.
        assert (
            hospital.post(f"/products/{PRODUCT}/admission", json={"action": "admit"}).status_code
            == 403
        )
    with pillar.api("other-vendor") as other:
        assert other.get(f"/products/{PRODUCT}/dossier").status_code == 404
    with pillar.api("operator") as operator:  # the refused admission is on record, once
        audit = operator.get("/audit", params={"limit": 5000}).json()
        refusals = [
            (e["action"], e["object_type"], e["object_id"])
            for e in audit
            if e["organisation_id"] == "hospital-a" and e["outcome"] == "refused"
        ]
        assert refusals.count(("update", "admission", PRODUCT)) == 1, refusals
        assert ("update", "product", PRODUCT) not in refusals, refusals
    admit(pillar, tmp_path)
    with pillar.api("hospital-a") as hospital:
        assert hospital.post("/subscriptions", json={"product_id": PRODUCT}).status_code == 201
    job_id = submit_job(pillar, tmp_path / "s1")
    with pillar.api("operator") as operator, pillar.api("aifi-reference") as vendor:
        history = vendor.get(f"/products/{PRODUCT}/admission").json()
        assert [h["to"] for h in history] == ["submitted", "under-review", "admitted"]
        # Suspension stops new jobs at once: not claimed, not created.
        operator.post(
            f"/products/{PRODUCT}/admission", json={"action": "suspend"}
        ).raise_for_status()
        claim = vendor.post("/jobs/claim", json={})
        assert claim.status_code == 204
    with pillar.api("hospital-a") as hospital:
        again = hospital.post(
            "/jobs", json={"product_id": PRODUCT, "study_uid": "2.25.7", "idempotency_key": "x"}
        )
        assert again.status_code == 403 and "suspended" in again.json()["detail"]
        assert hospital.get(f"/jobs/{job_id}").json()["state"] == "requested"
    # A new version re-opens review once reinstated.
    with pillar.api("operator") as operator, pillar.api("aifi-reference") as vendor:
        operator.post(
            f"/products/{PRODUCT}/admission", json={"action": "reinstate"}
        ).raise_for_status()
        assert vendor.get(f"/products/{PRODUCT}").json()["status"] == "admitted"
        vendor.post("/products", json={**manifest, "version": "1.1.0"}).raise_for_status()
        assert vendor.get(f"/products/{PRODUCT}").json()["status"] == "under-review"


def test_feedback_reaches_the_evaluation(pillar: Pillar, tmp_path: Path) -> None:
    admit(pillar, tmp_path)
    with pillar.api("hospital-a") as hospital:
        hospital.post("/subscriptions", json={"product_id": PRODUCT}).raise_for_status()
    job_id = submit_job(pillar, tmp_path / "s1")
    client = VendorClient(pillar.exchange.url, pillar.keys["aifi-reference"])
    assert Worker(client, tissue_volume.run, workdir=tmp_path).run_once(wait_seconds=10) == job_id
    client.close()
    with pillar.api("hospital-a") as hospital:
        leaky = hospital.post(
            f"/jobs/{job_id}/feedback",
            json={"agreement": "disagree", "correction": "patient 123456789 seen 12-03-1961"},
        )
        assert leaky.status_code == 422 and "no-identifiers-in-feedback" in leaky.json()["detail"]
        given = hospital.post(
            f"/jobs/{job_id}/feedback", json={"agreement": "partly", "correction": "misses a lobe"}
        )
        assert given.status_code == 201, given.text
        rows = hospital.get("/evaluation").json()
        per_version = hospital.get("/evaluation", params={"by_version": "true"}).json()
        weekly = hospital.get("/evaluation/drift", params={"granularity": "week"})
        daily = hospital.get("/evaluation/drift", params={"granularity": "day"})
    assert weekly.status_code == 200, weekly.text
    # Periods are months or ISO weeks; another is refused with the ones there are.
    assert daily.status_code == 422
    assert "'month' or 'week'" in daily.json()["detail"][0]["msg"]
    mine = next(r for r in rows if r["hospital_id"] == "hospital-a" and r["product_id"] == PRODUCT)
    assert mine["volume"] == 1
    assert mine["feedback"] == 1
    assert (mine["partly"]["numerator"], mine["agree"]["numerator"]) == (1, 0)
    # Per version: the one version that ran it, its hospital's row and the national one.
    assert [(r["hospital_id"], r["product_version"], r["feedback"]) for r in per_version] == [
        ("hospital-a", tissue_volume.VERSION, 1), ("national", tissue_volume.VERSION, 1),
    ]  # fmt: skip
    # The vendor published that version in the catalogue as the test began (a run may pass
    # midnight); over all versions, no word.
    [(in_catalogue, published_on)] = {(r["in_catalogue"], r["published_on"]) for r in per_version}
    today = datetime.now(UTC).date()
    assert in_catalogue is True
    assert published_on in (today.isoformat(), (today - timedelta(days=1)).isoformat())
    assert all(r["in_catalogue"] is r["published_on"] is None for r in rows)
    with pillar.api("hospital-b") as other:
        assert (
            other.post(f"/jobs/{job_id}/feedback", json={"agreement": "agree"}).status_code == 404
        )
        for params in ({}, {"by_version": "true"}):
            seen = other.get("/evaluation", params=params).json()
            assert seen and all(r["hospital_id"] != "hospital-a" for r in seen)


@pytest.mark.parametrize("report", ["/metering", "/evaluation", "/evaluation/drift"])
def test_a_report_names_what_is_wrong_with_the_months_asked_for(
    pillar: Pillar, report: str
) -> None:
    """Months backwards or not written YYYY-MM are refused (422) with the reason, not answered
    with an empty report that looks like no jobs."""
    operator = pillar.api("operator")
    backwards = operator.get(report, params={"since": "2026-05", "until": "2026-03"})
    assert backwards.status_code == 422
    assert backwards.json()["detail"] == "since (2026-05) is after until (2026-03)"
    for params in ({"since": "2026-13"}, {"until": "26-01"}, {"since": "2026-1"}):
        malformed = operator.get(report, params=params)
        assert malformed.status_code == 422, params
        [error] = malformed.json()["detail"]
        assert error["loc"] == ["query", *params], error
    one_month = operator.get(report, params={"since": "2026-03", "until": "2026-03"})
    assert one_month.status_code == 200, one_month.text
    operator.close()


def test_hospitals_rank_clinical_areas(pillar: Pillar) -> None:
    scores = {
        "hospital-a": [("fracture detection", 5, 4, 3, 4), ("bone age", 2, 3, 2, 5)],
        "hospital-b": [("fracture detection", 4, 5, 4, 3), ("stroke triage", 3, 5, 5, 2)],
    }
    for hospital, rows in scores.items():
        with pillar.api(hospital) as api:
            for area, volume, benefit, urgency, readiness in rows:
                body = {
                    "hospital_id": hospital, "area": area, "volume": volume, "benefit": benefit,
                    "urgency": urgency, "readiness": readiness,
                }  # fmt: skip
                assert api.put("/priorities/scores", json=body).status_code == 204
    with pillar.api("hospital-a") as api:
        forged = {**body, "hospital_id": "hospital-b"}
        assert api.put("/priorities/scores", json=forged).status_code == 403
    with pillar.api("operator") as operator:
        ranked = operator.get("/priorities").json()["areas"]
    assert ranked[0]["area"] == "fracture detection" and ranked[0]["hospitals"] == 2
    assert {a["area"] for a in ranked} == {"fracture detection", "bone age", "stroke triage"}


def test_the_audit_log_exports_as_fhir_audit_events(pillar: Pillar) -> None:
    with pillar.api("hospital-b") as hospital:
        hospital.get("/jobs/does-not-exist")  # a refused read, audited
    with pillar.api("operator") as operator:
        response = operator.get("/audit/fhir")
        assert response.status_code == 200
        bundle = Bundle.model_validate(json.loads(response.text))
        too_many = operator.get("/audit/fhir", params={"limit": 10**9})
        assert too_many.status_code == 422, "a page is at most 5,000 entries"
    events = [entry.resource for entry in bundle.entry or []]
    assert events and all(e.__resource_type__ == "AuditEvent" for e in events)
    refused = [e for e in events if e.outcome == "4"]
    assert any(e.agent[0].who.identifier.value == "hospital-b" for e in refused)
    with pillar.api("hospital-a") as hospital:
        assert hospital.get("/audit/fhir").status_code == 403
