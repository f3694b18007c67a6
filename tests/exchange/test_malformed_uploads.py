"""Inputs and results whose headers are damaged or whose identifiers no PACS would file:
refused with the rule they break (422), never a server error, on every backend, and nothing
of them kept. A server error is answered 500 here, as a real client would see it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.settings import ExchangeSettings
from scale.exchange_api import Exchange, Org, sr_for

#: 75 characters: longer than a UI value may be (64), and than the columns that keep them.
LONG_UID = "2.25." + "1" * 70


@pytest.fixture
def exchange(settings: ExchangeSettings) -> Iterator[Exchange]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Exchange(client)


def claimed(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any
) -> tuple[list[Path], dict[str, Any], dict[str, str]]:
    """Hospital A's one-instance study, its job claimed: the study, the job, the lease."""
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    study = make_ct(slices=1)
    job = exchange.ready_job(hospital, "product-a", study)
    claim = exchange.claim(vendor)
    assert claim is not None
    return study, job, {"X-Lease-Token": claim["lease_token"], **vendor.headers}


@pytest.mark.parametrize(
    ("keyword", "value", "problem"),
    [
        ("SeriesInstanceUID", LONG_UID, "not a UID: 75 characters, at most 64"),
        ("SOPClassUID", LONG_UID, "not a UID: 75 characters, at most 64"),
        ("SeriesInstanceUID", "1.2\x003", "not a UID: digits and dots only"),
        ("SeriesInstanceUID", "", "missing"),
    ],
    ids=["series-75-characters", "class-75-characters", "series-with-a-nul", "no-series"],
)
def test_an_input_whose_uids_no_pacs_would_take_is_refused(
    exchange: Exchange,
    parties: dict[str, Org],
    make_ct: Any,
    keyword: str,
    value: str,
    problem: str,
) -> None:
    """Before, PostgreSQL answered 500 (a column of 64 characters, a NUL), and SQLite kept
    the value and opened the job. A component with a leading zero, as modalities write,
    passes."""
    hospital = parties["hospital_a"]
    [path] = make_ct(slices=1)
    ds = pydicom.dcmread(path)
    ds[keyword].value = value
    if keyword == "SOPClassUID":
        ds.file_meta.MediaStorageSOPClassUID = value
    ds.save_as(path)
    job = exchange.job(hospital, "product-a", ds.StudyInstanceUID, instances=1)
    answer = exchange.upload(hospital, job["id"], path)
    assert answer.status_code == 422, answer.text
    tag = "(0020,000E)" if keyword == "SeriesInstanceUID" else "(0008,0016)"
    assert answer.json()["detail"].endswith(f"rule 'uid', {keyword} {tag}: {problem}")
    after = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert (after["input_count"], after["inputs_complete"]) == (0, False)
    ds.SeriesInstanceUID = "1.2.840.0099.1"  # a leading zero: let through
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.save_as(path)
    assert exchange.upload(hospital, job["id"], path).status_code == 201


def _undecodable(data: bytes, how: str) -> bytes:
    """The file with one damaged byte or two."""
    if how == "unknown-vr-in-the-data-set":  # Patient Identity Removed, VR 'Cx'
        return data.replace(b"\x12\x00\x62\x00CS", b"\x12\x00\x62\x00Cx")
    if how == "unknown-vr-in-the-file-meta":  # Transfer Syntax UID, VR 'Ux'
        return data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00Ux")
    # File Meta Information Group Length (0002,0000), UL, with a 3-byte value
    at = data.index(b"\x02\x00\x00\x00UL\x04\x00")
    return data[:at] + b"\x02\x00\x00\x00UL\x03\x00" + data[at + 8 : at + 11] + data[at + 12 :]


@pytest.mark.parametrize(
    ("how", "said"),
    [
        (
            "unknown-vr-in-the-data-set",
            "rule 'dicom-file', PatientIdentityRemoved (0012,0062): cannot be decoded "
            "(NotImplementedError)",
        ),
        (
            "unknown-vr-in-the-file-meta",
            "rule 'dicom-file', Data Set: the data set cannot be parsed (NotImplementedError)",
        ),
        (
            "group-length-3-bytes",
            "rule 'dicom-file', Data Set: the data set cannot be parsed (BytesLengthException)",
        ),
    ],
    ids=["unknown-vr-in-the-data-set", "unknown-vr-in-the-file-meta", "group-length-3-bytes"],
)
def test_an_input_with_an_undecodable_element_is_refused(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any, how: str, said: str
) -> None:
    """pydicom raises types the header read did not catch (NotImplementedError for an unknown
    VR, BytesLengthException): before, a bare 500, and the refusal not on record."""
    hospital = parties["hospital_a"]
    [path] = make_ct(slices=1)
    ds = pydicom.dcmread(path)
    job = exchange.job(hospital, "product-a", ds.StudyInstanceUID, instances=1)
    answer = exchange.client.put(
        f"/jobs/{job['id']}/inputs/{ds.SOPInstanceUID}",
        content=_undecodable(path.read_bytes(), how),
        headers=hospital.headers,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].endswith(said), answer.text
    after = exchange.client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
    assert after["input_count"] == 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("too-long", "SOPInstanceUID (0008,0018): not a UID: 75 characters, at most 64"),
        (
            "not-a-uid",
            "SOPInstanceUID (0008,0018): not a UID: digits and dots only, no component "
            "starting with 0",
        ),
        ("no-series", "SeriesInstanceUID (0020,000E): missing"),
    ],
)
def test_a_result_whose_uids_no_pacs_would_take_is_refused(
    exchange: Exchange,
    parties: dict[str, Org],
    make_ct: Any,
    tmp_path: Path,
    change: str,
    problem: str,
) -> None:
    """Before, PostgreSQL answered 500 for a long UID, and otherwise the result was taken as
    AIR-conformant and the job completed on a result no PACS files."""
    study, job, lease = claimed(exchange, parties, make_ct)
    report = pydicom.dcmread(sr_for(study, tmp_path / "sr"))
    if change == "no-series":
        del report.SeriesInstanceUID
    else:
        uid = LONG_UID if change == "too-long" else "1.2.03"
        report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = uid
    report.save_as(tmp_path / "result.dcm", enforce_file_format=True)
    answer = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        params={"complete": "true"},
        content=(tmp_path / "result.dcm").read_bytes(),
        headers=lease,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].endswith(f"rule 'valid-uids', {problem}")
    hospital = parties["hospital_a"].headers
    assert exchange.client.get(f"/jobs/{job['id']}", headers=hospital).json()["state"] == (
        "accepted"
    )
    assert exchange.client.get(f"/jobs/{job['id']}/results", headers=lease).json() == []


def test_two_results_of_one_job_may_not_share_a_sop_instance_uid(
    exchange: Exchange, parties: dict[str, Org], make_ct: Any, tmp_path: Path
) -> None:
    """The same SR uploaded under two names would reach the PACS twice as one object (it
    keeps one, or refuses the second). Uploaded again under its own name, it replaces
    itself."""
    study, job, lease = claimed(exchange, parties, make_ct)
    sr = sr_for(study, tmp_path / "sr").read_bytes()
    results = f"/jobs/{job['id']}/results"
    assert exchange.client.put(f"{results}/a.dcm", content=sr, headers=lease).status_code == 201
    twice = exchange.client.put(
        f"{results}/b.dcm", params={"complete": "true"}, content=sr, headers=lease
    )
    assert twice.status_code == 422, twice.text
    assert twice.json()["detail"] == (
        f"job {job['id']} result b.dcm: rule 'own-uids', SOP Instance UID (0008,0018) is "
        "result a.dcm's: a result is a new object in a series of its own, with UIDs of its own"
    )
    again = exchange.client.put(
        f"{results}/a.dcm", params={"complete": "true"}, content=sr, headers=lease
    )
    assert again.status_code == 201, again.text
    hospital = parties["hospital_a"].headers
    assert [r["name"] for r in exchange.client.get(results, headers=hospital).json()] == ["a.dcm"]
