"""A FHIR search of the access log is read as FHIR means it, or refused with its reason: dates
stand for their whole precision, identifiers keep to their systems, and a parameter the server
does not know is never silently dropped."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from aifi.web.audit_fhir_search import (
    MAX_COUNT,
    SearchRefused,
    parse_search,
)

PATIENT = ("patient.identifier", "urn:aifi:patient-pseudonym|PSN-1")


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type, misc]


def test_criteria_in_fhir_words_become_the_logs_own() -> None:
    asked = parse_search(
        [
            ("patient:identifier", "PSN-1"),
            ("agent.identifier", "urn:aifi:organisation|vendor-a"),
            ("entity-identifier", "urn:aifi:job|job-7"),
            ("_count", "20"),
            ("_after", "41"),
            ("_format", "application/fhir+json"),
        ]
    )
    assert asked.query.patient_pseudonym == "PSN-1"
    assert asked.query.organisation_id == "vendor-a"
    assert asked.query.object_id == "job-7"
    assert (asked.count, asked.after) == (20, 41)


def test_a_patient_may_be_named_as_an_entity_but_only_one_patient() -> None:
    asked = parse_search([("entity.identifier", "urn:aifi:patient-pseudonym|PSN-2")])
    assert asked.query.patient_pseudonym == "PSN-2" and asked.query.object_id is None
    same = parse_search([PATIENT, ("entity-identifier", "urn:aifi:patient-pseudonym|PSN-1")])
    assert same.query.patient_pseudonym == "PSN-1"
    with pytest.raises(SearchRefused, match="a second patient"):
        parse_search([("entity-identifier", "urn:aifi:patient-pseudonym|PSN-9"), PATIENT])


@pytest.mark.parametrize(
    ("dates", "since", "until"),
    [
        # A value stands for its whole precision: a year, a month (February of a leap
        # year), a day, a minute, a second.
        (["2026"], at(2026, 1, 1), at(2027, 1, 1)),
        (["eq2028-02"], at(2028, 2, 1), at(2028, 3, 1)),
        (["ge2026-05-04"], at(2026, 5, 4), None),
        (["gt2026-05-04"], at(2026, 5, 5), None),
        (["lt2026-05-04"], None, at(2026, 5, 4)),
        (["le2026-12-31"], None, at(2027, 1, 1)),
        (["ge2026-05-04T10:15"], at(2026, 5, 4, 10, 15), None),
        (["le2026-05-04T10:15:30Z"], None, at(2026, 5, 4, 10, 15, 31)),
        # An offset is turned to UTC; a period is two dates, the narrower bounds counting.
        (["ge2026-05-04T12:00+02:00", "lt2026-06"], at(2026, 5, 4, 10), at(2026, 6, 1)),
        (["ge2026-01", "ge2026-03", "lt2026-09", "lt2026-07"], at(2026, 3, 1), at(2026, 7, 1)),
        (["eq2026-05-04T10:15:30.25Z"], at(2026, 5, 4, 10, 15, 30, 250000),
         at(2026, 5, 4, 10, 15, 30, 260000)),
    ],
)  # fmt: skip
def test_dates_bound_the_search_as_fhir_reads_them(
    dates: list[str], since: datetime | None, until: datetime | None
) -> None:
    asked = parse_search([PATIENT, *(("date", d) for d in dates)])
    assert (asked.query.since, asked.query.until) == (since, until)


@pytest.mark.parametrize(
    ("params", "message", "code"),
    [
        ([], "name a patient (patient.identifier)", "required"),
        ([("date", "ge2026-01-01")], "name a patient", "required"),
        ([PATIENT, ("patient.identifer", "PSN-1")], "unknown search parameter", "not-supported"),
        ([PATIENT, ("outcome", "4")], "unknown search parameter 'outcome'", "not-supported"),
        ([("patient.identifier", "urn:oid:2.16.840.1.113883.2.4.6.3|999")],
         "system here is urn:aifi:patient-pseudonym", "invalid"),
        ([("agent.identifier", "hospital-a,hospital-b")], "one value at a time", "invalid"),
        ([("entity-identifier", "http://example.org|x")], "unknown identifier system", "invalid"),
        ([("patient.identifier", "urn:aifi:patient-pseudonym|")], "no identifier value", "invalid"),
        ([PATIENT, PATIENT], "give each criterion once", "invalid"),
        ([PATIENT, ("date", "sa2026-01-01")], "prefix 'sa' is not offered", "not-supported"),
        ([PATIENT, ("date", "May")], "'May' is not a FHIR date", "invalid"),
        ([PATIENT, ("date", "2026-02-30")], "not a real moment", "invalid"),
        ([PATIENT, ("date", "ge2026-05"), ("date", "lt2026-05")], "period asked for is empty",
         "invalid"),
        ([PATIENT, ("_count", str(MAX_COUNT + 1))], "out of range", "invalid"),
        ([PATIENT, ("_count", "ten")], "not a whole number", "invalid"),
        ([PATIENT, ("_after", "-1")], "out of range", "invalid"),
        ([PATIENT, ("_format", "xml")], "only JSON", "not-supported"),
    ],
)  # fmt: skip
def test_a_search_that_cannot_be_run_as_asked_is_refused_with_its_reason(
    params: list[tuple[str, str]], message: str, code: str
) -> None:
    with pytest.raises(SearchRefused, match=re.escape(message)) as refused:
        parse_search(params)
    assert refused.value.code == code
