"""The SEG builder: valid for dciodvfy, AIR-conformant, and the mask survives the round trip."""

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
    ResultKind,
    SegmentSpec,
    build_segmentation,
    check_result,
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
EDEMA = CodedConcept("267038008", "SCT", "Edema")
ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
BRAIN = CodedConcept("12738006", "SCT", "Brain")


@pytest.fixture
def two_segment_mask(blob_mask: np.ndarray) -> np.ndarray:
    labels = blob_mask.astype(np.uint8)
    labels[2, 25:29, 3:8] = 2
    return labels


@pytest.fixture
def segments() -> list[SegmentSpec]:
    return [
        SegmentSpec("Hemorrhage", ABNORMAL, HEMORRHAGE, tracking_id="ICH 1", anatomic_region=BRAIN),
        SegmentSpec("Edema", ABNORMAL, EDEMA),
    ]


@pytest.fixture
def segmentation(
    ct_series: list[Dataset],
    two_segment_mask: np.ndarray,
    segments: list[SegmentSpec],
    algorithm: AlgorithmInfo,
) -> hd.seg.Segmentation:
    return build_segmentation(ct_series, two_segment_mask, segments, algorithm)


@pytest.mark.peer
def test_segmentation_passes_dciodvfy(
    segmentation: hd.seg.Segmentation, write_dataset, dciodvfy: str
):
    checked = verify_iod(write_dataset(segmentation, "seg.dcm"))
    assert checked.iod == "Segmentation"
    assert checked.errors == []


def test_segmentation_is_accepted_as_air_conformant(
    segmentation: hd.seg.Segmentation,
    write_dataset,
    ct_series: list[Dataset],
    algorithm: AlgorithmInfo,
):
    result = check_result(
        write_dataset(segmentation, "seg.dcm"), study_instance_uid=ct_series[0].StudyInstanceUID
    )
    assert result.kind == ResultKind.SEG
    assert result.air_conformant, result.notes
    assert result.modality == "SEG"
    assert result.algorithm.name == algorithm.name
    assert result.algorithm.version == algorithm.version


def test_mask_survives_the_round_trip(
    segmentation: hd.seg.Segmentation,
    write_dataset,
    ct_series: list[Dataset],
    two_segment_mask: np.ndarray,
):
    saved = hd.seg.segread(write_dataset(segmentation, "seg.dcm"))
    labels = saved.get_pixels_by_source_instance(
        [image.SOPInstanceUID for image in ct_series], combine_segments=True
    )
    assert labels.shape == two_segment_mask.shape
    assert np.array_equal(labels, two_segment_mask)


def test_segments_name_the_algorithm_and_their_tracking(
    segmentation: hd.seg.Segmentation, segments: list[SegmentSpec], algorithm: AlgorithmInfo
):
    for number, (item, spec) in enumerate(
        zip(segmentation.SegmentSequence, segments, strict=True), start=1
    ):
        assert item.SegmentNumber == number
        assert item.SegmentLabel == spec.label
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == algorithm.name
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == spec.type.value
        assert item.TrackingUID == spec.tracking_uid
        identification = item.SegmentationAlgorithmIdentificationSequence[0]
        assert identification.AlgorithmVersion == algorithm.version
        assert NOT_FOR_CLINICAL_USE in identification.AlgorithmParameters
    assert segmentation.SegmentSequence[0].TrackingID == "ICH 1"
    assert segmentation.Manufacturer == algorithm.manufacturer
    assert segmentation.SoftwareVersions == algorithm.version


@pytest.mark.peer
def test_an_empty_mask_still_makes_a_valid_segmentation(
    ct_series: list[Dataset],
    segments: list[SegmentSpec],
    algorithm: AlgorithmInfo,
    write_dataset,
    dciodvfy: str,
):
    empty = np.zeros((len(ct_series), 32, 32), dtype=np.uint8)
    segmentation = build_segmentation(ct_series, empty, segments[:1], algorithm)
    assert segmentation.NumberOfFrames == len(ct_series)
    assert verify_iod(write_dataset(segmentation, "empty.dcm")).errors == []


def test_a_boolean_mask_describes_one_segment(
    ct_series: list[Dataset],
    blob_mask: np.ndarray,
    segments: list[SegmentSpec],
    algorithm: AlgorithmInfo,
):
    segmentation = build_segmentation(ct_series, blob_mask, segments[:1], algorithm)
    assert len(segmentation.SegmentSequence) == 1
    with pytest.raises(ValueError, match="one segment"):
        build_segmentation(ct_series, blob_mask, segments, algorithm)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 32), "frames, rows, cols"), ((3, 32, 32), "does not match"), ((4, 16, 32), "Rows")],
)
def test_a_mask_that_does_not_fit_the_sources_is_refused(
    ct_series: list[Dataset],
    segments: list[SegmentSpec],
    algorithm: AlgorithmInfo,
    shape: tuple[int, ...],
    message: str,
):
    with pytest.raises(ValueError, match=message):
        build_segmentation(ct_series, np.zeros(shape, np.uint8), segments, algorithm)


def test_a_label_without_a_segment_is_refused(
    ct_series: list[Dataset],
    two_segment_mask: np.ndarray,
    segments: list[SegmentSpec],
    algorithm: AlgorithmInfo,
):
    with pytest.raises(ValueError, match=r"0\.\.1"):
        build_segmentation(ct_series, two_segment_mask, segments[:1], algorithm)


def test_a_probability_map_is_not_a_label_mask(
    ct_series: list[Dataset], segments: list[SegmentSpec], algorithm: AlgorithmInfo
):
    with pytest.raises(ValueError, match="integer"):
        build_segmentation(ct_series, np.full((4, 32, 32), 0.5), segments, algorithm)
