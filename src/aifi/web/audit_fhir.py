"""The audit log as FHIR R4 AuditEvents: who (organisation, role), what (action, object),
whose data (patient pseudonym), when, and the outcome — the fields NEN 7513 asks for."""

from __future__ import annotations

from collections.abc import Iterable

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle, BundleEntry

from aifi.exchange.clock import as_utc
from aifi.exchange.models import AuditEntry

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


def audit_event(entry: AuditEntry) -> AuditEvent:
    code, display = EVENT_TYPES.get(entry.action, DEFAULT_TYPE)
    entities = [
        {
            "what": {
                "identifier": {"system": f"urn:aifi:{entry.object_type}", "value": entry.object_id}
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
                        "system": "urn:aifi:patient-pseudonym",
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
            "id": f"aifi-audit-{entry.id}",
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
                            "system": "urn:aifi:organisation",
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


def audit_bundle(entries: Iterable[AuditEntry]) -> Bundle:
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [BundleEntry.model_validate({"resource": audit_event(e)}) for e in entries],
        }
    )
