"""Results join the source's pseudonymised study and bring no identity of their own."""

from __future__ import annotations

from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr import CodedConcept
from pydicom import DataElement, Dataset

from aifi.results import (
    AlgorithmInfo,
    Finding,
    SegmentSpec,
    build_measurement_report,
    build_segmentation,
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")

#: Attributes that identify a person or a place (a subset of PS3.15 Table E.1-1) which the
#: fixture's pseudonymised source does not carry, so a result must not carry them either.
IDENTIFYING_ABSENT_FROM_SOURCE = (
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "OperatorsName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "MilitaryRank",
    "EthnicGroup",
    "PatientComments",
)


def _elements(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)


def _results(
    ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo
) -> dict[str, Dataset]:
    segmentation = build_segmentation(
        ct_series, blob_mask, [SegmentSpec("Hemorrhage", ABNORMAL, HEMORRHAGE)], algorithm
    )
    report = build_measurement_report(
        ct_series,
        algorithm,
        [Finding(HEMORRHAGE, "ICH 1", segment_number=1)],
        segmentation=segmentation,
    )
    return {"sr": report, "seg": segmentation}


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_result_copies_patient_and_study_modules(
    kind: str,
    ct_series: list[Dataset],
    blob_mask: np.ndarray,
    algorithm: AlgorithmInfo,
    patient_study_keywords: tuple[str, ...],
):
    result = _results(ct_series, blob_mask, algorithm)[kind]
    source = ct_series[0]
    for keyword in patient_study_keywords:
        assert keyword in result, keyword
        assert str(result[keyword].value) == str(source[keyword].value), keyword
    assert result.SeriesInstanceUID != source.SeriesInstanceUID


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_result_adds_no_identity(
    kind: str, ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo
):
    result = _results(ct_series, blob_mask, algorithm)[kind]
    source = ct_series[0]
    for keyword in IDENTIFYING_ABSENT_FROM_SOURCE:
        assert keyword not in source  # the premise of this test
        assert not result.get(keyword), keyword
    names = {str(e.value) for e in _elements(result) if e.VR == "PN" and e.value}
    assert names <= {str(source.PatientName)}
    dates = {str(e.value) for e in _elements(result) if e.keyword in {"PatientBirthDate"}}
    assert dates <= {"", str(source.PatientBirthDate)}


def test_result_instances_are_new(
    ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo
):
    results = _results(ct_series, blob_mask, algorithm)
    source_uids = {image.SOPInstanceUID for image in ct_series}
    assert {r.SOPInstanceUID for r in results.values()}.isdisjoint(source_uids)
    assert isinstance(results["sr"], hd.sr.Comprehensive3DSR)


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_changing_a_result_leaves_its_sources_alone(
    kind: str, ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo
):
    """The gateway re-identifies results in place; the sources must not change with them."""
    before = [(image.PatientName, image.PatientID, image.StudyDate) for image in ct_series]
    result = _results(ct_series, blob_mask, algorithm)[kind]
    result.PatientName = "Doe^Jane"
    result.PatientID = "123456789"
    result.StudyDate = "20241231"
    assert [(image.PatientName, image.PatientID, image.StudyDate) for image in ct_series] == before
