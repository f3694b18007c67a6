"""Study assembly: a sender that pauses mid-study longer than the quiet time is not cut off;
the study is complete when its association ends and the quiet time has passed after that."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.gateway.dimse import NoDelayAE
from aifi.phantoms import write_study
from support.national import National, gateway_gauge, started_gateway

pytestmark = pytest.mark.peer
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_a_pause_inside_one_association_does_not_cut_the_study(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=9, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    with started_gateway(tmp_path, national, metrics_port=0) as gateway:
        ae = NoDelayAE(ae_title="SLOW_CT")
        ae.add_requested_context(CT, [EXPLICIT_LE])
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="AIFI_GW")
        assert assoc.is_established
        for file in files[:8]:
            assert assoc.send_c_store(file).Status == 0
        # The modality pauses for more than three quiet times with its association open: the
        # gateway must not take the half study as complete.
        assert not gateway.wait_until(lambda: bool(gateway.jobs()), timeout=1.0)
        # Past its quiet time, but its sender is still connected: waiting, not held up.
        assert gateway_gauge(gateway, "aifi_gateway_assembly_overdue_seconds") == 0.0
        for file in files[8:]:
            assert assoc.send_c_store(file).Status == 0
        assoc.release()
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] in (["submitted"], ["delivered"]),
            timeout=60,
        ), gateway.jobs()
    with national.api() as api:
        [job] = api.get("/jobs").json()
    assert job["input_count"] == len(files)
