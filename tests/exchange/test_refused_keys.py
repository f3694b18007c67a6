"""Requests refused before any route ran are in the access log: a missing, unknown or revoked
key (401), and a body the exchange could not even parse (422).

A refused key names the key as the operator knows it (a revoked key's id, an unknown key's
short fingerprint), never the key or the hash it is stored by; a flood of refused keys is
counted, not stored request by request (see aifi.exchange.refused_keys).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from fastapi import FastAPI

from aifi.exchange.refused_keys import KEYS_PER_WINDOW, WINDOW_SECONDS, RefusedKeys
from scale.exchange_api import Exchange, Org


def entries(exchange: Exchange) -> list[dict[str, Any]]:
    """The whole access log, as the operator reads it."""
    answer = exchange.client.get(
        "/audit", params={"limit": 5000}, headers=exchange.operator.headers
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def refused_keys(exchange: Exchange) -> list[tuple[str, str, str, str]]:
    """(organisation, role, key, detail) of the refused logins with a key."""
    return [
        (e["organisation_id"], e["role"], e["object_id"], e["detail"])
        for e in entries(exchange)
        if (e["action"], e["object_type"], e["outcome"]) == ("login", "credential", "refused")
    ]


def refusals_by(exchange: Exchange, organisation_id: str) -> list[tuple[str, str, str, str]]:
    """(action, object type, object id, detail) of an organisation's refused accesses."""
    return [
        (e["action"], e["object_type"], e["object_id"], e["detail"])
        for e in entries(exchange)
        if e["organisation_id"] == organisation_id and e["outcome"] == "refused"
    ]


def counter(exchange: Exchange) -> RefusedKeys:
    """The replica's count of refused keys (its clock for a test to move on)."""
    app = exchange.client.app
    assert isinstance(app, FastAPI)
    found: RefusedKeys = app.state.refused_keys
    return found


def a_stranger() -> str:
    return "aifi_" + secrets.token_urlsafe(32)


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def test_a_request_without_a_key_or_with_something_else_is_logged(exchange: Exchange) -> None:
    assert exchange.client.get("/jobs").status_code == 401
    password = "Bearer hunter2-not-a-key"
    assert exchange.client.get("/products", headers={"Authorization": password}).status_code == 401
    assert refused_keys(exchange) == [
        ("anonymous", "none", "none", "GET /jobs: unauthorised: no API key"),
        ("anonymous", "none", "not-an-api-key", "GET /products: unauthorised: not an AIFI API key"),
    ]
    assert "hunter2" not in json.dumps(entries(exchange))


def test_an_unknown_key_is_logged_by_its_fingerprint_never_itself(exchange: Exchange) -> None:
    stranger = a_stranger()
    answer = exchange.client.post(
        "/jobs/claim", json={}, headers={"Authorization": f"Bearer {stranger}"}
    )
    assert answer.status_code == 401 and answer.json() == {"detail": "unauthorised"}
    assert refused_keys(exchange) == [
        (
            "anonymous",
            "none",
            fingerprint(stranger),
            "POST /jobs/claim: unauthorised: unknown API key",
        )
    ]
    log = json.dumps(entries(exchange))
    assert stranger not in log and hashlib.sha256(stranger.encode()).hexdigest() not in log


def test_a_revoked_key_is_logged_as_its_organisations_by_its_id(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    old = parties["hospital_a"]
    rotation = exchange.client.post(f"/organisations/{old.id}/keys", headers=old.headers)
    new = Org(old.id, rotation.json()["api_key"])
    keys = exchange.client.get(f"/organisations/{old.id}/keys", headers=new.headers).json()
    old_id = keys[0]["id"]
    revoked = exchange.client.delete(f"/organisations/{old.id}/keys/{old_id}", headers=new.headers)
    assert revoked.status_code == 200, revoked.text

    assert exchange.client.get("/products", headers=old.headers).status_code == 401
    assert refused_keys(exchange) == [
        (
            old.id,
            "hospital",
            f"{old.id}/{old_id}",
            f"GET /products: unauthorised: revoked API key {old_id} of organisation {old.id!r}",
        )
    ]
    log = json.dumps(entries(exchange))
    assert old.key not in log and hashlib.sha256(old.key.encode()).hexdigest() not in log


def test_a_flood_of_one_bad_key_is_one_entry_and_a_count(exchange: Exchange) -> None:
    stranger = {"Authorization": f"Bearer {a_stranger()}"}
    for n in range(50):
        path = "/jobs" if n % 5 else "/products"
        assert exchange.client.get(path, headers=stranger).status_code == 401
    assert [detail for *_, detail in refused_keys(exchange)] == [
        "GET /products: unauthorised: unknown API key"
    ]

    # The window closes: what it counted is stored by the next round.
    counter(exchange).clock = lambda: time.monotonic() + WINDOW_SECONDS
    counter(exchange).flush()
    first, count = refused_keys(exchange)
    assert count[:3] == first[:3]
    assert count[3].startswith("refused 49 more times from ")
    assert count[3].endswith("(unknown API key): GET /jobs ×40, GET /products ×9")
    # The next refusal opens a window of its own.
    assert exchange.client.get("/jobs", headers=stranger).status_code == 401
    assert len(refused_keys(exchange)) == 3


def test_a_flood_of_different_bad_keys_is_bounded_too(exchange: Exchange) -> None:
    keys = [a_stranger() for _ in range(KEYS_PER_WINDOW + 10)]
    for key in keys:
        refused = exchange.client.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401
    own = [fingerprint(key) for key in keys[:KEYS_PER_WINDOW]]
    assert [key for _, _, key, _ in refused_keys(exchange)] == [*own, "*"]
    counter(exchange).flush(everything=True)  # as the replica stops
    logged = refused_keys(exchange)
    assert [key for _, _, key, _ in logged] == [*own, "*", "*"]
    shared, count = logged[-2:]
    assert shared[3] == (
        f"GET /jobs: unauthorised: unknown API key; more than {KEYS_PER_WINDOW} keys refused "
        f"within {WINDOW_SECONDS:g} s here"
    )
    assert count[3].startswith("refused 9 more times")
    assert count[3].endswith(": GET /jobs (unknown API key) ×9")


def test_a_body_that_does_not_parse_is_a_refusal_naming_the_caller(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    hospital = parties["hospital_a"]
    headers = {**hospital.headers, "Content-Type": "application/json"}
    broken = exchange.client.post("/jobs", content=b'{"product_id": ', headers=headers)
    assert broken.status_code == 422, broken.text
    invalid = exchange.client.post("/jobs", json={"product_id": "product-a"}, headers=headers)
    assert invalid.status_code == 422, invalid.text
    job = exchange.job(hospital, "product-a", "2.25.7")
    cancel = f"/jobs/{job['id']}/cancel"
    assert exchange.client.post(cancel, content=b"{", headers=headers).status_code == 422
    assert refusals_by(exchange, hospital.id) == [
        ("create", "job", "", "POST /jobs: invalid request: body.15: JSON decode error"),
        (
            "create",
            "job",
            "",
            "POST /jobs: invalid request: body.study_uid: Field required; "
            "body.idempotency_key: Field required",
        ),
        ("update", "job", job["id"], "POST /jobs/{job_id}/cancel: invalid request: "
         "body.1: JSON decode error"),
    ]  # fmt: skip
    # A key that is none is refused as such, whatever the body.
    stranger = {"Authorization": f"Bearer {a_stranger()}", "Content-Type": "application/json"}
    assert exchange.client.post("/jobs", content=b"{", headers=stranger).status_code == 401
    assert [detail for *_, detail in refused_keys(exchange)] == [
        "POST /jobs: unauthorised: unknown API key"
    ]
