"""FHIR R4: one result as a DiagnosticReport with its Observations, posted as a transaction.

Resources are built with fhir.resources' R4B models (its default package is R5; R4B is the
R4-compatible release our hospitals' servers speak), so each one is validated by pydantic
when it is made. The report and its observations travel in one transaction Bundle, so the
server stores all or none; each entry is a conditional create keyed by the exchange job id
(``ifNoneExist``), so a resend after a lost answer does not store the report twice.

Mapping (after the TID 1500 -> FHIR imaging-measurement pattern):

- DiagnosticReport: category RAD, code LOINC 18748-4 + the product, status *preliminary* (an
  algorithm produced it and no radiologist has verified it), subject the patient by identifier,
  imagingStudy the original study by DICOM UID, result -> the observations, conclusion with the
  triage and the intended-use label, conclusionCode the findings.
- Observation per finding: code the finding (SNOMED CT ...), bodySite the finding site,
  a component per measurement (valueQuantity in UCUM) and per qualitative evaluation,
  identifier the finding's tracking UID, device the algorithm, note the label.
- Observation for the triage: value and interpretation POS/NEG (v3 ObservationInterpretation).

When there will be no result (``notice.unavailable``) the Bundle holds the DiagnosticReport
alone: status *cancelled* (R4: "the report is unavailable because the measurement was not
started or not completed"), conclusion ``No AI result: <reason>``, no observations; same
identifier, subject and imagingStudy as the result's report would have. It is a conditional
update (``PUT DiagnosticReport?identifier=…``): one report per job, cancelled even if a
result's report for the job was made before.

When a STAT study's result is late (``notice.delayed``) the report alone likewise, status
*registered* (R4: "the existence of the report is registered, but there is nothing yet
available"), conclusion ``AI result delayed: <why>``, as a conditional create: where the
job's report exists already, it changes nothing. The result that follows it (``after_delay``)
puts its report as a conditional update, since a conditional create would find the
registered report and store nothing; its observations are new, so still created.
"""

from __future__ import annotations

import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

from aifi.gateway.notify.codes import (
    DIAGNOSTIC_IMAGING_STUDY,
    DICOM_UID_SYSTEM,
    UCUM_URI,
    Concept,
    is_oid,
    parse_scheme_code,
)
from aifi.gateway.notify.errors import DeliveryFailed, HttpRejected, NotPrepared
from aifi.gateway.notify.notice import ResultNotice
from aifi.gateway.notify.reach import http_client, never_connected
from aifi.gateway.notify.settings import FhirEndpoint
from aifi.results.summary import FindingSummary, TriageFlag

FHIR_JSON = "application/fhir+json"
DIAGNOSTIC_SERVICE_SECTIONS = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATIONS = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: Statuses worth another attempt: the server is busy, restarting or behind a slow proxy.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Makes fullUrls (urn:uuid) stable per job, so a resent Bundle is the same Bundle.
_FULL_URL_NAMESPACE = uuid.UUID("0c6c7d2e-2f33-4a5e-9f8e-6a1f4c3b9d10")
_DEFAULT_ENDPOINT = FhirEndpoint(base_url="http://localhost/fhir")


class FhirBuildError(ValueError):
    """The notice cannot be written as valid FHIR R4 resources (names the resource and field)."""


@dataclass(frozen=True)
class FhirReceipt:
    """What the server answered: HTTP status and, per entry, its status and location."""

    status: int
    entry_statuses: tuple[str, ...]
    locations: tuple[str, ...]


def report_identifier(notice: ResultNotice) -> str:
    """The DiagnosticReport's identifier value (in the endpoint's identifier system)."""
    return f"{notice.exchange_job_id}-report"


def full_url(notice: ResultNotice, part: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, f'{notice.exchange_job_id}/{part}')}"


def build_diagnostic_report(
    notice: ResultNotice, endpoint: FhirEndpoint | None = None
) -> tuple[DiagnosticReport, list[Observation]]:
    """The report and its observations; the report's `result` points at the observations'
    fullUrls (:func:`full_url`), as a transaction Bundle resolves them. A notice that there is
    no result gives a *cancelled* report and no observations; one that it is late a
    *registered* report and none.

    Raises
    ------
    FhirBuildError
        If the study has no Patient ID, or a value does not fit its FHIR type.
    """
    settings = endpoint or _DEFAULT_ENDPOINT
    try:
        context = _Context(notice, settings)
        observations: list[tuple[str, Observation]] = []
        summary = notice.summary  # None when there is no result: no observations
        if summary is not None and summary.triage.flag is not TriageFlag.NONE:
            observations.append((full_url(notice, "triage"), context.triage()))
        for index, finding in enumerate(summary.findings if summary else [], start=1):
            part = f"finding-{index}"
            observations.append((full_url(notice, part), context.finding(finding, part)))
        report = context.report([url for url, _ in observations])
    except ValidationError as exc:
        raise FhirBuildError(
            f"FHIR resources for job {notice.exchange_job_id} are not valid R4: {exc}"
        ) from exc
    return report, [observation for _, observation in observations]


def build_transaction(notice: ResultNotice, endpoint: FhirEndpoint | None = None) -> Bundle:
    """A transaction Bundle: the observations and the report, each a conditional create;
    the report a conditional update where it replaces one the job may have (no result, a
    result late, a result after its delay)."""
    settings = endpoint or _DEFAULT_ENDPOINT
    report, observations = build_diagnostic_report(notice, settings)
    entries: list[dict[str, Any]] = []
    for url, observation in zip(
        [ref.reference for ref in report.result or []], observations, strict=True
    ):
        entries.append(_entry(url, observation, settings.identifier_system))
    entries.append(
        _entry(
            full_url(notice, "report"),
            report,
            settings.identifier_system,
            # A delay is a conditional create: where the job's report exists (its result's,
            # which a delay never follows, or the delay's own), it changes nothing.
            replace=notice.kind == "no-result" or notice.after_delay,
        )
    )
    return Bundle.model_validate(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )


def _entry(url: str | None, resource: Any, system: str, *, replace: bool = False) -> dict[str, Any]:
    """A conditional create: a resend finds what the first send made. `replace`: a conditional
    update instead, so the report says *cancelled* even where the job's report was made
    before (a result notice got through, then a gateway restored from a backup found the
    results purged or unfileable), and the result of a late job takes the place of the
    *registered* report that said it was late."""
    own = next(i for i in resource.identifier if i.system == system)
    kind = resource.get_resource_type()
    search = f"identifier={quote(system, safe=':/')}|{quote(own.value, safe='')}"
    request = (
        {"method": "PUT", "url": f"{kind}?{search}"}
        if replace
        else {"method": "POST", "url": kind, "ifNoneExist": search}
    )
    return {
        "fullUrl": url,
        "resource": resource.model_dump(mode="json", exclude_none=True),
        "request": request,
    }


class _Context:
    """What every resource of one notice shares: subject, times, study, device, label."""

    def __init__(self, notice: ResultNotice, endpoint: FhirEndpoint) -> None:
        self.notice = notice
        self.system = endpoint.identifier_system
        study = notice.study
        if not study.patient_id:
            raise FhirBuildError(
                f"DiagnosticReport.subject: job {notice.exchange_job_id}: the study has no "
                "Patient ID"
            )
        patient_identifier: dict[str, str] = {"value": study.patient_id}
        if endpoint.patient_identifier_system:
            patient_identifier["system"] = endpoint.patient_identifier_system
        elif is_oid(study.issuer_of_patient_id):
            patient_identifier["system"] = f"urn:oid:{study.issuer_of_patient_id}"
        self.subject = {"type": "Patient", "identifier": patient_identifier}
        self.study = {
            "type": "ImagingStudy",
            "identifier": {
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{study.study_instance_uid}",
            },
        }
        if study.accession_number:
            self.study["display"] = f"Accession {study.accession_number}"
        self.issued = notice.completed_at.isoformat()
        self.effective = _study_date(study.study_date) or self.issued
        self.device = {"display": _device_name(notice)}
        self.note = [{"text": notice.label}]

    def identifier(self, part: str) -> list[dict[str, str]]:
        return [{"system": self.system, "value": f"{self.notice.exchange_job_id}-{part}"}]

    def observation(self, part: str, **fields: Any) -> Observation:
        return Observation.model_validate(
            {
                "resourceType": "Observation",
                "identifier": self.identifier(part) + fields.pop("identifier", []),
                "status": "preliminary",
                "category": [_codeable(OBSERVATION_CATEGORIES, "imaging", "Imaging")],
                "subject": self.subject,
                "effectiveDateTime": self.effective,
                "issued": self.issued,
                "device": self.device,
                "derivedFrom": [self.study],
                "note": self.note,
                **fields,
            }
        )

    def triage(self) -> Observation:
        summary = self.notice.summary
        assert summary is not None
        positive = summary.triage.flag is TriageFlag.POSITIVE
        code, display = ("POS", "Positive") if positive else ("NEG", "Negative")
        text = "AI triage" + (
            f" (priority {summary.triage.priority.value})" if summary.triage.priority else ""
        )
        return self.observation(
            "triage",
            code={"text": text},
            valueCodeableConcept=_codeable(INTERPRETATIONS, code, display),
            interpretation=[_codeable(INTERPRETATIONS, code, display)],
        )

    def finding(self, finding: FindingSummary, part: str) -> Observation:
        components: list[dict[str, Any]] = [
            {
                "code": {"text": name},
                "valueQuantity": {
                    "value": measured.value,
                    "unit": measured.unit,
                    "system": UCUM_URI,
                    "code": measured.unit,
                },
            }
            for name, measured in finding.measurements.items()
        ]
        components += [
            {"code": {"text": name}, "valueString": value}
            for name, value in finding.evaluations.items()
        ]
        fields: dict[str, Any] = {
            "code": _concept(finding.finding_code, finding.finding),
            "identifier": [
                {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{finding.tracking_uid}"},
                {"value": finding.tracking_id},
            ],
        }
        if finding.site:
            fields["bodySite"] = {"text": finding.site}
        if components:
            fields["component"] = components
        return self.observation(part, **fields)

    def report(self, result_urls: list[str]) -> DiagnosticReport:
        notice = self.notice
        code = _concept(
            f"{DIAGNOSTIC_IMAGING_STUDY.scheme}:{DIAGNOSTIC_IMAGING_STUDY.code}",
            DIAGNOSTIC_IMAGING_STUDY.meaning,
        )
        code["text"] = f"{notice.product_name} {notice.product_version}".strip()
        fields: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "identifier": self.identifier("report"),
            "status": _report_status(notice),
            "category": [_codeable(DIAGNOSTIC_SERVICE_SECTIONS, "RAD", "Radiology")],
            "code": code,
            "subject": self.subject,
            "effectiveDateTime": self.effective,
            "issued": self.issued,
            "imagingStudy": [self.study],
            "conclusion": _conclusion(notice),
        }
        if result_urls:
            fields["result"] = [{"reference": url} for url in result_urls]
        findings = notice.summary.findings if notice.summary else []
        if findings:
            fields["conclusionCode"] = [_concept(f.finding_code, f.finding) for f in findings]
        return DiagnosticReport.model_validate(fields)


def _report_status(notice: ResultNotice) -> str:
    return {"result": "preliminary", "delayed": "registered", "no-result": "cancelled"}[notice.kind]


def _codeable(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _concept(scheme_code: str, meaning: str) -> dict[str, Any]:
    """A CodeableConcept; codes of schemes without a known FHIR system keep their text only."""
    concept: Concept | None = parse_scheme_code(scheme_code, meaning)
    if concept is None or concept.fhir_system is None:
        return {"text": meaning}
    return {
        "coding": [{"system": concept.fhir_system, "code": concept.code, "display": meaning}],
        "text": meaning,
    }


def _study_date(value: str) -> str | None:
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def _device_name(notice: ResultNotice) -> str:
    summary = notice.summary
    if summary is None:
        return f"{notice.product_name} {notice.product_version}".strip()
    algorithm = summary.algorithm
    return f"{algorithm.name} {algorithm.version} ({algorithm.manufacturer})"


def _conclusion(notice: ResultNotice) -> str:
    statement = notice.no_result_statement
    if statement is not None:  # no label: there is no result for it to qualify
        return statement
    summary = notice.summary
    parts: list[str] = []
    if summary is not None:
        if summary.triage.flag is TriageFlag.POSITIVE:
            priority = summary.triage.priority
            parts.append(
                "AI triage POSITIVE" + (f" (priority {priority.value})" if priority else "")
            )
        elif summary.triage.flag is TriageFlag.NEGATIVE:
            parts.append("AI triage negative")
        for finding in summary.findings:
            values = ", ".join(
                f"{name} {measured.value:g} {measured.unit}"
                for name, measured in finding.measurements.items()
            )
            where = f" ({finding.site})" if finding.site else ""
            parts.append(f"{finding.finding}{where}" + (f": {values}" if values else ""))
    count = len(notice.result_sop_instance_uids)
    parts.append(f"{count} result object(s) stored in the PACS with the study")
    parts.append(notice.label)
    return ". ".join(parts) + "."


def post_fhir(
    bundle: Bundle, endpoint: FhirEndpoint, client: httpx.Client | None = None
) -> FhirReceipt:
    """POST the transaction Bundle to the server's base URL; retries what may pass.

    Raises
    ------
    HttpRejected
        The server refused the Bundle (4xx but 408/425/429); its OperationOutcome is quoted.
    DeliveryFailed
        The server could not be reached, kept failing (5xx), or answered no transaction-response.
    NotPrepared
        The bearer token or CA file could not be read: nothing was sent.
    """
    url = endpoint.base_url.rstrip("/")
    where = f"FHIR transaction Bundle to {url}"
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    try:
        token = endpoint.bearer_token()
        verify = endpoint_verify(endpoint) if client is None else True
    except (OSError, ValueError) as exc:
        raise NotPrepared("fhir", f"{where}: not sent: {exc}") from exc  # names the file
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = bundle.model_dump_json(exclude_none=True).encode()
    own = client or http_client(endpoint.base_url, verify)
    attempts = endpoint.retries + 1
    problem = "not sent"
    connected = False
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(endpoint.retry_backoff_seconds * 2 ** (attempt - 1))
            try:
                response = own.post(
                    url, content=body, headers=headers, timeout=endpoint.timeout_seconds
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                connected = connected or not never_connected(exc)
                continue
            connected = True
            if response.status_code in RETRYABLE_STATUSES:
                problem = f"HTTP {response.status_code} {_outcome_text(response)}"
                continue
            if response.status_code >= 400:
                raise HttpRejected(
                    "fhir",
                    f"{where}: refused with HTTP {response.status_code}: {_outcome_text(response)}",
                    status=response.status_code,
                )
            return _receipt(response, where)
    finally:
        if client is None:
            own.close()
    raise DeliveryFailed(
        "fhir", f"{where}: failed after {attempts} attempt(s): {problem}", unreached=not connected
    )


def endpoint_verify(endpoint: FhirEndpoint) -> bool | ssl.SSLContext:
    """What httpx verifies the server's certificate against: `verify_tls` as configured (a
    CA bundle file, or a folder of them, is the only CA trusted).

    Raises
    ------
    ValueError
        The file cannot be read as PEM CA certificates.
    """
    verify = endpoint.verify_tls
    if isinstance(verify, bool):
        return verify
    try:
        if verify.is_dir():
            return ssl.create_default_context(capath=str(verify))
        return ssl.create_default_context(cafile=str(verify))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{verify}: not a readable PEM file of CA certificates ({exc})") from exc


def _receipt(response: httpx.Response, where: str) -> FhirReceipt:
    try:
        answer = Bundle.model_validate_json(response.content)
    except ValidationError as exc:
        raise DeliveryFailed(
            "fhir", f"{where}: the answer is not a FHIR Bundle (HTTP {response.status_code})"
        ) from exc
    if answer.type != "transaction-response":
        raise DeliveryFailed("fhir", f"{where}: the answer is a {answer.type!r} Bundle")
    statuses = tuple(str(e.response.status) if e.response else "" for e in answer.entry or [])
    locations = tuple(e.response.location or "" if e.response else "" for e in answer.entry or [])
    return FhirReceipt(response.status_code, statuses, locations)


def _outcome_text(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome answer, else the start of the body."""
    try:
        outcome = OperationOutcome.model_validate_json(response.content)
        texts = [
            issue.diagnostics or (issue.details.text if issue.details else None) or issue.code
            for issue in outcome.issue
        ]
        return "; ".join(str(text) for text in texts if text)
    except (ValidationError, ValueError):
        return response.text[:200]
