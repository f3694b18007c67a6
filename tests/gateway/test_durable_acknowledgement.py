"""What the exchange is told cannot be taken back: before the gateway acknowledges a job, what
it recorded of bringing the job home is on the disk, not only in the state's write-ahead log
(which, with `synchronous=NORMAL`, a power cut could take back)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support.hospital import Hospital
from support.restore import bring_home


def test_the_state_is_on_the_disk_before_a_job_is_acknowledged(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    hospital.send_due()
    [job] = hospital.jobs()
    events: list[tuple[str, Any]] = []
    state = hospital.gateway.state
    make_durable = state.make_durable

    def synced() -> None:
        make_durable()
        [local] = hospital.jobs()
        events.append(("synced", local["state"]))

    monkeypatch.setattr(state, "make_durable", synced)
    passing = hospital.network.handle_request

    def watched(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/acknowledge"):
            events.append(("acknowledged", request.url.path))
        return passing(request)

    monkeypatch.setattr(hospital.network, "handle_request", watched)
    bring_home(hospital, job["exchange_job_id"])
    assert events == [("synced", "delivered"), ("acknowledged", "/jobs/acknowledge")]
