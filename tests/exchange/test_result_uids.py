"""A result is a new object in a series of its own. A product that copied its source's header
into its result (SOP Instance UID, or Series Instance UID) is refused at upload with the rule
named: mapped back at the hospital, it would take the hospital's own image's UID (the PACS
keeps one of the two) or be filed among the images as they were acquired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize(
    ("keyword", "named"),
    [("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
     ("SeriesInstanceUID", "Series Instance UID (0020,000E)")],
)  # fmt: skip
def test_a_result_with_an_input_s_uid_is_refused_with_its_rule(
    exchange: Any,
    parties: dict[str, Any],
    make_ct: Any,
    tmp_path: Path,
    keyword: str,
    named: str,
    large: bool,
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=2)
    source = pydicom.dcmread(study[1], stop_before_pixels=True)
    job = exchange.job(hospital, "product-a", str(source.StudyInstanceUID), instances=2)
    for path in study:
        assert exchange.upload(hospital, job["id"], path).status_code == 201
    claim = exchange.claim(vendor)
    assert claim is not None
    lease = {"X-Lease-Token": claim["lease_token"], **vendor.headers}
    out = tmp_path / "out"
    out.mkdir()
    report = pydicom.dcmread(
        tissue_volume(JobContext(job={}, inputs=study, output_dir=out)).files[0].path
    )
    if large:  # above 1 MiB: checked before the transaction that records it
        block = report.private_block(0x0011, "AIFI TEST", create=True)
        block.add_new(0x01, "OB", b"\0" * (2 << 20))
    own = report[keyword].value

    def upload(uid: str) -> Any:
        """The report under `uid`, completing the job."""
        report[keyword].value = uid
        report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
        report.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
        return exchange.client.put(
            f"/jobs/{job['id']}/results/sr.dcm",
            params={"complete": "true"},
            content=(tmp_path / "sr.dcm").read_bytes(),
            headers=lease,
        )

    refused = upload(source[keyword].value)
    assert refused.status_code == 422, refused.text
    assert f"rule 'own-uids', {named}" in refused.json()["detail"]
    held = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert held["state"] == "accepted"
    listed = exchange.client.get(f"/jobs/{job['id']}/results", headers=lease).json()
    assert listed == []

    stored = upload(own)
    assert stored.status_code == 201, stored.text
    done = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert done["state"] == "completed"
