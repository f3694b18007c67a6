"""Reading the access log is itself an access: every listing of its entries is logged, naming
who was shown which entries, before they are given out (NEN 7513; the search already was).

Runs on every backend: SQLite with a local folder, PostgreSQL, PostgreSQL with S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import select

from aifi.exchange.app import create_app
from aifi.exchange.audit import _STORE_ENTRIES, SYSTEM, Actor, AuditLog, _row
from aifi.exchange.db import Database, execute_core, upgrade_schema
from aifi.exchange.models import AuditEntry
from aifi.exchange.settings import ExchangeSettings
from aifi.web import mount
from scale.exchange_api import BACKENDS, OPERATOR_KEY, backend_settings

HOSPITAL = Actor("hospital-a", "hospital")
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture(params=BACKENDS)
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ExchangeSettings]:
    chosen = backend_settings(str(request.param), tmp_path, request.config)
    db = Database(chosen.settings.resolved_database_url())
    upgrade_schema(db.engine)
    log = AuditLog(db)
    for number in range(5):
        log.record(HOSPITAL, "read", "job", f"job-{number}", patient_pseudonym=f"p{number}")
    db.dispose()
    try:
        yield chosen.settings
    finally:
        chosen.close()


def reads_of_the_log(settings: ExchangeSettings) -> list[tuple[str, str, str, str]]:
    db = Database(settings.resolved_database_url())
    try:
        with db.session() as session:
            entries = session.scalars(
                select(AuditEntry)
                .where(AuditEntry.object_type == "audit", AuditEntry.action == "read")
                .order_by(AuditEntry.id)
            )
            return [(e.organisation_id, e.role, e.object_id, e.detail) for e in entries]
    finally:
        db.dispose()


def refusals_of_the_log(settings: ExchangeSettings) -> list[str]:
    """Who was refused a read of the log."""
    db = Database(settings.resolved_database_url())
    try:
        with db.session() as session:
            return list(
                session.scalars(
                    select(AuditEntry.organisation_id).where(
                        AuditEntry.object_type == "audit", AuditEntry.outcome == "refused"
                    )
                )
            )
    finally:
        db.dispose()


def test_each_listing_of_the_log_is_logged_with_the_entries_it_showed(
    settings: ExchangeSettings,
) -> None:
    with TestClient(create_app(settings, extensions=[mount])) as client:
        first = client.get("/audit", params={"limit": 3}, headers=OPERATOR)
        assert first.status_code == 200, first.text
        shown = [entry["id"] for entry in first.json()]
        assert [e["object_id"] for e in first.json()] == ["job-0", "job-1", "job-2"]

        after = shown[-1]
        rest = client.get("/audit", params={"after_id": after}, headers=OPERATOR).json()
        # The first listing's own entry is in the log, after what it showed.
        assert [e["object_id"] for e in rest][:2] == ["job-3", "job-4"]
        assert rest[2]["action"] == "read" and rest[2]["object_type"] == "audit"
        assert rest[2]["object_id"] == f"entries {shown[0]} to {shown[-1]}"

        fhir = client.get("/audit/fhir", params={"after_id": rest[-1]["id"]}, headers=OPERATOR)
        assert fhir.status_code == 200, fhir.text
        bundle = Bundle.model_validate_json(fhir.content)
        ids = [str(entry.resource.id) for entry in bundle.entry or []]
        listed = [int(found.removeprefix("aifi-audit-")) for found in ids]
        assert listed  # the second listing's entry, at least

        empty = client.get("/audit", params={"after_id": 10**9}, headers=OPERATOR)
        assert empty.status_code == 200 and empty.json() == []

        # Who may not read the log is refused and shown nothing: no listing is logged, its
        # refusal is.
        hospital_key = client.post(
            "/organisations",
            json={"id": "hospital-b", "name": "B", "kind": "hospital"},
            headers=OPERATOR,
        ).json()["api_key"]
        refused = client.get("/audit", headers={"Authorization": f"Bearer {hospital_key}"})
        assert refused.status_code == 403

    reads = reads_of_the_log(settings)
    assert reads == [
        ("operator", "operator", f"entries {shown[0]} to {shown[-1]}", "3 entries, by GET /audit"),
        (
            "operator",
            "operator",
            f"entries {rest[0]['id']} to {rest[-1]['id']}",
            f"{len(rest)} entries, by GET /audit",
        ),
        (
            "operator",
            "operator",
            f"entries {min(listed)} to {max(listed)}",
            f"{len(listed)} entries, by GET /audit/fhir",
        ),
        ("operator", "operator", "no entries", "0 entries, by GET /audit"),
        (
            "hospital-b",
            "hospital",
            "",
            "GET /audit: this action is for operator organisations, not hospital",
        ),
    ]
    assert refusals_of_the_log(settings) == ["hospital-b"]


def test_each_fhir_entry_has_a_full_url_that_reads_it_and_the_read_is_logged(
    settings: ExchangeSettings,
) -> None:
    with TestClient(create_app(settings, extensions=[mount])) as client:
        found = client.get(
            "/audit/fhir/AuditEvent",
            params={"patient.identifier": "urn:aifi:patient-pseudonym|p3"},
            headers=OPERATOR,
        )
        assert found.status_code == 200, found.text
        (match,) = Bundle.model_validate_json(found.content).entry or []
        assert match.resource is not None
        assert match.fullUrl == f"http://testserver/audit/fhir/AuditEvent/{match.resource.id}"
        listed = (
            Bundle.model_validate_json(client.get("/audit/fhir", headers=OPERATOR).content).entry
            or []
        )
        assert listed and all(
            e.fullUrl == f"http://testserver/audit/fhir/AuditEvent/{e.resource.id}"
            for e in listed
            if e.resource is not None
        )

        read = client.get(str(match.fullUrl), headers=OPERATOR)
        assert read.status_code == 200, read.text
        assert read.headers["content-type"].startswith("application/fhir+json")
        event = AuditEvent.model_validate_json(read.content)
        assert event.model_dump() == match.resource.model_dump()

        unknown = ["aifi-audit-999999", "aifi-audit-x", "Patient-1", "aifi-audit-²"]
        for missing in [*unknown, "aifi-audit-" + "9" * 40]:
            answer = client.get(f"/audit/fhir/AuditEvent/{missing}", headers=OPERATOR)
            assert answer.status_code == 404
            outcome = OperationOutcome.model_validate_json(answer.content)
            assert missing in str(outcome.issue[0].diagnostics)
        statement = client.get("/audit/fhir/metadata", headers=OPERATOR).json()
        codes = {i["code"] for i in statement["rest"][0]["resource"][0]["interaction"]}
        assert codes == {"read", "search-type"}

    entry = int(str(match.resource.id).removeprefix("aifi-audit-"))
    db = Database(settings.resolved_database_url())
    try:
        with db.session() as session:
            reads = list(
                session.scalars(select(AuditEntry).where(AuditEntry.object_id == f"entry {entry}"))
            )
    finally:
        db.dispose()
    assert [(e.action, e.object_type, e.patient_pseudonym) for e in reads] == [
        ("read", "audit", "p3")
    ]


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_a_page_by_chain_position_misses_no_entry_written_while_it_was_read(
    settings: ExchangeSettings,
) -> None:
    """An entry's id is handed out when it is written and seen when its transaction commits:
    an export paging by ids passed an entry whose transaction committed after a later one.
    Paging by chain position (`after_seq`) takes entries as they are seen."""
    with TestClient(create_app(settings, extensions=[mount])) as client:
        services = client.app.state.services
        seen = client.get("/audit", headers=OPERATOR).json()
        position = max(entry["chain_seq"] for entry in seen)
        slow = services.db.sessions()
        slow.begin()  # an entry stored, its transaction not committed yet
        execute_core(
            slow, _STORE_ENTRIES, [_row(SYSTEM, "delete", "input", "slow-job", "success", "p", "")]
        )
        try:
            later = client.post(
                "/organisations", json={"id": "hospital-z", "name": "Z", "kind": "hospital"},
                headers=OPERATOR,
            )  # fmt: skip
            assert later.status_code == 201, later.text
            page = client.get("/audit", params={"after_seq": position}, headers=OPERATOR).json()
            by_id = client.get(
                "/audit", params={"after_id": max(e["id"] for e in seen)}, headers=OPERATOR
            ).json()
        finally:
            slow.commit()
            slow.close()
        listed = [entry["object_id"] for entry in page]
        assert "hospital-z" in listed and "slow-job" not in listed
        cursor_by_id = max(entry["id"] for entry in by_id)
        position = max(entry["chain_seq"] for entry in page)
        rest = client.get("/audit", params={"after_seq": position}, headers=OPERATOR).json()
        assert "slow-job" in [entry["object_id"] for entry in rest]
        assert "hospital-z" not in [entry["object_id"] for entry in rest]  # listed before
        ids_after = client.get("/audit", params={"after_id": cursor_by_id}, headers=OPERATOR)
        assert "slow-job" not in [entry["object_id"] for entry in ids_after.json()]  # passed

        fhir = client.get("/audit/fhir", params={"after_seq": 0, "limit": 2}, headers=OPERATOR)
        bundle = Bundle.model_validate_json(fhir.content)
        [onwards] = [link.url for link in bundle.link or [] if link.relation == "next"]
        assert "after_seq=" in str(onwards) and "limit=2" in str(onwards)
