"""Exactly the options given are applied, and the output says which."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX, OPTION_NAMES, Deidentifier
from aifi.dicom.pseudonym import PseudonymKey

MakeInstance = Callable[..., Dataset]


def _codes(ds: Dataset) -> set[str]:
    return {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize(
    "options",
    [
        frozenset(),
        frozenset({"retain-patient-characteristics"}),
        frozenset({"retain-patient-characteristics", "retain-long-modified-dates"}),
        frozenset({"clean-descriptors", "retain-uids", "retain-safe-private"}),
    ],
)
def test_marking_lists_exactly_the_options_applied(
    options: frozenset[str], key: PseudonymKey, make_instance: MakeInstance
) -> None:
    ds = make_instance()
    result = Deidentifier(key, options).deidentify_dataset(ds)
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.DeidentificationMethod).startswith(DEIDENTIFICATION_METHOD_PREFIX)
    assert len(str(ds.DeidentificationMethod)) <= 64
    assert _codes(ds) == {"113100"} | {OPTION_NAMES[o] for o in options}
    assert all(i.CodingSchemeDesignator == "DCM" for i in ds.DeidentificationMethodCodeSequence)
    assert result.options == options


def test_all_options_still_fit_the_method_text(key: PseudonymKey, make_instance) -> None:
    ds = make_instance()
    everything = set(OPTION_NAMES) - {"retain-long-full-dates"}
    Deidentifier(key, everything).deidentify_dataset(ds)
    assert len(ds.DeidentificationMethod) <= 64
    assert len(ds.DeidentificationMethodCodeSequence) == len(everything) + 1


def test_patient_characteristics_only_when_asked(key: PseudonymKey, make_instance) -> None:
    plain, kept = make_instance(), make_instance()
    Deidentifier(key).deidentify_dataset(plain)
    Deidentifier(key, {"retain-patient-characteristics"}).deidentify_dataset(kept)
    assert plain.PatientSex == "" and "PatientAge" not in plain and "PatientWeight" not in plain
    assert (kept.PatientSex, kept.PatientAge, kept.PatientWeight) == ("F", "062Y", 71.5)
    assert kept.PatientBirthDate == ""  # not a characteristic: removed under every option


def test_dates_removed_kept_or_shifted(key: PseudonymKey, make_instance) -> None:
    basic, full, modified = make_instance(), make_instance(), make_instance()
    Deidentifier(key).deidentify_dataset(basic)
    Deidentifier(key, {"retain-long-full-dates"}).deidentify_dataset(full)
    Deidentifier(key, {"retain-long-modified-dates"}).deidentify_dataset(modified)
    assert basic.StudyDate == "" and "SeriesDate" not in basic
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert full.StudyDate == "20240311" and full.SeriesDate == "20240311"
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert modified.StudyDate not in ("", "20240311") and len(modified.StudyDate) == 8


def test_retain_uids_keeps_them(key: PseudonymKey, make_instance) -> None:
    ds = make_instance(sop_uid="1.2.840.99.5", study_uid="1.2.840.99.6")
    result = Deidentifier(key, {"retain-uids"}).deidentify_dataset(ds)
    assert (ds.SOPInstanceUID, ds.StudyInstanceUID) == ("1.2.840.99.5", "1.2.840.99.6")
    assert result.uid_map == {}


def test_device_and_institution_identity_only_when_asked(key: PseudonymKey, make_instance):
    basic, device, institution = make_instance(), make_instance(), make_instance()
    Deidentifier(key).deidentify_dataset(basic)
    Deidentifier(key, {"retain-device-identity"}).deidentify_dataset(device)
    Deidentifier(key, {"retain-institution-identity"}).deidentify_dataset(institution)
    assert "StationName" not in basic and "InstitutionName" not in basic
    assert device.StationName == "CT-TIEL-01" and "InstitutionName" not in device
    assert institution.InstitutionName == "Ziekenhuis Rivierenland Tiel"
    assert "StationName" not in institution


def test_geometry_and_image_module_survive(key: PseudonymKey, make_instance) -> None:
    ds = make_instance()
    pixels = ds.PixelData
    Deidentifier(key).deidentify_dataset(ds)
    assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
    assert [float(v) for v in ds.ImagePositionPatient] == [-100, -100, 50]
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert float(ds.SliceThickness) == 1.0
    assert ds.PixelData == pixels and ds.Rows == 16


def test_clean_descriptors_keeps_the_meaning_without_the_identity(
    key: PseudonymKey, make_instance
) -> None:
    ds = make_instance(
        StudyDescription="CT THORAX Jansen Maria PID-4711-0815 11.03.2024",
        SeriesDescription="AX 1.0 LUNG Bakker",
    )
    plain = make_instance(StudyDescription="CT THORAX")
    Deidentifier(key, {"clean-descriptors"}).deidentify_dataset(ds)
    Deidentifier(key).deidentify_dataset(plain)
    assert ds.StudyDescription == "CT THORAX"
    assert ds.SeriesDescription == "AX 1.0 LUNG"
    assert "StudyDescription" not in plain


def test_clean_structured_content_cleans_sr_text(key: PseudonymKey, make_instance) -> None:
    ds = make_instance()
    item = Dataset()
    item.ValueType = "TEXT"
    item.RelationshipType = "CONTAINS"
    item.TextValue = "Nodule 6 mm, seen by Bakker on 11.03.2024 for Jansen"
    ds.ContentSequence = Sequence([item])
    basic = make_instance()
    basic.ContentSequence = Sequence([copy.deepcopy(item)])
    Deidentifier(key, {"clean-structured-content"}).deidentify_dataset(ds)
    Deidentifier(key).deidentify_dataset(basic)
    assert ds.ContentSequence[0].TextValue == "Nodule 6 mm, seen by on for"
    # Basic Profile: the content item stays (SR stays valid), its free text is a dummy.
    assert basic.ContentSequence[0].ValueType == "TEXT"
    assert basic.ContentSequence[0].TextValue == "ANONYMIZED"


def test_safe_private_kept_only_under_its_option(key: PseudonymKey, make_instance) -> None:
    def with_private() -> Dataset:
        ds = make_instance()
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "IS", "1000")  # b-value: safe
        block.add_new(0x10, "LO", "Jansen")  # not on the list
        other = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        other.add_new(0x10, "OB", b"CSA ")
        return ds

    basic, safe = with_private(), with_private()
    Deidentifier(key).deidentify_dataset(basic)
    Deidentifier(key, {"retain-safe-private"}).deidentify_dataset(safe)
    assert not [e.tag for e in basic if e.tag.group & 1]
    assert sorted(e.tag for e in safe if e.tag.group & 1) == [0x00190010, 0x0019100C]
