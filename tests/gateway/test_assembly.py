"""Study assembly: a sender that pauses mid-study longer than the quiet time is not cut off;
the study is complete when its association ends and the quiet time has passed after that."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.dimse import NoDelayAE
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from support.national import National, gateway_config
from support.peers import free_port

pytestmark = pytest.mark.peer
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_a_pause_inside_one_association_does_not_cut_the_study(
    national: National, tmp_path: Path
) -> None:
    port = free_port()
    path = gateway_config(tmp_path, national, port, 1, quiet_seconds=0.3)
    config = yaml.safe_load(path.read_text())
    config["pacs"] = []
    path.write_text(yaml.safe_dump(config))
    write_study("ct-head", tmp_path / "study", seed=9, size="small")
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        ae = NoDelayAE(ae_title="SLOW_CT")
        ae.add_requested_context(CT, [EXPLICIT_LE])
        assoc = ae.associate("127.0.0.1", port, ae_title="AIFI_GW")
        assert assoc.is_established
        for file in files[:8]:
            assert assoc.send_c_store(file).Status == 0
        # The modality pauses for more than three quiet times with its association open: the
        # gateway must not take the half study as complete.
        assert not gateway.wait_until(lambda: bool(gateway.jobs()), timeout=1.0)
        for file in files[8:]:
            assert assoc.send_c_store(file).Status == 0
        assoc.release()
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] in (["submitted"], ["delivered"]),
            timeout=60,
        ), gateway.jobs()
    finally:
        gateway.stop()
    with national.api() as api:
        [job] = api.get("/jobs").json()
    assert job["input_count"] == len(files)
