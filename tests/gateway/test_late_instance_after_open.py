"""A job's upload went through and opened the exchange's job, but its end was not recorded
(the disclosure log's disk was full; or the answer was lost). An instance that arrives
before the retry must not leave the job re-declaring another count to the opened job for
ever: the job stands as it opened, on record, and the late instance goes with the study's
next round."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.disclosures import NotRecorded
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from support.national import National, gateway_config
from support.peers import free_port

pytestmark = pytest.mark.peer


def test_a_late_instance_before_the_retry_leaves_the_opened_job_as_it_opened(
    national: National, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study("ct-head", tmp_path / "study", seed=6, size="small")
    *files, late = sorted((tmp_path / "study").rglob("*.dcm"))
    path = gateway_config(
        tmp_path, national, free_port(), national.pacs().dicom_port, quiet_seconds=0.0
    )
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_config(path))  # not started: the test turns its wheels
    gateway.incoming.mkdir(exist_ok=True)

    def receive(file: Path) -> None:
        arrived = gateway.incoming / file.name
        shutil.copy(file, arrived)
        assert gateway.receive(arrived, "CT_SCANNER", 1).stored
        gateway.sending_ended(1, "CT_SCANNER")

    try:
        for file in files:
            receive(file)
        assert gateway.assemble_due(time.time() + 5) == 1
        [job] = gateway.state.pending_jobs(time.time() + 1)
        with monkeypatch.context() as full:
            record = gateway.disclosures.record

            def disk_full(*args: object, **kwargs: object) -> None:
                raise NotRecorded("the disclosure log cannot be written: disk full")

            full.setattr(gateway.disclosures, "record", disk_full)
            gateway.submit(job)
            assert gateway.disclosures.record is not record
        first = gateway.state.job(int(job["id"]))
        assert first["state"] == "pending" and first["exchange_job_id"]
        with national.api() as api:
            remote = api.get(f"/jobs/{first['exchange_job_id']}").json()
        assert remote["inputs_complete"] and remote["instances"] == len(files)

        receive(late)  # a late slice of the same series: the study's next round
        gateway.submit(gateway.state.job(int(job["id"])))

        done = gateway.state.job(int(job["id"]))
        assert done["state"] == "submitted", done["reason"]
        assert done["exchange_job_id"] == first["exchange_job_id"]
        [disclosed] = [
            entry for entry in gateway.disclosures.entries()
            if entry.action == "disclosed"
        ]  # fmt: skip
        assert f"{len(files)} instance(s)" in disclosed.detail
        assert "opened by an earlier attempt" in disclosed.detail
        rounds = gateway.state.query("SELECT round, state FROM jobs ORDER BY round")
        assert [(row["round"], row["state"]) for row in rounds] == [(1, "submitted")]
        assert gateway.assemble_due(time.time() + 5) == 1  # the late slice's round
        second = gateway.state.pending_jobs(time.time() + 1)
        assert [row["round"] for row in second] == [2]
    finally:
        gateway.close()
