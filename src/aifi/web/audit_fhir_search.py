"""A FHIR search over the access log: `GET /audit/fhir/AuditEvent?…` (IHE RESTful ATNA, ITI-81).

A privacy officer's audit tooling asks in FHIR's words — the patient by identifier, the agent,
the entity, a period with `ge`/`lt` — and expects a `searchset` Bundle with a `next` link. The
question is turned into an :class:`~aifi.exchange.audit_search.AuditQuery`, so a FHIR search
finds what `GET /audit/search` finds: the table and the archive files alike, a page at a time
along the chain.

Parameters this server does not know are refused, not ignored (FHIR's strict handling): a
misspelt criterion silently dropped would widen a search over other people's data.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aifi.exchange.audit_search import AuditQuery
from aifi.web.audit_fhir import OBJECT_SYSTEM_PREFIX, ORGANISATION_SYSTEM, PATIENT_SYSTEM

#: Accepted spellings of each criterion: ITI-81's chained names, FHIR's `:identifier`
#: modifier, and the `entity-identifier` parameter national profiles define.
PATIENT_PARAMS = frozenset({"patient.identifier", "patient:identifier"})
AGENT_PARAMS = frozenset({"agent.identifier", "agent:identifier"})
ENTITY_PARAMS = frozenset({"entity-identifier", "entity.identifier", "entity:identifier"})
#: Search-result parameters: page size, where the page starts (from a `next` link), format.
COUNT, AFTER, FORMAT = "_count", "_after", "_format"
DEFAULT_COUNT = 500
MAX_COUNT = 5000
#: `_format` values that ask for what is served anyway.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})

#: The parameters as the CapabilityStatement and the API docs name them: (name, type, meaning).
SEARCH_PARAMS = (
    ("patient.identifier", "token", f"a patient pseudonym ({PATIENT_SYSTEM}|value)"),
    ("agent.identifier", "token", f"an organisation's id ({ORGANISATION_SYSTEM}|value)"),
    (
        "entity-identifier",
        "token",
        "an object ([urn:aifi:<type>|]id; a job's id finds its inputs and results too), "
        f"or a patient ({PATIENT_SYSTEM}|value)",
    ),
    ("date", "date", "when, with eq, ge, gt, le or lt; repeat it for a period (UTC if no zone)"),
    (COUNT, "number", f"entries a page, at most {MAX_COUNT} (default {DEFAULT_COUNT})"),
)

DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
#: A value with a prefix: two lower-case letters, then the date.
PREFIXED = re.compile(r"[a-z]{2}\d")
#: A FHIR date or dateTime as a search value: YYYY, YYYY-MM, YYYY-MM-DD, then a time to the
#: minute, second or fraction, with Z or an offset (UTC when left out: the log's own zone).
DATE_VALUE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,6})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


class SearchRefused(ValueError):
    """A search this server will not run as asked; the message says what to change."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        #: The OperationOutcome issue code: `invalid`, or `not-supported` for a parameter or
        #: a prefix this server does not offer.
        self.code = code


@dataclass(frozen=True)
class FhirAuditSearch:
    """A FHIR search over the access log, checked and turned into the log's own terms."""

    query: AuditQuery
    count: int = DEFAULT_COUNT
    after: int = 0


def parse_search(params: Iterable[tuple[str, str]]) -> FhirAuditSearch:
    """The search the query string `params` asks for (every pair, repeats included), or
    :class:`SearchRefused` naming the parameter at fault."""
    patient = organisation = object_id = None
    since: datetime | None = None
    until: datetime | None = None
    count, after = DEFAULT_COUNT, 0
    seen: set[str] = set()
    for name, value in params:
        criterion = _criterion(name)
        if criterion != "date":
            if criterion in seen:
                raise SearchRefused(f"{name}: give each criterion once")
            seen.add(criterion)
        if criterion == "patient":
            patient = _same_patient(name, patient, _token(name, value, PATIENT_SYSTEM))
        elif criterion == "agent":
            organisation = _token(name, value, ORGANISATION_SYSTEM)
        elif criterion == "entity":
            system, entity = _split_token(name, value)
            if system == PATIENT_SYSTEM:
                patient = _same_patient(name, patient, entity)
            elif system is None or system.startswith(OBJECT_SYSTEM_PREFIX):
                object_id = entity
            else:
                raise SearchRefused(
                    f"{name}: unknown identifier system {system!r} (entities here are "
                    f"{OBJECT_SYSTEM_PREFIX}<object type> or {PATIENT_SYSTEM})"
                )
        elif criterion == "date":
            low, high = _date_bounds(value)
            if low is not None and (since is None or low > since):
                since = low
            if high is not None and (until is None or high < until):
                until = high
        elif criterion == "count":
            count = _whole(name, value, 1, MAX_COUNT)
        elif criterion == "after":
            after = _whole(name, value, 0, None)
        elif value.lower() not in JSON_FORMATS:
            raise SearchRefused(
                f"_format: only JSON is served, not {value!r}", code="not-supported"
            )
    query = AuditQuery(patient, organisation, object_id, since=since, until=until)
    if not (patient or organisation or object_id):
        raise SearchRefused(
            "name a patient (patient.identifier), an agent (agent.identifier) or an entity "
            "(entity-identifier) to search for",
            code="required",
        )
    if since is not None and until is not None and since >= until:
        raise SearchRefused("date: the period asked for is empty (its start is not before its end)")
    return FhirAuditSearch(query, count, after)


def _criterion(name: str) -> str:
    if name in PATIENT_PARAMS:
        return "patient"
    if name in AGENT_PARAMS:
        return "agent"
    if name in ENTITY_PARAMS:
        return "entity"
    simple = {"date": "date", COUNT: "count", AFTER: "after", FORMAT: "format"}
    if name in simple:
        return simple[name]
    raise SearchRefused(
        f"unknown search parameter {name!r}; this server searches AuditEvents by "
        "patient.identifier, agent.identifier, entity-identifier and date, with _count",
        code="not-supported",
    )


def _same_patient(name: str, known: str | None, given: str) -> str:
    """A patient named twice (by `patient.identifier` and as an entity) must be one patient."""
    if known is not None and known != given:
        raise SearchRefused(f"{name}: a second patient; a search names one")
    return given


def _split_token(name: str, value: str) -> tuple[str | None, str]:
    if "," in value:
        raise SearchRefused(f"{name}: one value at a time (a list joined by ',' is not searched)")
    system, bar, code = value.rpartition("|")
    code = code.strip()
    if not code:
        raise SearchRefused(f"{name}: no identifier value given")
    return (system or None) if bar else None, code


def _token(name: str, value: str, system: str) -> str:
    given, code = _split_token(name, value)
    if given is not None and given != system:
        raise SearchRefused(f"{name}: the identifier system here is {system}, not {given!r}")
    return code


def _whole(name: str, value: str, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SearchRefused(f"{name}: {value!r} is not a whole number") from None
    if number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise SearchRefused(f"{name}: {number} is out of range ({span})")
    return number


def _date_bounds(value: str) -> tuple[datetime | None, datetime | None]:
    """The moments a `date` parameter bounds the search by: from (inclusive), before
    (exclusive). A value stands for the whole of its precision, so `ge2026-05` starts on
    1 May and `le2026-05` ends with 31 May."""
    prefixed = PREFIXED.match(value)
    prefix, text = (value[:2], value[2:]) if prefixed else ("eq", value)
    if prefix not in DATE_PREFIXES:
        raise SearchRefused(
            f"date: prefix {prefix!r} is not offered (use {', '.join(DATE_PREFIXES)})",
            code="not-supported",
        )
    start, end = _period(text)
    return {
        "eq": (start, end),
        "ge": (start, None),
        "gt": (end, None),
        "lt": (None, start),
        "le": (None, end),
    }[prefix]


def _period(text: str) -> tuple[datetime, datetime]:
    match = DATE_VALUE.fullmatch(text)
    if match is None:
        raise SearchRefused(
            f"date: {text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss][Z|+hh:mm])"
        )
    part = match.groupdict()
    try:
        if part["month"] is None:
            start = datetime(int(part["year"]), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if part["day"] is None:
            start = datetime(int(part["year"]), int(part["month"]), 1, tzinfo=UTC)
            days = calendar.monthrange(start.year, start.month)[1]
            return start, start + timedelta(days=days)
        day = datetime(int(part["year"]), int(part["month"]), int(part["day"]), tzinfo=UTC)
        if part["hour"] is None:
            return day, day + timedelta(days=1)
        fraction = part["fraction"] or ""
        moment = datetime.fromisoformat(
            f"{text[:10]}T{part['hour']}:{part['minute']}:{part['second'] or '00'}{fraction}"
            f"{(part['zone'] or 'Z').replace('Z', '+00:00')}"
        ).astimezone(UTC)
    except ValueError as exc:
        raise SearchRefused(f"date: {text!r} is not a real moment ({exc})") from None
    if part["second"] is None:
        width = timedelta(minutes=1)
    elif not fraction:
        width = timedelta(seconds=1)
    else:
        width = timedelta(microseconds=10 ** (6 - (len(fraction) - 1)))
    return moment, moment + width
