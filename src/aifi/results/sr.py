"""Build the IHE AIR measurement report: a Comprehensive 3D SR with a TID 1500 content tree.

Every finding becomes one measurement group carrying its tracking identifier and UID, the
algorithm identification (TID 4019), the finding and finding site codes, its measurements and a
reference to where it is: a segment of the accompanying SEG (TID 1411), a point in the patient
coordinate system (TID 1411 volume surface), or else the source images (TID 1501).
highdicom copies the Patient and Study modules from the source images, so the report joins the
same (pseudonymised) study and carries no identity the sources did not.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes

from aifi.results.algorithm import AlgorithmInfo
from aifi.results.findings import Finding
from aifi.results.source import detach_from_sources, study_of

#: CID 100 "Quantitative Diagnostic Imaging Procedures": the default Procedure Reported.
IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")

#: Series numbers of AI results sit high so that they sort after the acquired series.
DEFAULT_SR_SERIES_NUMBER = 9001

MeasurementGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def build_measurement_report(
    source_images: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    findings: Sequence[Finding],
    *,
    segmentation: Dataset | None = None,
    procedure_reported: CodedConcept = IMAGING_PROCEDURE,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    instance_number: int = 1,
    series_description: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Imaging Measurement Report of `findings` on `source_images`.

    Parameters
    ----------
    source_images:
        The (pseudonymised) images the algorithm read; pixel data need not be loaded.
    algorithm:
        Identification written into every measurement group and the device observer context.
    findings:
        At least one finding; a product that found nothing reports the finding it looked for
        with an "Absent" evaluation.
    segmentation:
        The SEG that findings with a ``segment_number`` refer to; it becomes evidence too.
    series_description:
        Defaults to the algorithm's name and version.

    Raises
    ------
    ValueError
        If the sources do not form one study, there are no findings, tracking UIDs repeat, a
        finding names a segment but no (or a different study's) segmentation is given, or a
        finding has a point but the sources have no Frame of Reference UID.
    """
    study_uid = study_of(source_images)
    if not findings:
        raise ValueError("a measurement report needs at least one finding")
    tracking_uids = [finding.tracking_uid for finding in findings]
    if len(set(tracking_uids)) != len(tracking_uids):
        raise ValueError("findings must have distinct tracking UIDs (112040)")
    evidence = list(source_images)
    if segmentation is not None:
        if str(segmentation.StudyInstanceUID) != study_uid:
            raise ValueError(
                "the segmentation belongs to another study (StudyInstanceUID (0020,000D))"
            )
        evidence.append(segmentation)

    groups = [
        _measurement_group(finding, algorithm, source_images, segmentation) for finding in findings
    ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.device_serial_number,
        series_description=series_description or f"{algorithm.name} {algorithm.version}"[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    detach_from_sources(document, evidence)
    return document


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1002: the algorithm, not a person, is the observer of an AI result."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
        serial_number=algorithm.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _measurement_group(
    finding: Finding,
    algorithm: AlgorithmInfo,
    source_images: Sequence[Dataset],
    segmentation: Dataset | None,
) -> MeasurementGroup:
    """One TID 1411 (segment or point) or TID 1501 (whole images) group for `finding`."""
    tracking = hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id)
    measurements = [
        hd.sr.Measurement(name=m.name, value=m.value, unit=m.unit) for m in finding.measurements
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(name=e.name, value=e.value) for e in finding.evaluations
    ]
    sites = [hd.sr.FindingSite(finding.finding_site)] if finding.finding_site else None
    if finding.segment_number is not None or finding.point is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=(
                _referenced_segment(finding, segmentation, source_images)
                if finding.segment_number is not None
                else None
            ),
            referenced_volume_surface=(
                _point_surface(finding, source_images) if finding.point is not None else None
            ),
            finding_type=finding.finding,
            algorithm_id=algorithm.sr_identification(),
            finding_sites=sites,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding.finding,
        algorithm_id=algorithm.sr_identification(),
        finding_sites=sites,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(image) for image in source_images
        ],
    )


def _referenced_segment(
    finding: Finding, segmentation: Dataset | None, source_images: Sequence[Dataset]
) -> hd.sr.ReferencedSegment:
    if segmentation is None:
        raise ValueError(
            f"finding {finding.tracking_id!r} refers to segment {finding.segment_number} "
            "but no segmentation was given"
        )
    numbers = {int(item.SegmentNumber) for item in segmentation.SegmentSequence}
    if finding.segment_number not in numbers:
        raise ValueError(
            f"finding {finding.tracking_id!r} refers to segment {finding.segment_number}, "
            f"which the segmentation does not have (SegmentNumber (0062,0004): {sorted(numbers)})"
        )
    # The whole segment (every frame) is meant; its sources are the report's source images.
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        segment_number=int(finding.segment_number),
        source_images=_sources_for_segmentation(source_images),
    )


def _point_surface(finding: Finding, source_images: Sequence[Dataset]) -> hd.sr.VolumeSurface:
    frame_of_reference = source_images[0].get("FrameOfReferenceUID")
    if not frame_of_reference:
        raise ValueError(
            f"finding {finding.tracking_id!r} has a point, but the source images lack "
            "FrameOfReferenceUID (0020,0052)"
        )
    return hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.point], dtype=float),
        frame_of_reference_uid=str(frame_of_reference),
        source_images=_sources_for_segmentation(source_images),
    )


def _sources_for_segmentation(
    source_images: Sequence[Dataset],
) -> list[hd.sr.SourceImageForSegmentation]:
    return [hd.sr.SourceImageForSegmentation.from_source_image(image) for image in source_images]
