"""A PACS that corrects a study sends an instance again under another Study Instance UID. The
instance is the new study's from then on: its copy under the old study goes (it would outlive
that study's retention), and a restart's recovery of the spool does not take it back to the
old study, which would send that study again and leave the new one without it."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from support.national import National, gateway_config

pytestmark = pytest.mark.peer


def test_an_instance_sent_again_under_another_study_is_that_study_s_alone(
    national: National, tmp_path: Path
) -> None:
    write_study("ct-head", tmp_path / "study", seed=6, size="small")
    datasets = [pydicom.dcmread(f) for f in sorted((tmp_path / "study").rglob("*.dcm"))[:3]]
    old_study = str(datasets[0].StudyInstanceUID)
    new_study = old_study + ".99"
    path = gateway_config(tmp_path, national, 0, national.pacs().dicom_port, quiet_seconds=0.0)

    def gateway() -> Gateway:  # not started: the test turns its wheels
        made = Gateway(load_config(path))
        made.incoming.mkdir(exist_ok=True)
        return made

    def receive(into: Gateway, dataset: pydicom.Dataset, name: str) -> None:
        arrived = into.incoming / name
        dataset.save_as(arrived, enforce_file_format=True)
        assert into.receive(arrived, "CT_SCANNER", 1).stored
        into.sending_ended(1, "CT_SCANNER")

    def per_study(of: Gateway) -> dict[str, int]:
        rows = of.state.query("SELECT study_uid, COUNT(*) n FROM instances GROUP BY study_uid")
        return {row["study_uid"]: row["n"] for row in rows}

    first = gateway()
    for number, dataset in enumerate(datasets):
        receive(first, dataset, f"a{number}.dcm")
    assert first.assemble_due(time.time() + 5) == 1
    moved = datasets[2]
    moved.StudyInstanceUID = new_study
    receive(first, moved, "b.dcm")
    assert per_study(first) == {old_study: 2, new_study: 1}
    assert len(list((first.spool / old_study).glob("*.dcm"))) == 2  # its old copy is gone
    first.close()
    # A crash between the move's commit and the old copy's removal leaves the copy behind.
    left = first.spool / old_study / f"{moved.SOPInstanceUID}.dcm"
    moved.StudyInstanceUID = old_study
    moved.save_as(left, enforce_file_format=True)

    again = gateway()  # a restart
    try:
        assert again.recover_spool() == 0
        assert not left.exists()
        assert per_study(again) == {old_study: 2, new_study: 1}
        assert again.assemble_due(time.time() + 5) == 1  # the new study's, and no other
        rounds = again.state.query("SELECT study_uid, round FROM jobs ORDER BY id")
        assert [(row["study_uid"], row["round"]) for row in rounds] == [
            (old_study, 1), (new_study, 1)
        ]  # fmt: skip
    finally:
        again.close()
