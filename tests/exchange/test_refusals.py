"""Every refusal the exchange makes: wrong keys, other tenants, unsubscribed products,
inputs that are not de-identified, results from a vendor that does not hold the job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import pytest

from scale.exchange_api import OPERATOR_KEY, SUMMARY, sr_for

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


class Claimed(NamedTuple):
    study: list[Path]
    job: dict[str, Any]
    claim: dict[str, Any]
    lease: dict[str, str]


#: A finding as a summary lists it, and a measurement that is not a number.
FINDING = {
    "finding": "Hemorrhage",
    "finding_code": "SCT:50960005",
    "tracking_id": "lesion 1",
    "tracking_uid": "2.25.1",
}
NAN_ML = {"value": float("nan"), "unit": "mL"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer aifi_wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
def test_wrong_or_missing_key_gets_401_and_nothing_else(
    exchange: Any, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/jobs"),
        ("GET", "/products"),
        ("POST", "/jobs/claim"),
        ("GET", "/audit"),
    ):
        response = exchange.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json() == {"detail": "unauthorised"}


def test_only_the_operator_registers_organisations(exchange: Any, parties: dict[str, Any]) -> None:
    body = {"id": "rogue", "name": "Rogue", "kind": "operator"}
    for org in ("hospital_a", "vendor_a"):
        response = exchange.client.post("/organisations", json=body, headers=parties[org].headers)
        assert response.status_code == 403


def test_a_vendor_cannot_register_a_product_for_another_vendor(
    exchange: Any, parties: dict[str, Any]
) -> None:
    manifest = {
        "id": "sneaky",
        "vendor": "vendor-b",
        "name": "x",
        "version": "1",
        "clinical_area": "triage",
    }
    response = exchange.client.post("/products", json=manifest, headers=parties["vendor_a"].headers)
    assert response.status_code == 403 and "vendor-a" in response.json()["detail"]


def test_a_job_for_an_unsubscribed_product_is_refused_with_the_reason(
    exchange: Any, parties: dict[str, Any]
) -> None:
    body = {"product_id": "product-b", "study_uid": "2.25.9", "idempotency_key": "x"}
    response = exchange.client.post("/jobs", json=body, headers=parties["hospital_a"].headers)
    assert response.status_code == 403
    assert (
        response.json()["detail"]
        == "hospital 'hospital-a' is not subscribed to product 'product-b'"
    )
    assert exchange.client.get("/jobs", headers=parties["hospital_a"].headers).json() == []


def test_tenants_are_walled(exchange: Any, parties: dict[str, Any], make_ct: Any) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = exchange.ready_job(hospital, "product-a", study)
    job_id = job["id"]
    uid = pydicom.dcmread(study[0]).SOPInstanceUID
    other_hospital, other_vendor = parties["hospital_b"], parties["vendor_b"]

    # Another hospital: the job does not exist for it.
    assert exchange.client.get(f"/jobs/{job_id}", headers=other_hospital.headers).status_code == 404
    assert (
        exchange.client.get(f"/jobs/{job_id}/inputs", headers=other_hospital.headers).status_code
        == 404
    )
    assert (
        exchange.client.get(
            f"/jobs/{job_id}/inputs/{uid}", headers=other_hospital.headers
        ).status_code
        == 404
    )
    assert (
        exchange.client.post(
            f"/jobs/{job_id}/cancel", json={}, headers=other_hospital.headers
        ).status_code
        == 404
    )
    assert exchange.client.get("/jobs", headers=other_hospital.headers).json() == []
    # Another vendor: cannot see, claim, or read it.
    assert exchange.claim(other_vendor) is None
    assert exchange.client.get(f"/jobs/{job_id}", headers=other_vendor.headers).status_code == 404
    assert (
        exchange.client.get(
            f"/jobs/{job_id}/inputs/{uid}", headers={"X-Lease-Token": "x", **other_vendor.headers}
        ).status_code
        == 404
    )
    assert exchange.client.get("/jobs", headers=other_vendor.headers).json() == []
    # The operator sees metadata, never pixels.
    assert (
        exchange.client.get(f"/jobs/{job_id}", headers=exchange.operator.headers).status_code == 200
    )
    assert (
        exchange.client.get(
            f"/jobs/{job_id}/inputs/{uid}", headers=exchange.operator.headers
        ).status_code
        == 403
    )
    # The job's own vendor reads inputs only with the lease.
    assert (
        exchange.client.get(f"/jobs/{job_id}/inputs/{uid}", headers=vendor.headers).status_code
        == 409
    )
    claim = exchange.claim(vendor)
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    assert exchange.client.get(f"/jobs/{job_id}/inputs/{uid}", headers=lease).status_code == 200
    # Audit: every refused access was recorded, with who tried and what.
    audit = exchange.client.get("/audit", headers=exchange.operator.headers).json()
    refused = {(e["organisation_id"], e["object_type"]) for e in audit if e["outcome"] == "refused"}
    assert {
        ("hospital-b", "job"), ("hospital-b", "input"), ("vendor-b", "input"),
        ("operator", "input"), ("vendor-a", "input"),
    } <= refused  # fmt: skip


def test_results_from_a_vendor_that_does_not_hold_the_job_get_409(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    path = f"/jobs/{job['id']}/results/sr.dcm"
    # Not claimed at all.
    assert (
        exchange.client.put(
            path, content=b"x", headers={"X-Lease-Token": "nope", **vendor.headers}
        ).status_code
        == 409
    )
    claim = exchange.claim(vendor)
    # Claimed, but a stale token.
    assert (
        exchange.client.put(
            path, content=b"x", headers={"X-Lease-Token": "stale", **vendor.headers}
        ).status_code
        == 409
    )
    # The right token, but the job already failed.
    exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "r"},
        headers=vendor.headers,
    )
    assert (
        exchange.client.put(
            path, content=b"x", headers={"X-Lease-Token": claim["lease_token"], **vendor.headers}
        ).status_code
        == 409
    )


def test_an_input_not_marked_deidentified_is_refused_and_loses_nothing(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    good = make_ct(slices=1)
    study_uid = pydicom.dcmread(good[0]).StudyInstanceUID
    bad = make_ct(slices=1, study_uid=study_uid, marked=False)
    job = exchange.job(hospital, "product-a", study_uid)
    assert exchange.upload(hospital, job["id"], good[0]).status_code == 201
    response = exchange.upload(hospital, job["id"], bad[0])
    bad_uid = pydicom.dcmread(bad[0]).SOPInstanceUID
    assert response.status_code == 422
    assert (
        bad_uid in response.json()["detail"]
        and "Patient Identity Removed" in response.json()["detail"]
    )
    assert (
        exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()["input_count"]
        == 1
    )


def test_an_input_with_an_unknown_deidentification_method_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital = parties["hospital_a"]
    study = make_ct(slices=1)
    ds = pydicom.dcmread(study[0])
    ds.DeidentificationMethod = "some other tool"
    ds.save_as(study[0])
    job = exchange.job(hospital, "product-a", ds.StudyInstanceUID)
    response = exchange.upload(hospital, job["id"], study[0])
    assert response.status_code == 422 and "De-identification Method" in response.json()["detail"]


def test_an_input_of_another_study_or_not_dicom_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    study = make_ct(slices=1)
    job = exchange.job(hospital, "product-a", "2.25.12345")
    uid = pydicom.dcmread(study[0]).SOPInstanceUID
    other = exchange.upload(hospital, job["id"], study[0])
    assert other.status_code == 422 and "not the job's study" in other.json()["detail"]
    junk = exchange.client.put(
        f"/jobs/{job['id']}/inputs/{uid}", content=b"not dicom at all", headers=hospital.headers
    )
    assert junk.status_code == 422 and "rule 'dicom-file'" in junk.json()["detail"]
    assert "not a DICOM file (Part 10 format" in junk.json()["detail"]
    whole = study[0].read_bytes()
    for cut in (300, len(whole) - 100):  # in the header; in the pixels, which parse cut short
        truncated = exchange.client.put(
            f"/jobs/{job['id']}/inputs/{uid}", content=whole[:cut], headers=hospital.headers
        )
        assert truncated.status_code == 422, (cut, truncated.text)
        assert "rule 'complete-file'" in truncated.json()["detail"], truncated.text
    assert exchange.client.get(f"/jobs/{job['id']}/inputs", headers=hospital.headers).json() == []


def claimed(exchange: Any, parties: dict[str, Any], make_ct: Any) -> Claimed:
    """Hospital A's one-instance study, its job claimed by vendor A, and the vendor's headers
    with the lease."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    return Claimed(study, job, claim, {"X-Lease-Token": claim["lease_token"], **vendor.headers})


def test_an_invalid_result_is_refused_with_rule_and_attribute(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    study, job, claim, lease = claimed(exchange, parties, make_ct)
    # An input image sent back is a valid DICOM file but names no algorithm.
    response = exchange.client.put(
        f"/jobs/{job['id']}/results/echo.dcm", content=study[0].read_bytes(), headers=lease
    )
    assert response.status_code == 422
    assert "rule" in response.json()["detail"]
    bad_json = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        content=b"{not json",
        headers={"Content-Type": "application/json", **lease},
    )
    assert bad_json.status_code == 422 and "summary-json" in bad_json.json()["detail"]
    wrong_shape = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        content=b'{"volume_ml": 12}',
        headers={"Content-Type": "application/json", **lease},
    )
    assert wrong_shape.status_code == 422
    assert "rule 'summary-json': product_id: Field required" in wrong_shape.json()["detail"]
    assert exchange.client.get(f"/jobs/{job['id']}/results", headers=lease).json() == []


@pytest.mark.parametrize(
    ("summary", "named"),
    [
        ({"triage": {"flag": "positive"}, "score": 0.9}, "product_id: Field required"),
        (
            {**SUMMARY, "findings": [{**FINDING, "measurements": {"volume": NAN_ML}}]},
            "findings.0.measurements.volume.value: Input should be a finite number",
        ),
    ],
)
def test_a_completion_with_a_summary_that_is_not_one_is_refused_and_the_job_stays_held(
    exchange: Any,
    parties: dict[str, Any],
    make_ct: Any,
    tmp_path: Path,
    summary: dict[str, Any],
    named: str,
) -> None:
    """The summary sent with the completion feeds the worklist flag and the evaluation as
    one uploaded as a result does, and is checked alike (a NaN also broke PostgreSQL)."""
    vendor = parties["vendor_a"]
    study, job, claim, lease = claimed(exchange, parties, make_ct)
    sr = sr_for(study, tmp_path / "sr")
    put = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm", content=sr.read_bytes(), headers=lease
    )
    assert put.status_code == 201, put.text
    complete = f"/jobs/{job['id']}/complete"
    refused = exchange.client.post(
        complete,  # as json.dumps writes it: NaN as a bare word, which Python reads back
        content=json.dumps({"lease_token": claim["lease_token"], "summary": summary}),
        headers={"Content-Type": "application/json", **vendor.headers},
    )
    assert refused.status_code == 422
    assert f"completion's summary: rule 'summary-json': {named}" in refused.json()["detail"]
    held = exchange.client.get(f"/jobs/{job['id']}", headers=vendor.headers).json()
    assert held["state"] in ("accepted", "in-progress") and held["summary"] is None
    done = exchange.client.post(
        complete,
        json={"lease_token": claim["lease_token"], "summary": SUMMARY},
        headers=vendor.headers,
    )
    assert done.status_code == 200 and done.json()["summary"] == SUMMARY


def test_a_summary_result_with_a_nan_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    _study, job, _claim, lease = claimed(exchange, parties, make_ct)
    body = {**SUMMARY, "findings": [{**FINDING, "measurements": {"volume": NAN_ML}}]}
    refused = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **lease},
    )
    assert refused.status_code == 422
    assert "Input should be a finite number" in refused.json()["detail"]
    assert exchange.client.get(f"/jobs/{job['id']}/results", headers=lease).json() == []


def test_a_result_with_a_content_type_too_long_to_keep_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """PostgreSQL answered a bare 500 (SQLite kept it whole): the limit is said up front."""
    study, job, _claim, lease = claimed(exchange, parties, make_ct)
    sr = sr_for(study, tmp_path / "sr").read_bytes()
    long_type = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1; " + "x" * 80
    refused = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        content=sr,
        headers={"Content-Type": long_type, **lease},
    )
    assert refused.status_code == 422
    assert (
        f"Content-Type is {len(long_type)} characters long; at most 100" in refused.json()["detail"]
    )
    accepted = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        content=sr,
        headers={"Content-Type": long_type[:100], **lease},
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["media_type"] == long_type[:100]


def refusals_by(exchange: Any, organisation_id: str) -> list[tuple[str, str, str, str]]:
    """The refused accesses of one organisation in the access log: (action, object type,
    object id, detail)."""
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR)
    return [
        (e["action"], e["object_type"], e["object_id"], e["detail"])
        for e in audit.json()
        if e["organisation_id"] == organisation_id and e["outcome"] == "refused"
    ]


def test_changes_refused_to_another_tenant_are_in_the_access_log(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """A hospital writing to another's job, or a vendor to another's: each gets the answer a
    job that does not exist gets, and the operator sees the probe."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    other_hospital, other_vendor = parties["hospital_b"], parties["vendor_b"]
    study = make_ct(slices=1)
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    job_id, uid = job["id"], pydicom.dcmread(study[0]).SOPInstanceUID
    sr = sr_for(study, tmp_path / "sr").read_bytes()
    lease = {"X-Lease-Token": claim["lease_token"]}
    # Who tries what, and what the access log must say of it: (action, object type, object
    # id, route).
    probes = [
        (other_hospital, "PUT", f"inputs/{uid}", {"content": study[0].read_bytes()},
         ("create", "input", f"{job_id}/{uid}", "PUT /jobs/{job_id}/inputs/{sop_instance_uid}")),
        (other_hospital, "POST", "cancel", {"json": {"reason": "mine now"}},
         ("update", "job", job_id, "POST /jobs/{job_id}/cancel")),
        (other_vendor, "PUT", "results/sr.dcm", {"content": sr, "headers": lease},
         ("create", "result", f"{job_id}/sr.dcm", "PUT /jobs/{job_id}/results/{name}")),
        (other_vendor, "POST", "heartbeat", {"json": {"lease_token": "x"}},
         ("update", "job", job_id, "POST /jobs/{job_id}/heartbeat")),
    ]  # fmt: skip
    for org, method, path, kwargs, _logged in probes:
        headers = {**kwargs.pop("headers", {}), **org.headers}
        answer = exchange.client.request(
            method, f"/jobs/{job_id}/{path}", headers=headers, **kwargs
        )
        assert answer.status_code == 404, (path, answer.text)
    for org in (other_hospital, other_vendor):
        assert refusals_by(exchange, org.id) == [
            (action, kind, object_id, f"{route}: no job {job_id!r}")
            for by, _method, _path, _kwargs, (action, kind, object_id, route) in probes
            if by is org
        ]
    # The job is as it was.
    held = exchange.client.get(f"/jobs/{job_id}", headers=vendor.headers).json()
    assert held["state"] == "accepted"


def test_a_refusal_a_service_logs_itself_is_logged_once(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    study, job, _claim, lease = claimed(exchange, parties, make_ct)
    echo = exchange.client.put(  # an input sent back names no algorithm
        f"/jobs/{job['id']}/results/echo.dcm", content=study[0].read_bytes(), headers=lease
    )
    assert echo.status_code == 422
    [(action, kind, object_id, detail)] = refusals_by(exchange, parties["vendor_a"].id)
    assert (action, kind, object_id) == ("create", "result", f"{job['id']}/echo.dcm")
    assert detail == echo.json()["detail"]


def test_asking_for_an_input_that_is_not_there_is_a_404_and_audited(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    hospital = parties["hospital_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    missing = exchange.client.get(f"/jobs/{job['id']}/inputs/2.25.404", headers=hospital.headers)
    assert missing.status_code == 404 and "has no input 2.25.404" in missing.json()["detail"]
    audit = exchange.client.get(
        "/audit", params={"limit": 5000}, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    ).json()
    refused = [
        e for e in audit if e["object_id"] == f"{job['id']}/2.25.404" and e["action"] == "read"
    ]
    assert [e["outcome"] for e in refused] == ["refused"]


def test_the_operator_sees_a_completed_job_without_its_findings(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """The job's summary is the product's findings: a result. The operator, who never reads
    results (`/results/summary.json` answers 403), must not read it on the job either."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job, claim, made = exchange.worked_on(hospital, vendor, make_ct(slices=1), tmp_path / "out")
    findings = made.summary
    assert findings["findings"]
    completed = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        params={"complete": "true"},
        content=json.dumps(findings).encode(),
        headers={"Content-Type": "application/json", "X-Lease-Token": claim["lease_token"],
                 **vendor.headers},
    )  # fmt: skip
    assert completed.status_code == 201, completed.text
    operator = exchange.operator.headers
    assert exchange.client.get(
        f"/jobs/{job['id']}/results/summary.json", headers=operator
    ).status_code == 403  # fmt: skip
    seen = exchange.client.get(f"/jobs/{job['id']}", headers=operator).json()
    listed = exchange.client.get("/jobs", headers=operator).json()
    assert seen["state"] == "completed" and seen["summary"] is None
    assert [(j["id"], j["summary"]) for j in listed] == [(job["id"], None)]
    own = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert own["summary"] == findings  # the hospital's own result


def test_a_vendor_sees_who_subscribes_to_its_product_not_their_routing_rules(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """A hospital's routing rules name its modalities and what it sends: its own business
    (and its DPIA's), as the record of processing is, not the vendor's."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    rules = [{"modalities": ["CT"], "calling_ae_titles": ["CT_ROOM_3"]}]
    reported = exchange.client.put(
        "/subscriptions/product-a/routes", json={"routes": rules}, headers=hospital.headers
    )
    assert reported.status_code == 200, reported.text
    own = exchange.client.get("/subscriptions", headers=hospital.headers).json()
    assert [s["routes"] for s in own if s["product_id"] == "product-a"] == [rules]
    theirs = exchange.client.get("/subscriptions", headers=vendor.headers).json()
    assert [s["hospital_id"] for s in theirs if s["product_id"] == "product-a"] == ["hospital-a"]
    assert all(s["routes"] is None for s in theirs)


def test_a_result_name_ending_in_a_newline_is_refused(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """Names are matched whole: `$` took `a.dcm` followed by a newline, which the gateway,
    keeping names as file names, then refused with the whole job's results."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job, claim, made = exchange.worked_on(hospital, vendor, make_ct(slices=1), tmp_path / "out")
    refused = exchange.client.put(
        f"/jobs/{job['id']}/results/a.dcm%0A",
        content=made.files[0].path.read_bytes(),
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert refused.status_code == 422, refused.text
