"""Every phantom instance is valid DICOM of the right IOD, and says what it is and whose it is."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian

from aifi.dicom.dciodvfy import verify_iod

KINDS = {
    "ct-head": ("CT", "1.2.840.10008.5.1.4.1.1.2", "HEAD", "CTImage"),
    "ct-chest": ("CT", "1.2.840.10008.5.1.4.1.1.2", "CHEST", "CTImage"),
    "mr-brain": ("MR", "1.2.840.10008.5.1.4.1.1.4", "HEAD", "MRImage"),
    "dx-hand": ("DX", "1.2.840.10008.5.1.4.1.1.1.1", "HAND", "DXImageForPresentation"),
}


@pytest.mark.peer
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_instance_passes_dciodvfy(kind: str, small_studies, dciodvfy: str) -> None:
    files = sorted(small_studies[kind].folder.glob("*.dcm"))
    assert len(files) == small_studies[kind].truth.instance_count
    for path in files:
        report = verify_iod(path)
        assert report.iod == KINDS[kind][3], f"{path.name}: dciodvfy read it as {report.iod!r}"
        assert report.errors == [], f"{path.name}: {report.errors}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_instances_carry_sop_class_equipment_and_synthetic_marking(
    kind: str, small_studies
) -> None:
    modality, sop_class, body_part, _ = KINDS[kind]
    written = small_studies[kind]
    for path in sorted(written.folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == modality
        assert ds.BodyPartExamined == body_part
        assert ds.Manufacturer == "AIFI"
        assert ds.ManufacturerModelName == "Synthetic phantom"
        assert "SYNTHETIC" in ds.ImageComments and "SYNTHETIC" in ds.SeriesDescription
        assert ds.StudyInstanceUID == written.truth.study_instance_uid
        assert UID(ds.SOPInstanceUID).is_valid


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_identity_is_written_into_every_instance(kind: str, small_studies) -> None:
    who = small_studies[kind].truth.identity
    for path in sorted(Path(small_studies[kind].folder).glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName) == who.patient_name
        assert ds.PatientID == who.patient_id
        assert ds.PatientBirthDate == who.birth_date.strftime("%Y%m%d")
        assert ds.PatientSex == who.sex
        assert ds.AccessionNumber == who.accession_number
        assert ds.StudyDate == who.study_date.strftime("%Y%m%d")
        assert ds.StudyTime == who.study_time.strftime("%H%M%S")
        assert ds.InstitutionName == who.institution_name
        assert str(ds.ReferringPhysicianName) == who.referring_physician
        assert ds.StudyDescription == who.study_description


def test_ct_rescale_and_windows_give_hounsfield_units(small_studies, series_reader) -> None:
    series = series_reader(small_studies["ct-head"].folder)
    first = series.headers[0]
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert first.RescaleType == "HU"
    assert [float(c) for c in first.WindowCenter][0] == 40.0
    assert series.values.min() >= -1024  # air at about -1000, nothing below the stored range
    assert series.values.max() > 1000  # cortical bone


def test_truth_lists_the_uids_written(small_studies) -> None:
    for written in small_studies.values():
        headers = [
            pydicom.dcmread(p, stop_before_pixels=True) for p in written.folder.glob("*.dcm")
        ]
        (series,) = written.truth.series
        by_number = sorted(headers, key=lambda ds: int(ds.InstanceNumber))
        assert [ds.SOPInstanceUID for ds in by_number] == series.sop_instance_uids
        assert {ds.SeriesInstanceUID for ds in headers} == {series.series_instance_uid}
        assert len(set(series.sop_instance_uids)) == len(headers)
