"""A claim whose answer was lost (a replica killed after its commit, a load balancer answering
502/504) is asked again with its claim key and `resume`: the worker gets the job the exchange
took for it, not a second one while the first stays held by a lease nobody has."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from aifi.vendor import VendorClient
from scale.exchange_api import Exchange, Org

KEY = "a-claim-key_0123456789"
HELD = ("accepted", "in-progress")


def two_ready_jobs(exchange: Exchange, hospital: Org, make_ct: Any) -> list[dict[str, Any]]:
    return [exchange.ready_job(hospital, "product-a", make_ct(slices=1)) for _ in range(2)]


def held_jobs(exchange: Exchange, vendor: Org) -> list[dict[str, Any]]:
    listed = exchange.client.get("/jobs", params={"state": HELD}, headers=vendor.headers)
    assert listed.status_code == 200, listed.text
    return list(listed.json())


#: How the replica's one count of the jobs ended long ago begins (aifi.exchange.metrics).
WARM_UP_COUNT = "SELECT jobs.state, count(*)"


@contextmanager
def statements(exchange: Exchange) -> Iterator[list[str]]:
    """The SQL the exchange sends meanwhile."""
    sent: list[str] = []

    def keep(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Not the replica's count of ended jobs, which it takes once as it starts (`_warm`).
        if not statement.startswith(WARM_UP_COUNT):
            sent.append(statement)

    engine = exchange.client.app.state.services.db.engine
    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def test_a_resumed_claim_answers_the_job_its_key_took(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    two_ready_jobs(exchange, hospital, make_ct)
    first = exchange.claim(vendor, claim_key=KEY)
    again = exchange.claim(vendor, claim_key=KEY, resume=True)
    assert first is not None and again is not None
    assert first["lease_token"] == KEY
    assert (again["job"]["id"], again["lease_token"]) == (first["job"]["id"], KEY)
    assert [i["sop_instance_uid"] for i in again["inputs"]] == [
        i["sop_instance_uid"] for i in first["inputs"]
    ]
    [held] = held_jobs(exchange, vendor)
    assert held["id"] == first["job"]["id"] and held["attempts"] == 1


def test_a_resumed_claim_whose_key_holds_nothing_claims_as_usual(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    jobs = two_ready_jobs(exchange, hospital, make_ct)
    claimed = exchange.claim(vendor, claim_key=KEY, resume=True)
    assert claimed is not None and claimed["lease_token"] == KEY
    assert claimed["job"]["id"] in {job["id"] for job in jobs}
    assert [job["id"] for job in held_jobs(exchange, vendor)] == [claimed["job"]["id"]]


@pytest.mark.parametrize("key", ["short-key", "a-claim-key_01234567+9", "x" * 65])
def test_a_claim_key_of_the_wrong_shape_is_refused(
    exchange: Exchange, parties: dict[str, Org], key: str
) -> None:
    refused = exchange.client.post(
        "/jobs/claim", json={"claim_key": key}, headers=parties["vendor_a"].headers
    )
    assert refused.status_code == 422, refused.text


@pytest.mark.usefixtures("quiet_replica")
def test_a_first_claim_with_a_key_sends_no_more_statements(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    two_ready_jobs(exchange, hospital, make_ct)
    with statements(exchange) as keyless:
        assert exchange.claim(vendor) is not None
    with statements(exchange) as keyed:
        assert exchange.claim(vendor, claim_key=KEY) is not None
    assert keyed == keyless


class LosesFirstClaimAnswer(httpx.BaseTransport):
    """The in-process exchange, reached as over a network that breaks off once: the first
    claim reaches the exchange and commits, and its answer never comes back."""

    def __init__(self, exchange: TestClient) -> None:
        self._exchange = exchange
        self.claims = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._exchange.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        if request.url.path == "/jobs/claim":
            self.claims += 1
            if self.claims == 1:
                raise httpx.ReadError("the connection broke off", request=request)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )


def test_the_sdk_gets_the_job_a_claim_whose_answer_was_lost_took(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    two_ready_jobs(exchange, hospital, make_ct)
    network = LosesFirstClaimAnswer(exchange.client)
    with VendorClient("http://exchange", vendor.key, transport=network) as client:
        lease = client.claim(["product-a"], wait_seconds=0)
    assert lease is not None and network.claims == 2
    [held] = held_jobs(exchange, vendor)
    assert held["id"] == lease.job_id and held["attempts"] == 1
    heartbeat = exchange.client.post(
        f"/jobs/{lease.job_id}/heartbeat", json={"lease_token": lease.token}, headers=vendor.headers
    )
    assert heartbeat.status_code == 200, heartbeat.text
