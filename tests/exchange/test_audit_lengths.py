"""An audit entry's text comes partly from callers: a result's name (up to 200 characters)
after its job's id, a user name typed into the login form. On PostgreSQL a value longer than
its column failed the entry, every entry group-committed beside it, and the request (500),
though the change it recorded might have been made already."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifi.exchange.audit import Actor
from aifi.exchange.schemas import OrganisationKind


def test_a_result_with_the_longest_name_allowed_is_stored_and_audited(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job, claim, made = exchange.worked_on(hospital, vendor, make_ct(slices=1), tmp_path / "out")
    sr = made.files[0].path
    name = "r" * 196 + ".dcm"  # 200 characters: the longest the exchange takes
    stored = exchange.client.put(
        f"/jobs/{job['id']}/results/{name}",
        params={"complete": "true"},
        content=sr.read_bytes(),
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert stored.status_code == 201, stored.text
    audit = exchange.client.get("/audit", headers=exchange.operator.headers).json()
    [entry] = [e for e in audit if e["object_type"] == "result" and e["action"] == "create"]
    assert len(entry["object_id"]) == 200 and entry["object_id"].endswith("…")
    assert entry["object_id"].startswith(f"{job['id']}/rrr")


def test_an_over_long_entry_fails_neither_itself_nor_those_stored_beside_it(
    exchange: Any,
) -> None:
    audit = exchange.client.app.state.services.audit
    stranger = Actor("x" * 100, OrganisationKind.hospital)
    audit.record(stranger, "login", "user", "u" * 300, outcome="refused")
    entries = exchange.client.get("/audit", headers=exchange.operator.headers).json()
    [entry] = [e for e in entries if e["action"] == "login"]
    assert entry["object_id"] == "u" * 199 + "…"
    assert entry["organisation_id"] == "x" * 63 + "…"
