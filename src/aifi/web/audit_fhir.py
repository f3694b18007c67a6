"""The audit log as FHIR R4 AuditEvents: who (organisation, role), what (action, object),
whose data (patient pseudonym), when, and the outcome — the fields NEN 7513 asks for."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from aifi.exchange.clock import as_utc
from aifi.exchange.models import AuditEntry

#: Identifier systems of what AuditEvents name: a patient's pseudonym, an organisation, and
#: an object, whose system ends in its type (urn:aifi:job, urn:aifi:input, …).
PATIENT_SYSTEM = "urn:aifi:patient-pseudonym"
ORGANISATION_SYSTEM = "urn:aifi:organisation"
OBJECT_SYSTEM_PREFIX = "urn:aifi:"
#: Our actions -> FHIR AuditEvent.action (C create, R read, U update, D delete, E execute).
ACTIONS = {"create": "C", "read": "R", "search": "E", "update": "U", "delete": "D", "login": "E"}
#: NEN 7513 event type -> DICOM audit event ids (DCM) the AuditEvent type names.
EVENT_TYPES = {
    "login": ("110114", "User Authentication"),
    "read": ("110106", "Export"),
    "search": ("110112", "Query"),
}
DEFAULT_TYPE = ("110110", "Patient Record")
OUTCOMES = {"success": "0", "refused": "4"}


#: An AuditEvent's id: the entry's own, after this prefix.
RESOURCE_PREFIX = "aifi-audit-"
#: An entry's id as it may stand in an AuditEvent's (ASCII digits, within a 64-bit integer).
ID_DIGITS = re.compile(r"[0-9]{1,18}")


def resource_id(entry_id: int) -> str:
    return f"{RESOURCE_PREFIX}{entry_id}"


def entry_id(resource: str) -> int | None:
    """The entry an AuditEvent's id names, or None when it names none of ours."""
    number = resource.removeprefix(RESOURCE_PREFIX)
    if not resource.startswith(RESOURCE_PREFIX) or not ID_DIGITS.fullmatch(number):
        return None
    return int(number)


def audit_event(entry: AuditEntry | Any) -> AuditEvent:
    """`entry`: a table row, or an entry read back from an archive file (the same fields)."""
    code, display = EVENT_TYPES.get(entry.action, DEFAULT_TYPE)
    entities = [
        {
            "what": {
                "identifier": {
                    "system": f"{OBJECT_SYSTEM_PREFIX}{entry.object_type}",
                    "value": entry.object_id,
                }
            },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
            },
            "description": entry.detail or None,
        }
    ]
    if entry.patient_pseudonym:
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": PATIENT_SYSTEM,
                        "value": entry.patient_pseudonym,
                    }
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                },
                "description": None,
            }
        )
    return AuditEvent.model_validate(
        {
            "resourceType": "AuditEvent",
            "id": resource_id(entry.id),
            "type": {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": code,
                "display": display,
            },
            "action": ACTIONS.get(entry.action, "E"),
            "recorded": as_utc(entry.at).isoformat(),
            "outcome": OUTCOMES.get(entry.outcome, "8"),
            "outcomeDesc": entry.outcome,
            "agent": [
                {
                    "who": {
                        "identifier": {
                            "system": ORGANISATION_SYSTEM,
                            "value": entry.organisation_id,
                        }
                    },
                    "role": [{"text": entry.role}],
                    "requestor": True,
                }
            ],
            "source": {"observer": {"display": "AIFI national exchange"}},
            "entity": [{k: v for k, v in e.items() if v is not None} for e in entities],
        }
    )


def bundle_entry(entry: AuditEntry | Any, base: str, **more: Any) -> BundleEntry:
    """An entry of a Bundle: the AuditEvent and its full URL (`base`: the FHIR base, ending
    before ``/AuditEvent``), which FHIR R4 asks of every identified resource in a Bundle and
    `GET {base}/AuditEvent/{id}` answers."""
    event = audit_event(entry)
    return BundleEntry.model_validate(
        {"fullUrl": f"{base}/AuditEvent/{event.id}", "resource": event, **more}
    )


def audit_bundle(entries: Iterable[AuditEntry], base: str, next_url: str | None = None) -> Bundle:
    """A page of the log; `next_url`, where the next page is read from."""
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            **({"link": [{"relation": "next", "url": next_url}]} if next_url else {}),
            "entry": [bundle_entry(e, base) for e in entries],
        }
    )


def search_bundle(
    found: Iterable[Any], base: str, self_url: str, next_url: str | None = None
) -> Bundle:
    """A page of a FHIR search: a `searchset` with its own link and, unless it is the last
    page, the `next` link to follow."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [bundle_entry(e, base, search={"mode": "match"}) for e in found],
        }
    )


def operation_outcome(message: str, code: str = "invalid") -> OperationOutcome:
    """Why a FHIR request was refused, as FHIR clients read it."""
    return OperationOutcome.model_validate(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}],
        }
    )


def capability_statement(search_params: Iterable[tuple[str, str, str]]) -> CapabilityStatement:
    """What the access log's FHIR endpoint offers (`GET …/metadata`, read by FHIR clients
    before they search): AuditEvent search, with `search_params` as (name, type, meaning)."""
    return CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-12-03",
            "kind": "instance",
            "software": {"name": "AIFI national exchange: access log"},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "AuditEvent",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {"name": name, "type": kind, "documentation": meaning}
                                for name, kind, meaning in search_params
                            ],
                        }
                    ],
                }
            ],
        }
    )
