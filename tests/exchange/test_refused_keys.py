"""Requests refused before any route ran are in the access log: a missing, unknown or revoked
key (401).

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
