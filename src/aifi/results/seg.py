"""Build a DICOM Segmentation (SEG) from a label mask, labelled with the algorithm that made it.

IHE AIR asks that every segmentation an algorithm produces travel as a SEG whose segments name
the algorithm (Segment Algorithm Type AUTOMATIC, Segment Algorithm Name and Identification).
highdicom copies the Patient and Study modules from the source images, so the SEG joins the
same pseudonymised study; the SR then points at its segments by number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom import Dataset

from aifi.results.algorithm import AlgorithmInfo
from aifi.results.source import detach_from_sources, study_of

#: Series number of a product's SEG, just after its SR (see :mod:`aifi.results.sr`).
DEFAULT_SEG_SERIES_NUMBER = 9002


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment of the mask is: label, Segmented Property Category and Type.

    The segment's number is its position in the list given to :func:`build_segmentation`
    (1 for the first), and mask voxels with that value belong to it.

    Parameters
    ----------
    label:
        Segment Label (0062,0005), e.g. ``"Hemorrhage"``.
    category:
        Segmented Property Category (CID 7150), e.g. SCT 49755003 "Morphologically abnormal
        structure".
    type:
        Segmented Property Type (CID 7151 and friends), e.g. SCT 50960005 "Hemorrhage".
    tracking_id, tracking_uid:
        The same tracking identifier and UID as the SR finding this segment outlines, so a
        viewer can link the two; a new UID when not given.
    anatomic_region:
        Where the segment lies, e.g. SCT 12738006 "Brain".
    """

    label: str
    category: CodedConcept
    type: CodedConcept
    tracking_id: str | None = None
    tracking_uid: str = field(default_factory=lambda: str(hd.UID()))
    anatomic_region: CodedConcept | None = None


def build_segmentation(
    source_images: Sequence[Dataset],
    mask: np.ndarray,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmInfo,
    *,
    series_number: int = DEFAULT_SEG_SERIES_NUMBER,
    instance_number: int = 1,
    series_description: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A binary SEG of `mask`, one segment per :class:`SegmentSpec`.

    Parameters
    ----------
    source_images:
        Single-frame images of one series, in the order of the mask's frames.
    mask:
        Integer array (frames, rows, cols): 0 is background, ``n`` belongs to ``segments[n-1]``.
        A boolean mask is accepted when there is exactly one segment.
    segments:
        Descriptions of segments 1..n.

    Raises
    ------
    ValueError
        If the sources do not form one study, the mask's shape does not match the sources,
        there are no segments, or the mask holds a label that has no segment.
    """
    study_of(source_images)
    if not segments:
        raise ValueError("a segmentation needs at least one segment")
    labels = _label_map(mask, source_images, len(segments))
    descriptions = [
        _segment_description(number, spec, algorithm)
        for number, spec in enumerate(segments, start=1)
    ]
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.device_serial_number,
        series_description=series_description or f"{algorithm.name} {algorithm.version}"[:64],
        content_label="AI_SEGMENTATION",
        # Empty frames are left out, except when nothing was found: a SEG needs a frame.
        omit_empty_frames=bool(labels.any()),
        content_description=(algorithm.clinical_use_label or algorithm.name)[:64],
    )
    detach_from_sources(segmentation, source_images)
    return segmentation


def _label_map(mask: np.ndarray, source_images: Sequence[Dataset], count: int) -> np.ndarray:
    """`mask` as an unsigned label map, checked against the sources and the segments."""
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(f"mask must be (frames, rows, cols), got shape {array.shape}")
    rows, columns = int(source_images[0].Rows), int(source_images[0].Columns)
    if array.shape != (len(source_images), rows, columns):
        raise ValueError(
            f"mask shape {array.shape} does not match {len(source_images)} source images of "
            f"{rows}x{columns} (Rows (0028,0010), Columns (0028,0011))"
        )
    if array.dtype == np.bool_:
        if count != 1:
            raise ValueError("a boolean mask can only describe one segment")
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"mask must hold integer segment labels, not {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > count):
        raise ValueError(
            f"mask labels must lie in 0..{count} (one per segment); "
            f"found {int(array.min())}..{int(array.max())}"
        )
    return array.astype(np.uint8 if count < 256 else np.uint16)


def _segment_description(
    number: int, spec: SegmentSpec, algorithm: AlgorithmInfo
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.label,
        segmented_property_category=spec.category,
        segmented_property_type=spec.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.seg_identification(),
        tracking_uid=spec.tracking_uid,
        tracking_id=spec.tracking_id or spec.label,
        anatomic_regions=[spec.anatomic_region] if spec.anatomic_region else None,
    )
