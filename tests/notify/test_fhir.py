"""FHIR R4: the DiagnosticReport and Observations validate, reference each other, and a FHIR
server (FastAPI + fhir.resources R4B on loopback) stores them once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from aifi.gateway.notify import (
    DeliveryFailed,
    FhirBuildError,
    FhirEndpoint,
    HttpRejected,
    ResultNotice,
    build_diagnostic_report,
    build_transaction,
    post_fhir,
)
from aifi.gateway.notify.codes import UCUM_URI
from aifi.gateway.notify.receivers import FhirReceiver
from aifi.results.summary import TriageFlag

from .conftest import (
    ORIGINAL_ATTRIBUTES,
    ORIGINAL_STUDY_UID,
    REASON,
    WHY,
    make_delayed,
    make_notice,
    make_summary,
    make_unavailable,
)

PATIENT_SYSTEM = "urn:oid:2.16.528.1.1007.3.3.1234"


def endpoint(base_url: str = "http://127.0.0.1:9/fhir", **overrides: Any) -> FhirEndpoint:
    settings: dict[str, Any] = {
        "base_url": base_url,
        "patient_identifier_system": PATIENT_SYSTEM,
        "retries": 2,
        "retry_backoff_seconds": 0.01,
        # Long: a late answer would have the bundle sent again (and answered 200, not 201).
        "timeout_seconds": 30,
    }
    return FhirEndpoint(**(settings | overrides))


def test_report_and_observations_are_valid_r4(positive: ResultNotice) -> None:
    report, observations = build_diagnostic_report(positive, endpoint())
    # a round trip through the R4B models: what we send parses as what we built
    again = DiagnosticReport.model_validate_json(report.model_dump_json(exclude_none=True))
    assert again.status == "preliminary"
    for observation in observations:
        Observation.model_validate_json(observation.model_dump_json(exclude_none=True))
    assert len(observations) == 3  # triage + two findings


def test_report_points_at_its_observations_in_the_bundle(positive: ResultNotice) -> None:
    bundle = build_transaction(positive, endpoint())
    assert bundle.type == "transaction"
    entries = bundle.entry or []
    report = entries[-1].resource
    assert isinstance(report, DiagnosticReport)
    observation_urls = [
        str(entry.fullUrl) for entry in entries if isinstance(entry.resource, Observation)
    ]
    assert [ref.reference for ref in report.result or []] == observation_urls
    assert all(url.startswith("urn:uuid:") for url in observation_urls)
    assert all(entry.request and entry.request.method == "POST" for entry in entries)


def test_bundle_is_the_same_for_a_resend(positive: ResultNotice) -> None:
    first = build_transaction(positive, endpoint())
    second = build_transaction(make_notice(make_summary()), endpoint())
    assert first.model_dump_json() == second.model_dump_json()


def test_subject_study_and_content(positive: ResultNotice) -> None:
    report, observations = build_diagnostic_report(positive, endpoint())
    assert report.subject is not None and report.subject.identifier is not None
    assert report.subject.identifier.system == PATIENT_SYSTEM
    assert report.subject.identifier.value == ORIGINAL_ATTRIBUTES["PatientID"]
    study = (report.imagingStudy or [])[0].identifier
    assert study is not None
    assert (study.system, study.value) == ("urn:dicom:uid", f"urn:oid:{ORIGINAL_STUDY_UID}")
    assert report.effectiveDateTime is not None and str(report.effectiveDateTime) == "2025-03-01"
    assert "AI triage POSITIVE (priority high)" in (report.conclusion or "")
    assert "not for clinical use" in (report.conclusion or "")
    codes = [c.coding[0].code for c in report.conclusionCode or [] if c.coding]
    assert codes == ["50960005", "12738006"]

    triage, hemorrhage, _tissue = observations
    assert triage.valueCodeableConcept is not None
    assert triage.valueCodeableConcept.coding is not None
    assert triage.valueCodeableConcept.coding[0].code == "POS"
    assert hemorrhage.code.coding is not None
    assert (hemorrhage.code.coding[0].system, hemorrhage.code.coding[0].code) == (
        "http://snomed.info/sct",
        "50960005",
    )
    assert hemorrhage.bodySite is not None and hemorrhage.bodySite.text == "Brain"
    quantities = {
        c.code.text: (c.valueQuantity.value, c.valueQuantity.code, c.valueQuantity.system)
        for c in hemorrhage.component or []
        if c.valueQuantity is not None
    }
    assert quantities == {
        "Volume": (12.5, "mL", UCUM_URI),
        "Midline shift": (4.25, "mm", UCUM_URI),
    }
    strings = {c.code.text: c.valueString for c in hemorrhage.component or [] if c.valueString}
    assert strings == {"Severity": "Severe"}
    assert [note.text for note in hemorrhage.note or []] == [
        "reference algorithm, not for clinical use"
    ]
    tracking = {i.value for i in hemorrhage.identifier or []}
    assert {"urn:oid:2.25.5551", "lesion 1"} <= tracking


def test_no_triage_observation_without_a_triage_flag() -> None:
    report, observations = build_diagnostic_report(make_notice(make_summary(TriageFlag.NONE)))
    assert len(observations) == 2
    assert "triage" not in (report.conclusion or "").lower()


def test_a_study_without_patient_id_is_refused() -> None:
    attributes = {k: v for k, v in ORIGINAL_ATTRIBUTES.items() if k != "PatientID"}
    with pytest.raises(FhirBuildError, match="DiagnosticReport.subject"):
        build_diagnostic_report(make_notice(make_summary(), attributes=attributes))


# against the FHIR server ----------------------------------------------------------------------


def test_the_server_validates_and_stores_linked_resources(
    fhir_receiver: FhirReceiver, positive: ResultNotice
) -> None:
    target = endpoint(fhir_receiver.base_url)
    receipt = post_fhir(build_transaction(positive, target), target)
    assert receipt.entry_statuses == ("201 Created",) * 4
    reports = fhir_receiver.resources("DiagnosticReport")
    observations = fhir_receiver.resources("Observation")
    assert len(reports) == 1 and len(observations) == 3
    stored_ids = {f"Observation/{o['id']}" for o in observations}
    assert {ref["reference"] for ref in reports[0]["result"]} == stored_ids
    # what the server stored is still valid R4 once its references are resolved
    DiagnosticReport.model_validate(reports[0])


def test_a_resend_is_not_stored_twice(fhir_receiver: FhirReceiver, positive: ResultNotice) -> None:
    target = endpoint(fhir_receiver.base_url)
    post_fhir(build_transaction(positive, target), target)
    again = post_fhir(build_transaction(positive, target), target)
    assert again.entry_statuses == ("200 OK",) * 4
    assert len(fhir_receiver.resources("DiagnosticReport")) == 1
    assert len(fhir_receiver.resources("Observation")) == 3


def test_the_server_refuses_a_dangling_reference(
    fhir_receiver: FhirReceiver, positive: ResultNotice
) -> None:
    """The receiver really checks references: drop an observation and the report dangles."""
    target = endpoint(fhir_receiver.base_url)
    bundle = build_transaction(positive, target)
    broken = Bundle.model_validate(
        {**bundle.model_dump(mode="json", exclude_none=True), "entry": [
            entry.model_dump(mode="json", exclude_none=True) for entry in (bundle.entry or [])[1:]
        ]}
    )  # fmt: skip
    with pytest.raises(HttpRejected, match="is not an entry of the Bundle") as caught:
        post_fhir(broken, target)
    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert fhir_receiver.resources("DiagnosticReport") == []


def test_a_busy_server_is_retried(fhir_receiver: FhirReceiver, positive: ResultNotice) -> None:
    fhir_receiver.fail_with = [503, 429]
    target = endpoint(fhir_receiver.base_url, retries=2)
    receipt = post_fhir(build_transaction(positive, target), target)
    assert receipt.status == 200
    assert fhir_receiver.fail_with == []
    assert len(fhir_receiver.resources("DiagnosticReport")) == 1


def test_a_server_that_stays_down_fails_after_the_retries(
    closed_port: int, positive: ResultNotice
) -> None:
    target = endpoint(f"http://127.0.0.1:{closed_port}/fhir", retries=1)
    with pytest.raises(DeliveryFailed, match="after 2 attempt") as caught:
        post_fhir(build_transaction(positive, target), target)
    assert caught.value.retryable


def test_the_bearer_token_is_read_from_its_file(tmp_path: Path, positive: ResultNotice) -> None:
    token_file = tmp_path / "fhir.token"
    token_file.write_text("s3cret-token\n")
    with FhirReceiver(bearer_token="s3cret-token") as receiver:
        without = endpoint(receiver.base_url)
        with pytest.raises(HttpRejected, match="401"):
            post_fhir(build_transaction(positive, without), without)
        target = endpoint(receiver.base_url, bearer_token_file=token_file)
        assert post_fhir(build_transaction(positive, target), target).status == 200


def test_an_oid_issuer_is_the_patient_identifier_system() -> None:
    attributes = {**ORIGINAL_ATTRIBUTES, "IssuerOfPatientID": "2.16.840.1.113883.2.4.6.3"}
    notice = make_notice(make_summary(), attributes=attributes)
    report, _ = build_diagnostic_report(notice, endpoint(patient_identifier_system=None))
    assert report.subject is not None and report.subject.identifier is not None
    assert report.subject.identifier.system == "urn:oid:2.16.840.1.113883.2.4.6.3"
    configured, _ = build_diagnostic_report(notice, endpoint())
    assert configured.subject is not None and configured.subject.identifier is not None
    assert configured.subject.identifier.system == PATIENT_SYSTEM


# a job that brings no result ------------------------------------------------------------------


def test_no_result_is_one_cancelled_report_in_a_valid_bundle(unavailable: ResultNotice) -> None:
    sent = build_transaction(unavailable, endpoint())
    # what goes on the wire parses back as a valid R4 transaction
    bundle = Bundle.model_validate_json(sent.model_dump_json(exclude_none=True))
    assert bundle.type == "transaction"
    (entry,) = bundle.entry or []
    report = entry.resource
    assert isinstance(report, DiagnosticReport)
    assert report.status == "cancelled"
    assert report.conclusion == f"No AI result: {REASON}"
    assert report.result is None and report.conclusionCode is None
    # A conditional update: the job's report says cancelled even if a result's was made.
    assert entry.request is not None and entry.request.method == "PUT"
    assert entry.request.url == "DiagnosticReport?identifier=urn:aifi:exchange-job|job-0001-report"


def test_no_result_keeps_the_report_identifier_subject_and_study(
    unavailable: ResultNotice, positive: ResultNotice
) -> None:
    """The same identifier as the result's report: the conditional update keeps one per job."""
    none, _ = build_diagnostic_report(unavailable, endpoint())
    result, _ = build_diagnostic_report(positive, endpoint())
    assert none.identifier is not None and result.identifier is not None
    assert [(i.system, i.value) for i in none.identifier] == [
        (i.system, i.value) for i in result.identifier
    ]
    assert none.subject is not None and none.subject.identifier is not None
    assert (none.subject.identifier.system, none.subject.identifier.value) == (
        PATIENT_SYSTEM,
        ORIGINAL_ATTRIBUTES["PatientID"],
    )
    kept = ("subject", "imagingStudy", "category", "code", "effectiveDateTime")
    said, would_have = (r.model_dump(mode="json", exclude_none=True) for r in (none, result))
    assert {key: said[key] for key in kept} == {key: would_have[key] for key in kept}
    study = (none.imagingStudy or [])[0].identifier
    assert study is not None and study.value == f"urn:oid:{ORIGINAL_STUDY_UID}"


def test_no_result_has_no_observations_not_even_triage(unavailable: ResultNotice) -> None:
    report, observations = build_diagnostic_report(unavailable, endpoint())
    assert observations == []
    assert "triage" not in (report.conclusion or "").lower()
    assert "not for clinical use" not in (report.conclusion or "")


def test_the_server_validates_and_stores_the_cancelled_report(
    fhir_receiver: FhirReceiver, unavailable: ResultNotice
) -> None:
    target = endpoint(fhir_receiver.base_url)
    receipt = post_fhir(build_transaction(unavailable, target), target)
    assert receipt.entry_statuses == ("201 Created",)
    (stored,) = fhir_receiver.resources("DiagnosticReport")
    assert (stored["status"], stored["conclusion"]) == ("cancelled", f"No AI result: {REASON}")
    assert "result" not in stored
    assert fhir_receiver.resources("Observation") == []
    again = post_fhir(build_transaction(make_unavailable(), target), target)
    assert again.entry_statuses == ("200 OK",)
    assert len(fhir_receiver.resources("DiagnosticReport")) == 1


# a STAT study's result late ------------------------------------------------------------------

REPORT_URL = "DiagnosticReport?identifier=urn:aifi:exchange-job|job-0001-report"
REPORT_CONDITION = "identifier=urn:aifi:exchange-job|job-0001-report"


def requests(bundle: Bundle) -> list[tuple[str, str, str | None]]:
    """(method, url, ifNoneExist) of each entry, the report's last."""
    return [
        (str(e.request.method), str(e.request.url), e.request.ifNoneExist)
        for e in bundle.entry or []
        if e.request is not None
    ]


def test_a_delay_is_one_registered_report_created_in_a_valid_bundle(
    delayed: ResultNotice,
) -> None:
    sent = build_transaction(delayed, endpoint())
    bundle = Bundle.model_validate_json(sent.model_dump_json(exclude_none=True))
    assert bundle.type == "transaction"
    (entry,) = bundle.entry or []
    report = entry.resource
    assert isinstance(report, DiagnosticReport)
    assert report.status == "registered"
    assert report.conclusion == f"AI result delayed: {WHY}"
    assert report.result is None and report.conclusionCode is None
    # A conditional create: where the job's report exists, a delay changes nothing.
    assert requests(bundle) == [("POST", "DiagnosticReport", REPORT_CONDITION)]


def test_a_delay_keeps_the_report_identifier_subject_and_study(
    delayed: ResultNotice, positive: ResultNotice
) -> None:
    """The report the result will replace: the same identifier, subject and study."""
    late, _ = build_diagnostic_report(delayed, endpoint())
    result, _ = build_diagnostic_report(positive, endpoint())
    kept = ("identifier", "subject", "imagingStudy", "category", "code", "effectiveDateTime")
    said, will = (r.model_dump(mode="json", exclude_none=True) for r in (late, result))
    assert {key: said[key] for key in kept} == {key: will[key] for key in kept}


def test_a_result_after_a_delay_puts_its_report_and_creates_its_observations(
    positive: ResultNotice,
) -> None:
    plain = build_transaction(positive, endpoint())
    follows = build_transaction(make_notice(make_summary(), after_delay=True), endpoint())
    observation = ("POST", "Observation")
    assert [r[:2] for r in requests(plain)] == [observation] * 3 + [("POST", "DiagnosticReport")]
    assert requests(plain)[-1][2] == REPORT_CONDITION
    assert [r[:2] for r in requests(follows)[:-1]] == [observation] * 3
    assert requests(follows)[:-1] == requests(plain)[:-1]  # the same conditional creates
    assert requests(follows)[-1] == ("PUT", REPORT_URL, None)
    # the same resources: only the report's request differs
    assert [e.resource for e in follows.entry or []] == [e.resource for e in plain.entry or []]


def test_no_result_after_a_delay_is_put_as_ever() -> None:
    bundle = build_transaction(make_unavailable(stat_study=True, after_delay=True), endpoint())
    assert requests(bundle) == [("PUT", REPORT_URL, None)]


def test_the_server_ends_with_one_preliminary_report_after_a_delay(
    fhir_receiver: FhirReceiver, delayed: ResultNotice
) -> None:
    target = endpoint(fhir_receiver.base_url)
    assert post_fhir(build_transaction(delayed, target), target).entry_statuses == ("201 Created",)
    (registered,) = fhir_receiver.resources("DiagnosticReport")
    assert (registered["status"], registered["conclusion"]) == (
        "registered",
        f"AI result delayed: {WHY}",
    )
    again = post_fhir(build_transaction(make_delayed(), target), target)  # a resend
    assert again.entry_statuses == ("200 OK",)

    follows = make_notice(make_summary(), after_delay=True)
    receipt = post_fhir(build_transaction(follows, target), target)
    assert receipt.entry_statuses == ("201 Created",) * 3 + ("200 OK",)
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert report["id"] == registered["id"]
    assert report["status"] == "preliminary"
    assert "AI triage POSITIVE" in report["conclusion"]
    observations = fhir_receiver.resources("Observation")
    assert len(observations) == 3
    assert {ref["reference"] for ref in report["result"]} == {
        f"Observation/{o['id']}" for o in observations
    }
    DiagnosticReport.model_validate(report)


def test_without_after_delay_the_registered_report_would_stay(
    fhir_receiver: FhirReceiver, delayed: ResultNotice, positive: ResultNotice
) -> None:
    """Why a result after a delay must say so: its conditional create finds the registered
    report and stores nothing in its place."""
    target = endpoint(fhir_receiver.base_url)
    post_fhir(build_transaction(delayed, target), target)
    post_fhir(build_transaction(positive, target), target)
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert report["status"] == "registered"


def test_the_server_ends_with_one_cancelled_report_after_a_delay(
    fhir_receiver: FhirReceiver, delayed: ResultNotice
) -> None:
    target = endpoint(fhir_receiver.base_url)
    post_fhir(build_transaction(delayed, target), target)
    none = make_unavailable(stat_study=True, after_delay=True)
    assert post_fhir(build_transaction(none, target), target).entry_statuses == ("200 OK",)
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert (report["status"], report["conclusion"]) == ("cancelled", f"No AI result: {REASON}")
    assert fhir_receiver.resources("Observation") == []


def test_a_delay_that_comes_after_the_result_does_not_undo_its_report(
    fhir_receiver: FhirReceiver,
) -> None:
    """Should a delay ever reach the server after the job's result (it is never told once
    the result came home), the preliminary report and its observations stand."""
    target = endpoint(fhir_receiver.base_url)
    post_fhir(build_transaction(make_notice(make_summary()), target), target)
    (before,) = fhir_receiver.resources("DiagnosticReport")
    assert before["status"] == "preliminary" and before["result"]
    post_fhir(build_transaction(make_delayed(), target), target)
    (after,) = fhir_receiver.resources("DiagnosticReport")
    assert after == before
