"""What vendors send today is accepted, and marked as not AIR-conformant so people can see it."""

from __future__ import annotations

import numpy as np
import pytest
from highdicom.sr import CodedConcept
from pydicom import Dataset

from aifi.dicom.dciodvfy import verify_iod
from aifi.results import (
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
