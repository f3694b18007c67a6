"""Keyed, consistent pseudonyms: same hospital same pseudonym, other hospital another."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aifi.dicom.deid import Deidentifier
from aifi.dicom.pseudonym import PseudonymKey

MakeInstance = Callable[..., Dataset]


def _days(a: str, b: str) -> int:
    return (dt.datetime.strptime(a, "%Y%m%d") - dt.datetime.strptime(b, "%Y%m%d")).days


def test_same_patient_and_study_map_to_the_same_pseudonyms(
    key: PseudonymKey, make_instance: MakeInstance
) -> None:
    first = make_instance(study_uid="1.2.3.4.5", series_uid="1.2.3.4.5.1")
    second = make_instance(study_uid="1.2.3.4.5", series_uid="1.2.3.4.5.2")
    engine = Deidentifier(key)
    r1 = engine.deidentify_dataset(first)
    r2 = engine.deidentify_dataset(second)

    assert first.StudyInstanceUID == second.StudyInstanceUID == key.uid("1.2.3.4.5")
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.PatientID == second.PatientID == key.patient_id("PID-4711-0815")
    assert first.PatientName == first.PatientID + "^"
    assert first.PatientID == r1.patient_pseudonym == r2.patient_pseudonym
    assert first.AccessionNumber == key.accession("ACC-20240311-77")


def test_other_hospital_gets_other_pseudonyms(
    key: PseudonymKey, other_key: PseudonymKey, make_instance: MakeInstance
) -> None:
    a = make_instance(study_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6")
    b = make_instance(study_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6")
    Deidentifier(key).deidentify_dataset(a)
    Deidentifier(other_key).deidentify_dataset(b)
    assert a.PatientID != b.PatientID
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_every_uid_is_remapped_consistently_including_references(
    key: PseudonymKey, make_instance: MakeInstance
) -> None:
    image = make_instance(sop_uid="1.2.840.99.1", study_uid="1.2.840.99.100")
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = "1.2.840.99.1"
    derived = make_instance(sop_uid="1.2.840.99.2", study_uid="1.2.840.99.100")
    derived.ReferencedImageSequence = Sequence([reference])
    derived.SourceImageSequence = Sequence([reference])
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([Dataset()])
    frame.DerivationImageSequence[0].SourceImageSequence = Sequence([reference])
    derived.PerFrameFunctionalGroupsSequence = Sequence([frame])
    derived.ReferencedSeriesSequence = Sequence([Dataset()])
    derived.ReferencedSeriesSequence[0].SeriesInstanceUID = image.SeriesInstanceUID

    engine = Deidentifier(key)
    engine.deidentify_dataset(image)
    result = engine.deidentify_dataset(derived)

    nested = derived.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert nested.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert derived.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert derived.SOPClassUID == image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert result.uid_map["1.2.840.99.2"] == derived.SOPInstanceUID
    assert result.uid_map["1.2.840.99.1"] == image.SOPInstanceUID
    for original, pseudonym in result.uid_map.items():
        assert pseudonym.startswith("2.25.") and len(pseudonym) <= 64
        assert pseudonym == key.uid(original)


def test_sop_class_and_transfer_syntax_are_kept(
    key: PseudonymKey, write_instance, tmp_path: Path
) -> None:
    src = write_instance()
    Deidentifier(key).deidentify_file(src, tmp_path / "out.dcm")
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "out.dcm")
    assert after.SOPClassUID == before.SOPClassUID
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.SOPInstanceUID == key.uid(before.SOPInstanceUID)


def test_modified_dates_shift_every_date_of_a_patient_by_one_offset(
    key: PseudonymKey, make_instance: MakeInstance
) -> None:
    earlier = make_instance(StudyDate="20230105", ContentDate="20230105")
    later = make_instance(StudyDate="20240311", ContentDate="20240312")
    engine = Deidentifier(key, {"retain-long-modified-dates"})
    r1 = engine.deidentify_dataset(earlier)
    r2 = engine.deidentify_dataset(later)

    assert r1.date_shift_days == r2.date_shift_days == key.date_shift_days("PID-4711-0815")
    assert r1.date_shift_days is not None and r1.date_shift_days > 0
    assert _days("20240311", later.StudyDate) == r1.date_shift_days
    # Intervals survive, within and across studies of the patient.
    assert _days(later.StudyDate, earlier.StudyDate) == _days("20240311", "20230105")
    assert _days(later.ContentDate, later.StudyDate) == 1
    assert later.AcquisitionDateTime.endswith("101700.000000")
    assert later.LongitudinalTemporalInformationModified == "MODIFIED"


def test_another_patient_gets_another_shift(key: PseudonymKey, make_instance) -> None:
    shifts = {
        Deidentifier(key, {"retain-long-modified-dates"})
        .deidentify_dataset(make_instance(patient_id=f"PAT{n}"))
        .date_shift_days
        for n in range(20)
    }
    assert len(shifts) > 15


def test_result_holds_the_originals_for_the_vault(key: PseudonymKey, make_instance) -> None:
    ds = make_instance(study_uid="1.2.840.99.100")
    result = Deidentifier(key, {"retain-patient-characteristics"}).deidentify_dataset(ds)
    assert result.original_patient["PatientName"] == "Jansen^Maria"
    assert result.original_patient["PatientID"] == "PID-4711-0815"
    assert result.original_patient["PatientBirthDate"] == "19610412"
    assert result.original_patient["AccessionNumber"] == "ACC-20240311-77"
    assert result.original_patient["StudyInstanceUID"] == "1.2.840.99.100"
    assert result.date_shift_days is None
    assert result.options == {"retain-patient-characteristics"}


def test_missing_patient_id_keys_on_the_study(key: PseudonymKey, make_instance) -> None:
    a = make_instance(patient_id="", study_uid="1.2.840.99.7")
    b = make_instance(patient_id="", study_uid="1.2.840.99.8")
    ra, rb = Deidentifier(key).deidentify_dataset(a), Deidentifier(key).deidentify_dataset(b)
    assert ra.patient_pseudonym != rb.patient_pseudonym
    assert a.PatientID == ra.patient_pseudonym
