"""The TID 1500 measurement report: valid for dciodvfy, AIR-conformant, faithful to the findings."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr import CodedConcept
from pydicom import Dataset

from aifi.dicom.dciodvfy import verify_iod
from aifi.results import (
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    CodedEvaluation,
    Finding,
    NumericMeasurement,
    ResultKind,
    SegmentSpec,
    build_measurement_report,
    build_segmentation,
    check_result,
    ucum_unit,
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
BRAIN = CodedConcept("12738006", "SCT", "Brain")
ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
PRESENCE = CodedConcept("705057003", "SCT", "Presence")
PRESENT = CodedConcept("52101004", "SCT", "Present")
MILLILITRE = ucum_unit("mL", "milliliter")


@pytest.fixture
def segment() -> SegmentSpec:
    return SegmentSpec(
        "Hemorrhage", ABNORMAL, HEMORRHAGE, tracking_id="ICH 1", anatomic_region=BRAIN
    )


@pytest.fixture
def segmentation(
    ct_series: list[Dataset],
    blob_mask: np.ndarray,
    segment: SegmentSpec,
    algorithm: AlgorithmInfo,
) -> hd.seg.Segmentation:
    return build_segmentation(ct_series, blob_mask.astype(np.uint8), [segment], algorithm)


@pytest.fixture
def findings(segment: SegmentSpec) -> list[Finding]:
    return [
        Finding(
            HEMORRHAGE,
            "ICH 1",
            BRAIN,
            [NumericMeasurement(VOLUME, 1.25, MILLILITRE)],
            tracking_uid=segment.tracking_uid,
            segment_number=1,
        ),
        Finding(
            HEMORRHAGE,
            "ICH 2",
            BRAIN,
            [NumericMeasurement(VOLUME, 0.4, MILLILITRE)],
            point=(3.2, -2.4, 2.5),
        ),
        Finding(HEMORRHAGE, "Study", evaluations=[CodedEvaluation(PRESENCE, PRESENT)]),
    ]


@pytest.fixture
def report(
    ct_series: list[Dataset],
    algorithm: AlgorithmInfo,
    findings: list[Finding],
    segmentation: hd.seg.Segmentation,
) -> hd.sr.Comprehensive3DSR:
    return build_measurement_report(ct_series, algorithm, findings, segmentation=segmentation)


@pytest.mark.peer
def test_report_passes_dciodvfy(report: hd.sr.Comprehensive3DSR, write_dataset, dciodvfy: str):
    checked = verify_iod(write_dataset(report, "sr.dcm"))
    assert checked.iod == "Comprehensive3DSR"
    assert checked.errors == []


def test_report_is_accepted_as_air_conformant(
    report: hd.sr.Comprehensive3DSR,
    write_dataset,
    ct_series: list[Dataset],
    algorithm: AlgorithmInfo,
):
    result = check_result(
        write_dataset(report, "sr.dcm"), study_instance_uid=ct_series[0].StudyInstanceUID
    )
    assert result.kind == ResultKind.SR_TID1500
    assert result.air_conformant, result.notes
    assert result.notes == []
    assert result.modality == "SR"
    assert result.sop_instance_uid == report.SOPInstanceUID
    assert (result.algorithm.name, result.algorithm.version, result.algorithm.manufacturer) == (
        algorithm.name,
        algorithm.version,
        algorithm.manufacturer,
    )


def test_report_content_carries_each_finding(
    report: hd.sr.Comprehensive3DSR,
    write_dataset,
    findings: list[Finding],
    segmentation: hd.seg.Segmentation,
):
    content = hd.sr.srread(write_dataset(report, "sr.dcm")).content
    volumetric = content.get_volumetric_roi_measurement_groups()
    whole_image = content.get_image_measurement_groups()
    assert [g.tracking_uid for g in volumetric] == [f.tracking_uid for f in findings[:2]]
    assert [g.tracking_uid for g in whole_image] == [findings[2].tracking_uid]
    for group, finding in zip(volumetric, findings[:2], strict=True):
        assert group.finding_type == finding.finding
        assert [site.value for site in group.finding_sites] == [BRAIN]
        (measurement,) = group.get_measurements()
        assert measurement.name == VOLUME
        assert measurement.value == pytest.approx(finding.measurements[0].value)
        assert measurement.unit == MILLILITRE
    by_segment, by_point = volumetric
    assert by_segment.reference_type == hd.sr.CodedConcept("121191", "DCM", "Referenced Segment")
    assert by_segment.roi is None
    referenced = by_segment.referenced_segment
    assert referenced[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        segmentation.SOPInstanceUID
    )
    assert referenced[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
    surface = by_point.roi
    assert surface.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    assert np.allclose(surface.graphic_data, [[3.2, -2.4, 2.5]])
    (evaluation,) = [q for q in whole_image[0].get_qualitative_evaluations() if q.name == PRESENCE]
    assert evaluation.value == PRESENT
    assert len(whole_image[0].source_images) == 4


def test_every_group_names_the_algorithm_and_its_intended_use(
    report: hd.sr.Comprehensive3DSR, algorithm: AlgorithmInfo
):
    root = report
    imaging = [
        i for i in root.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    ][0]
    for group in imaging.ContentSequence:
        texts = {
            (i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
            for i in group.ContentSequence
            if i.ValueType == "TEXT"
        }
        assert ("111001", algorithm.name) in texts
        assert ("111003", algorithm.version) in texts
        assert ("111002", NOT_FOR_CLINICAL_USE) in texts
        assert ("111002", "threshold_hu=50") in texts


def test_report_records_the_segmentation_as_evidence(
    report: hd.sr.Comprehensive3DSR,
    segmentation: hd.seg.Segmentation,
    ct_series: list[Dataset],
):
    evidence = report.CurrentRequestedProcedureEvidenceSequence
    assert [item.StudyInstanceUID for item in evidence] == [ct_series[0].StudyInstanceUID]
    referenced = {
        sop.ReferencedSOPInstanceUID
        for series in evidence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == {image.SOPInstanceUID for image in ct_series} | {
        segmentation.SOPInstanceUID
    }


def test_sources_from_two_studies_are_refused(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, findings: list[Finding]
):
    other = ct_series[-1].copy()
    other.StudyInstanceUID = "2.25.1"
    with pytest.raises(ValueError, match="one study"):
        build_measurement_report([*ct_series[:-1], other], algorithm, findings[1:])


def test_a_segment_finding_needs_the_segmentation(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, findings: list[Finding]
):
    with pytest.raises(ValueError, match="no segmentation"):
        build_measurement_report(ct_series, algorithm, findings)


def test_a_segment_the_segmentation_lacks_is_refused(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, segmentation: hd.seg.Segmentation
):
    finding = Finding(HEMORRHAGE, "ICH 9", segment_number=9)
    with pytest.raises(ValueError, match="segment 9"):
        build_measurement_report(ct_series, algorithm, [finding], segmentation=segmentation)


def test_repeated_tracking_uids_are_refused(ct_series: list[Dataset], algorithm: AlgorithmInfo):
    first = Finding(HEMORRHAGE, "ICH 1", point=(0.0, 0.0, 0.0))
    second = Finding(HEMORRHAGE, "ICH 2", point=(1.0, 0.0, 0.0), tracking_uid=first.tracking_uid)
    with pytest.raises(ValueError, match="distinct tracking UIDs"):
        build_measurement_report(ct_series, algorithm, [first, second])


def test_a_report_without_findings_is_refused(ct_series: list[Dataset], algorithm: AlgorithmInfo):
    with pytest.raises(ValueError, match="at least one finding"):
        build_measurement_report(ct_series, algorithm, [])


def test_units_must_be_ucum():
    with pytest.raises(ValueError, match="UCUM"):
        NumericMeasurement(VOLUME, 1.0, CodedConcept("ml", "99LOCAL", "millilitre"))


def test_a_finding_has_a_segment_or_a_point_not_both():
    with pytest.raises(ValueError, match="not both"):
        Finding(HEMORRHAGE, "ICH 1", segment_number=1, point=(0.0, 0.0, 0.0))


def test_algorithm_names_must_fit_a_long_string():
    with pytest.raises(ValueError, match="LO"):
        AlgorithmInfo(name="x" * 65, version="1", manufacturer="AIFI")


def test_a_segmentation_of_another_study_is_refused(
    ct_series: list[Dataset],
    algorithm: AlgorithmInfo,
    segmentation: hd.seg.Segmentation,
    findings: list[Finding],
):
    segmentation.StudyInstanceUID = "2.25.1"
    with pytest.raises(ValueError, match="another study"):
        build_measurement_report(ct_series, algorithm, findings, segmentation=segmentation)


def test_a_point_needs_a_frame_of_reference(ct_series: list[Dataset], algorithm: AlgorithmInfo):
    for image in ct_series:
        del image.FrameOfReferenceUID
    finding = Finding(HEMORRHAGE, "ICH 1", point=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        build_measurement_report(ct_series, algorithm, [finding])
