"""API keys listed and revoked through the exchange's HTTP API, as docs/hospital-guide.md §7
has a hospital hand over to a new key: rotate, put the new key in place, revoke the old one.

A revoked key must stop working at once on the replica that revoked it and within
`KEY_CACHE_SECONDS` on every other; an organisation's last live key is never revoked (it
would be locked out); no organisation learns of another's keys; all of it is on record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.auth import KEY_CACHE_SECONDS, KeyCache
from aifi.exchange.settings import ExchangeSettings
from scale.exchange_api import OPERATOR_KEY, Exchange, Org


def rotated(exchange: Exchange, org: Org) -> Org:
    """The organisation with a new key, made with its current one (both live now)."""
    response = exchange.client.post(f"/organisations/{org.id}/keys", headers=org.headers)
    assert response.status_code == 201, response.text
    return Org(org.id, response.json()["api_key"])


def keys_of(exchange: Exchange, org_id: str, caller: Org) -> list[dict[str, Any]]:
    response = exchange.client.get(f"/organisations/{org_id}/keys", headers=caller.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


def revoke(exchange: Exchange, org_id: str, key_id: int, caller: Org) -> Any:
    return exchange.client.delete(f"/organisations/{org_id}/keys/{key_id}", headers=caller.headers)


def works(client: TestClient, org: Org) -> bool:
    """Whether the exchange takes the organisation's key (a read every tenant may make)."""
    status = client.get("/products", headers=org.headers).status_code
    assert status in (200, 401), status
    return status == 200


def audit_of(exchange: Exchange, object_id: str) -> list[tuple[str, str, str, str]]:
    """(organisation, action, outcome, detail) of the api-key entries about `object_id`."""
    entries = exchange.client.get(
        "/audit", params={"limit": 5000}, headers=exchange.operator.headers
    ).json()
    return [
        (e["organisation_id"], e["action"], e["outcome"], e["detail"])
        for e in entries
        if e["object_type"] == "api-key" and e["object_id"] == object_id
    ]


def test_a_hospital_rotates_then_revokes_its_old_key_which_stops_working_at_once(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    old = parties["hospital_a"]
    assert works(exchange.client, old)  # verified: this replica now answers it from memory
    new = rotated(exchange, old)

    listed = keys_of(exchange, old.id, new)
    assert [(k["label"], k["revoked_at"]) for k in listed] == [
        ("initial", None),
        ("rotated", None),
    ]
    assert set(listed[0]) == {"id", "organisation_id", "label", "created_at", "revoked_at"}
    first, second = (k["id"] for k in listed)

    answer = revoke(exchange, old.id, first, new)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == first and answer.json()["revoked_at"] is not None

    assert not works(exchange.client, old)  # the next request, not ten seconds later
    assert works(exchange.client, new)
    after = {k["id"]: k["revoked_at"] for k in keys_of(exchange, old.id, new)}
    assert after == {first: answer.json()["revoked_at"], second: None}

    assert audit_of(exchange, f"{old.id}/{first}") == [(old.id, "delete", "success", "revoked")]
    listings = audit_of(exchange, old.id)
    assert listings.count((old.id, "search", "success", "")) == 2


def test_a_rotation_answers_the_new_keys_id_by_which_the_old_ones_are_revoked(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    """After a second rotation two listed keys are `rotated`: the id the rotation answered
    tells which one is new, and every other key is revoked by its listed id."""
    old = parties["hospital_a"]
    between = rotated(exchange, old)
    answer = exchange.client.post(f"/organisations/{old.id}/keys", headers=old.headers)
    assert answer.status_code == 201, answer.text
    assert set(answer.json()) == {"api_key", "id"}
    new, new_id = Org(old.id, answer.json()["api_key"]), answer.json()["id"]

    listed = keys_of(exchange, old.id, new)
    assert [k["label"] for k in listed] == ["initial", "rotated", "rotated"]
    assert [k["id"] for k in listed].count(new_id) == 1
    assert listed[-1]["id"] == new_id  # the newest, as the listing goes oldest first
    for key in listed:
        if key["id"] != new_id:
            answered = revoke(exchange, old.id, key["id"], new)
            assert answered.status_code == 200, answered.text

    assert not works(exchange.client, old) and not works(exchange.client, between)
    assert works(exchange.client, new)
    live = [k["id"] for k in keys_of(exchange, old.id, new) if k["revoked_at"] is None]
    assert live == [new_id]


def test_the_key_making_the_request_may_revoke_itself_while_another_is_live(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    old = parties["vendor_a"]
    new = rotated(exchange, old)
    first = keys_of(exchange, old.id, old)[0]["id"]

    assert revoke(exchange, old.id, first, old).status_code == 200
    assert not works(exchange.client, old)
    assert works(exchange.client, new)


def test_another_organisation_can_neither_list_nor_revoke_its_keys(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    owner, other = parties["hospital_a"], parties["hospital_b"]
    rotated(exchange, owner)
    key_id = keys_of(exchange, owner.id, owner)[0]["id"]
    client = exchange.client

    # As for an organisation that does not exist: nothing tells that hospital-a has keys.
    for org_id in (owner.id, "no-such-org"):
        listing = client.get(f"/organisations/{org_id}/keys", headers=other.headers)
        assert (listing.status_code, listing.json()) == (
            404,
            {"detail": f"no organisation {org_id!r}"},
        )
        revoked = revoke(exchange, org_id, key_id, other)
        assert (revoked.status_code, revoked.json()) == (
            404,
            {"detail": f"no organisation {org_id!r}"},
        )
    # Its own path with another's key id: as for a key id that does not exist.
    for wrong_id in (key_id, 999_999):
        revoked = revoke(exchange, other.id, wrong_id, other)
        assert (revoked.status_code, revoked.json()) == (
            404,
            {"detail": f"no API key {wrong_id} of organisation {other.id!r}"},
        )

    assert works(client, owner)
    assert [k["revoked_at"] for k in keys_of(exchange, owner.id, owner)] == [None, None]
    # Each attempt on record once (the app does not log the refused change a second time).
    assert audit_of(exchange, f"{owner.id}/{key_id}") == [
        (other.id, "delete", "refused", f"no organisation {owner.id!r}")
    ]
    assert (
        audit_of(exchange, owner.id).count(
            (other.id, "search", "refused", f"no organisation {owner.id!r}")
        )
        == 1
    )
    assert audit_of(exchange, f"{other.id}/{key_id}") == [
        (other.id, "delete", "refused", f"no API key {key_id} of organisation {other.id!r}")
    ]


def test_the_last_live_key_is_not_revoked_and_keeps_working(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    hospital = parties["hospital_a"]
    [only] = keys_of(exchange, hospital.id, hospital)

    for caller in (hospital, exchange.operator):
        refused = revoke(exchange, hospital.id, only["id"], caller)
        assert refused.status_code == 409
        assert "last live key" in refused.json()["detail"]
        assert f"rotate first (POST /organisations/{hospital.id}/keys)" in refused.json()["detail"]
    assert works(exchange.client, hospital)
    assert keys_of(exchange, hospital.id, hospital) == [only]
    refusals = audit_of(exchange, f"{hospital.id}/{only['id']}")
    assert [(who, action, outcome) for who, action, outcome, _ in refusals] == [
        (hospital.id, "delete", "refused"),
        ("operator", "delete", "refused"),
    ]

    # After a hand-over the new key is the last one: revoking it too is refused.
    new = rotated(exchange, hospital)
    assert revoke(exchange, hospital.id, only["id"], new).status_code == 200
    newest = keys_of(exchange, hospital.id, new)[-1]["id"]
    assert revoke(exchange, hospital.id, newest, new).status_code == 409
    assert works(exchange.client, new)


def test_revoking_a_revoked_key_answers_the_same(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    old = parties["hospital_a"]
    new = rotated(exchange, old)
    first = keys_of(exchange, old.id, new)[0]["id"]

    once = revoke(exchange, old.id, first, new)
    twice = revoke(exchange, old.id, first, new)  # a retry whose answer was lost
    # Not 409, though the new key is now the only live one: this revocation changes nothing.
    assert (once.status_code, twice.status_code) == (200, 200)
    assert twice.json() == once.json()
    assert [outcome for _, _, outcome, _ in audit_of(exchange, f"{old.id}/{first}")] == [
        "success",
        "success",
    ]
    assert works(exchange.client, new)


def test_the_operator_lists_and_revokes_a_hospitals_key(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    old = parties["hospital_a"]
    assert works(exchange.client, old)
    new = rotated(exchange, old)
    listed = keys_of(exchange, old.id, exchange.operator)
    assert [k["label"] for k in listed] == ["initial", "rotated"]
    first = listed[0]["id"]

    answer = revoke(exchange, old.id, first, exchange.operator)
    assert answer.status_code == 200, answer.text
    assert not works(exchange.client, old)
    assert works(exchange.client, new)
    assert audit_of(exchange, f"{old.id}/{first}") == [("operator", "delete", "success", "revoked")]
    # The operator's own keys: the one written to operator.key and the configured one.
    own = keys_of(exchange, "operator", exchange.operator)
    assert [k["label"] for k in own] == ["initial", "configured"]
    assert revoke(exchange, "operator", own[0]["id"], exchange.operator).status_code == 200
    # AIFI_OPERATOR_KEY is now the operator's last key: it stays, so the operator is not locked out.
    assert revoke(exchange, "operator", own[1]["id"], exchange.operator).status_code == 409
    assert works(exchange.client, exchange.operator)


@contextmanager
def replica(settings: ExchangeSettings) -> Iterator[TestClient]:
    """A second exchange app on the same database and blob store, as another replica."""
    with TestClient(create_app(settings)) as client:
        yield client


class Clock:
    """A monotonic clock the test moves on by hand, so that a cache's lifetime passes
    without waiting for it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_another_replica_stops_taking_a_revoked_key_within_the_cache_lifetime(
    exchange: Exchange, parties: dict[str, Org], settings: ExchangeSettings
) -> None:
    old = parties["hospital_a"]
    new = rotated(exchange, old)
    first = keys_of(exchange, old.id, new)[0]["id"]
    with replica(settings) as other:
        clock = Clock()
        other.app.state.services.keys = KeyCache(clock=clock)
        assert works(other, old)  # the other replica now answers the old key from memory

        assert revoke(exchange, old.id, first, new).status_code == 200
        assert not works(exchange.client, old)  # the revoking replica: at once
        # The other replica answers it from memory, with no database lookup, for at most
        # KEY_CACHE_SECONDS (the documented bound) …
        clock.now += KEY_CACHE_SECONDS - 0.5
        assert works(other, old)
        # … and refuses it once that has passed.
        clock.now += 1.0
        assert not works(other, old)
        assert works(other, new)

    # A replica that had not verified the key refuses it from the start.
    with replica(settings) as fresh:
        assert not works(fresh, old)
        assert works(fresh, new)


def test_a_replica_told_to_keep_no_keys_refuses_a_key_revoked_elsewhere_at_once(
    exchange: Exchange, parties: dict[str, Org], settings: ExchangeSettings
) -> None:
    """`AIFI_KEY_CACHE_SECONDS=0`: the operator who wants no window after a revocation gets
    none, at the price of a lookup per request."""
    old = parties["hospital_a"]
    new = rotated(exchange, old)
    first = keys_of(exchange, old.id, new)[0]["id"]
    with replica(settings.model_copy(update={"key_cache_seconds": 0.0})) as other:
        assert works(other, old)
        assert revoke(exchange, old.id, first, new).status_code == 200
        assert not works(other, old)  # no memory of it to answer from
        assert works(other, new)


def test_a_revoked_operator_key_stays_revoked_when_the_exchange_restarts(
    exchange: Exchange, settings: ExchangeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """AIFI_OPERATOR_KEY is stored at every start unless known: a revoked one must not come
    back with the next restart (a leaked operator key is the worst to leak)."""
    operator = exchange.operator
    new = rotated(exchange, operator)
    configured = next(k for k in keys_of(exchange, "operator", new) if k["label"] == "configured")
    assert revoke(exchange, "operator", configured["id"], new).status_code == 200
    assert not works(exchange.client, operator)

    with (
        caplog.at_level(logging.WARNING, logger="aifi.exchange.services"),
        replica(settings) as restarted,
    ):
        assert not works(restarted, Org("operator", OPERATOR_KEY))
        assert works(restarted, new)
    assert f"AIFI_OPERATOR_KEY is API key {configured['id']}, revoked" in caplog.text
