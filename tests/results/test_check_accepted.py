"""What vendors send today is accepted, and marked as not AIR-conformant so people can see it."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from aifi.dicom.dciodvfy import verify_iod
from aifi.results import (
    AlgorithmIdentity,
    AlgorithmInfo,
    Finding,
    ResultKind,
    SegmentSpec,
    build_measurement_report,
    build_segmentation,
    check_result,
)

LEGACY_KINDS = ["secondary-capture", "gsps", "encapsulated-pdf", "basic-text-sr"]
HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")


@pytest.mark.parametrize("kind", LEGACY_KINDS)
def test_legacy_kind_is_accepted_but_not_air_conformant(
    kind: str, legacy_results: dict[str, Dataset], write_dataset, ct_series: list[Dataset]
):
    path = write_dataset(legacy_results[kind], f"{kind}.dcm")
    result = check_result(path, study_instance_uid=ct_series[0].StudyInstanceUID)
    assert result.kind == ResultKind(kind)
    assert result.air_conformant is False
    assert result.notes and all(note.strip() for note in result.notes)
    assert result.algorithm.manufacturer == "Legacy AI Vendor"
    assert result.algorithm.version == "2.3.1"
    assert result.sop_class_uid == legacy_results[kind].SOPClassUID


@pytest.mark.parametrize("kind", LEGACY_KINDS)
@pytest.mark.peer
def test_legacy_test_objects_are_themselves_valid(
    kind: str, legacy_results: dict[str, Dataset], write_dataset, dciodvfy: str
):
    """The acceptance above means something only if these stand-ins are valid DICOM."""
    assert verify_iod(write_dataset(legacy_results[kind], f"{kind}.dcm")).errors == []


def _strip(item: Dataset, code_value: str) -> None:
    """Remove every content item with Concept Name `code_value` below `item`."""
    if "ContentSequence" not in item:
        return
    item.ContentSequence = [
        child
        for child in item.ContentSequence
        if child.ConceptNameCodeSequence[0].CodeValue != code_value
    ]
    for child in item.ContentSequence:
        _strip(child, code_value)


def test_report_whose_groups_lack_tracking_ids_is_accepted_but_not_conformant(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, write_dataset
):
    report = build_measurement_report(
        ct_series, algorithm, [Finding(HEMORRHAGE, "ICH 1", point=(0.0, 0.0, 2.5))]
    )
    _strip(report, "112039")
    result = check_result(
        write_dataset(report, "sr.dcm"), study_instance_uid=ct_series[0].StudyInstanceUID
    )
    assert result.kind == ResultKind.SR_TID1500
    assert result.air_conformant is False
    assert result.notes == ["measurement group 1 lacks Tracking Identifier (112039, DCM)"]


def test_report_naming_the_algorithm_only_at_document_level_is_not_conformant(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, write_dataset
):
    """TID 4019 outside the measurement groups identifies the result, but AIR wants it per group."""
    report = build_measurement_report(
        ct_series, algorithm, [Finding(HEMORRHAGE, "ICH 1", point=(0.0, 0.0, 2.5))]
    )
    group_algorithm = [
        item
        for item in report.ContentSequence[-1].ContentSequence[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue in {"111001", "111003"}
    ]
    _strip(report, "111001")
    _strip(report, "111003")
    report.ContentSequence = [*report.ContentSequence, *group_algorithm]
    for item in group_algorithm:
        item.RelationshipType = "HAS CONCEPT MOD"
    result = check_result(
        write_dataset(report, "sr.dcm"), study_instance_uid=ct_series[0].StudyInstanceUID
    )
    assert result.algorithm.name == algorithm.name
    assert result.notes == ["measurement group 1 lacks Algorithm Name (111001, DCM)"]


def test_manual_segments_are_accepted_but_not_conformant(
    ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo, write_dataset
):
    abnormal = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
    segmentation = build_segmentation(
        ct_series, blob_mask, [SegmentSpec("Hemorrhage", abnormal, HEMORRHAGE)], algorithm
    )
    segmentation.SegmentSequence[0].SegmentAlgorithmType = "MANUAL"
    result = check_result(
        write_dataset(segmentation, "seg.dcm"), study_instance_uid=ct_series[0].StudyInstanceUID
    )
    assert result.air_conformant is False
    assert result.notes == ["segment 1: Segment Algorithm Type is not AUTOMATIC"]


def test_basic_text_sr_naming_its_algorithm_in_its_content_is_identified_by_it(
    legacy_results: dict[str, Dataset], write_dataset, ct_series: list[Dataset]
):
    """TID 4019 items in a Basic Text SR name the algorithm, as they do in a structured SR."""
    report = legacy_results["basic-text-sr"]
    report.ContentSequence = [
        *report.ContentSequence,
        *(
            hd.sr.TextContentItem(
                name=CodedConcept(code, "DCM", meaning),
                value=value,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT,
            )
            for code, meaning, value in (
                ("111001", "Algorithm Name", "Legacy bleed finder"),
                ("111003", "Algorithm Version", "7.1"),
            )
        ),
    ]
    result = check_result(
        write_dataset(report, "basic-text-sr.dcm"),
        study_instance_uid=ct_series[0].StudyInstanceUID,
    )
    assert (result.kind, result.air_conformant) == (ResultKind.BASIC_TEXT_SR, False)
    assert result.algorithm == AlgorithmIdentity(
        name="Legacy bleed finder", version="7.1", manufacturer="Legacy AI Vendor"
    )


def _measurement_report(ct_series: list[Dataset], algorithm: AlgorithmInfo) -> Dataset:
    return build_measurement_report(
        ct_series, algorithm, [Finding(HEMORRHAGE, "ICH 1", point=(0.0, 0.0, 2.5))]
    )


def test_report_in_implicit_vr_little_endian_is_accepted_as_air_conformant(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, tmp_path: Path
):
    """Implicit VR files name no VRs: sequences and the content tree are found all the same."""
    report = _measurement_report(ct_series, algorithm)
    report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    report.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    result = check_result(path, study_instance_uid=ct_series[0].StudyInstanceUID)
    assert (result.kind, result.air_conformant, result.notes) == (ResultKind.SR_TID1500, True, [])
    assert result.algorithm.name == algorithm.name


@pytest.mark.parametrize("implicit_vr", [False, True])
def test_a_private_sequence_is_not_searched_for_study_references(
    implicit_vr: bool, ct_series: list[Dataset], algorithm: AlgorithmInfo, tmp_path: Path
):
    """A vendor's private sequence is its own business: what it holds is neither read nor judged."""
    report = _measurement_report(ct_series, algorithm)
    elsewhere = Dataset()
    elsewhere.StudyInstanceUID = "2.25.123456789012345678901234567890"
    report.private_block(0x0009, "AIFI TEST VENDOR", create=True).add_new(0x01, "SQ", [elsewhere])
    if implicit_vr:
        report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "private.dcm"
    report.save_as(path, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=True)
    result = check_result(path, study_instance_uid=ct_series[0].StudyInstanceUID)
    assert (result.kind, result.air_conformant) == (ResultKind.SR_TID1500, True)
