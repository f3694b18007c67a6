"""A heartbeat that fails is tried again soon only when the trouble passes by itself (the
exchange or the way to it down): within a second, so that a lease outlives a short outage. A
refusal (the vendor's key revoked mid-job, a 4xx, a 500) is asked again only at the next
interval: each may be an entry in the exchange's access log, and the same call meets the same
answer. The exchange's answers are given by a stand-in client, as the heartbeat thread sees
them after the client's own retries."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from aifi.vendor import ExchangeHTTPError, Lease
from aifi.vendor.worker import BEAT_AGAIN_AFTER, _Heartbeat

EVERY = 3.0
LEASE = Lease(job={"id": "j", "attempts": 1}, token="t", inputs=[], lease_seconds=12)


class Failing:
    """A client whose every heartbeat fails with `error`; `second` is set at the second."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[float] = []
        self.second = threading.Event()

    def heartbeat(self, lease: Lease) -> Any:
        self.calls.append(time.monotonic())
        if len(self.calls) == 2:
            self.second.set()
        raise self.error


def gap_between_the_first_two_beats(error: Exception) -> float:
    client = Failing(error)
    with _Heartbeat(client, LEASE, EVERY):  # type: ignore[arg-type]
        assert client.second.wait(timeout=EVERY * 3), "no second heartbeat"
    return client.calls[1] - client.calls[0]


@pytest.mark.parametrize("status", [401, 404, 500])
def test_a_refused_heartbeat_waits_its_interval(status: int) -> None:
    refused = ExchangeHTTPError(status, "refused", "POST", "/jobs/j/heartbeat")
    assert gap_between_the_first_two_beats(refused) >= EVERY - 0.05


@pytest.mark.parametrize(
    "trouble",
    [
        ExchangeHTTPError(503, "the exchange's database is unavailable", "POST", "/h"),
        httpx.ConnectError("connection refused"),
    ],
    ids=["503", "connection refused"],
)
def test_a_heartbeat_that_met_an_outage_is_tried_again_soon(trouble: Exception) -> None:
    gap = gap_between_the_first_two_beats(trouble)
    assert BEAT_AGAIN_AFTER - 0.05 <= gap < EVERY, gap
