"""Intracranial haemorrhage triage on non-contrast CT head: flag, outline and measure the bleed.

A classical reference algorithm, not for clinical use. Acute blood is denser than brain
(about 50–90 HU against 20–45 HU), so within the intracranial space (what the skull encloses,
as in :mod:`aifi.products.brain_volumetry`) every connected region in the blood window is a
candidate haemorrhage. Specks smaller than :data:`MIN_COMPONENT_ML` (noise) and thin rims that
hug the skull (partial volume of bone) are dropped; whatever remains makes the study positive,
which asks the worklist for high priority. The product's jobs run at STAT priority, so the
exchange hands them to workers before routine work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import CodedConcept
from scipy import ndimage

from aifi.products.brain_volumetry import MIN_INTRACRANIAL_ML, ct_intracranial
from aifi.products.imaging import (
    CT_IMAGE_STORAGE,
    Volume,
    components,
    load_volume,
    save_result,
    write_key_image,
)
from aifi.results import (
    AlgorithmInfo,
    CodedEvaluation,
    Finding,
    NumericMeasurement,
    Priority,
    ResultSummary,
    SegmentSpec,
    Triage,
    TriageFlag,
    build_measurement_report,
    build_segmentation,
    ucum_unit,
)
from aifi.vendor import JobContext, ProductError, ProductResult

PRODUCT_ID = "aifi-ich-triage"
VERSION = "1.0.0"

#: Acute blood: above grey matter (35–45 HU), below calcification and bone.
BLOOD_HU = (56.0, 90.0)
#: Candidate regions smaller than this are noise, not a bleed.
MIN_COMPONENT_ML = 0.1
#: A region must reach this far from the skull to count: thinner rims are bone partial volume.
MIN_DEPTH_MM = 2.0
MIN_SLICES = 10

ALGORITHM = AlgorithmInfo(
    name="AIFI intracranial haemorrhage triage (reference)",
    version=VERSION,
    manufacturer="AIFI reference products",
    parameters={
        "blood_hu": f"{BLOOD_HU[0]:g}..{BLOOD_HU[1]:g}",
        "min_component_ml": MIN_COMPONENT_ML,
        "min_depth_mm": MIN_DEPTH_MM,
    },
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")  # CID 7151, 7194
BRAIN = CodedConcept("12738006", "SCT", "Brain")
MORPHOLOGICALLY_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
PRESENCE = CodedConcept("121052", "DCM", "Presence of property")
PRESENT = CodedConcept("52101004", "SCT", "Present")  # CID 240
ABSENT = CodedConcept("272519000", "SCT", "Absent")  # CID 240
MILLILITRE = ucum_unit("mL", "milliliter")
TRACKING_ID = "Intracranial hemorrhage"


def manifest(vendor: str) -> dict[str, Any]:
    return {
        "id": PRODUCT_ID,
        "vendor": vendor,
        "name": "Intracranial haemorrhage triage (reference algorithm, not for clinical use)",
        "version": VERSION,
        "clinical_area": "triage",
        "description": (
            "Flags non-contrast CT head studies with acute intracranial haemorrhage, outlines "
            "the blood and measures its volume; positive studies ask for high worklist priority."
        ),
        "intended_use": "Platform testing and demonstration only. Not for clinical use.",
        "accepts": {
            "modalities": ["CT"],
            "body_parts": ["HEAD", "BRAIN"],
            "sop_classes": [CT_IMAGE_STORAGE],
        },
        "data_needed": [],
        "outputs": [
            {"kind": "sr-tid1500", "description": "haemorrhage present or absent, volume in mL"},
            {"kind": "seg", "description": "the haemorrhage, when present"},
            {"kind": "summary-json", "description": "triage flag and priority for the worklist"},
        ],
        "priority": "stat",
        "turnaround_sla_seconds": 120,
        "for_clinical_use": False,
    }


@dataclass(frozen=True)
class Haemorrhage:
    """The blood found (possibly empty) and its volume."""

    mask: np.ndarray
    volume_ml: float

    @property
    def present(self) -> bool:
        return bool(self.volume_ml > 0)


def find_haemorrhage(volume: Volume) -> Haemorrhage:
    """Acute blood inside the intracranial space of a CT head.

    Raises
    ------
    ProductError
        When no intracranial space of plausible size is found (not a head CT, or the head is
        not wholly imaged).
    """
    hu = volume.values
    intracranial = ct_intracranial(hu)
    voxel_ml = volume.voxel_volume_mm3 / 1000.0
    intracranial_ml = float(np.count_nonzero(intracranial)) * voxel_ml
    if intracranial_ml < MIN_INTRACRANIAL_ML:
        raise ProductError(
            f"no brain found: intracranial volume {intracranial_ml:.0f} mL is below "
            f"{MIN_INTRACRANIAL_ML:.0f} mL (is this a CT head?)"
        )
    blood = intracranial & (hu >= BLOOD_HU[0]) & (hu <= BLOOD_HU[1])
    labels, counts = components(blood)
    min_voxels = max(2, math.ceil(MIN_COMPONENT_ML / voxel_ml))
    large = np.flatnonzero(counts >= min_voxels)
    large = large[large > 0]
    mask = np.zeros(hu.shape, dtype=bool)
    if large.size:
        candidates = np.isin(labels, large)
        deep = _deeper_than(intracranial, candidates, MIN_DEPTH_MM, volume.spacing_mm)
        mask = np.isin(labels, np.unique(labels[deep & candidates]))
        mask &= labels > 0
    return Haemorrhage(mask=mask, volume_ml=float(np.count_nonzero(mask)) * voxel_ml)


def _deeper_than(
    region: np.ndarray, where: np.ndarray, depth_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Voxels of `region` more than `depth_mm` from its edge, looked for only around `where`.

    The distance transform runs on the bounding box of `where` widened by more than
    `depth_mm`, which is exact for every voxel of `where`: any edge nearer than `depth_mm`
    lies inside the box.
    """
    found = np.argwhere(where)
    margin = [int(np.ceil(depth_mm / s)) + 1 for s in spacing]
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + 1 + np.asarray(margin), region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    deep = np.zeros(region.shape, dtype=bool)
    deep[box] = ndimage.distance_transform_edt(region[box], sampling=spacing) > depth_mm
    return deep


def findings(haemorrhage: Haemorrhage) -> list[Finding]:
    """The SR finding: haemorrhage present (segment 1, with its volume) or absent."""
    if not haemorrhage.present:
        return [
            Finding(
                finding=HEMORRHAGE,
                tracking_id=TRACKING_ID,
                finding_site=BRAIN,
                evaluations=[CodedEvaluation(PRESENCE, ABSENT)],
            )
        ]
    return [
        Finding(
            finding=HEMORRHAGE,
            tracking_id=TRACKING_ID,
            finding_site=BRAIN,
            measurements=[NumericMeasurement(VOLUME, round(haemorrhage.volume_ml, 2), MILLILITRE)],
            evaluations=[CodedEvaluation(PRESENCE, PRESENT)],
            segment_number=1,
        )
    ]


def triage(haemorrhage: Haemorrhage) -> Triage:
    """Positive studies go up the worklist at high priority; negatives keep their place."""
    if haemorrhage.present:
        return Triage(flag=TriageFlag.POSITIVE, priority=Priority.HIGH)
    return Triage(flag=TriageFlag.NEGATIVE)


def run(context: JobContext) -> ProductResult:
    volume = load_volume(
        context.inputs, modalities={"CT"}, sop_classes={CT_IMAGE_STORAGE}, min_slices=MIN_SLICES
    )
    haemorrhage = find_haemorrhage(volume)
    found = findings(haemorrhage)
    files = []
    seg = None
    if haemorrhage.present:
        seg = build_segmentation(
            volume.headers,
            haemorrhage.mask,
            [
                SegmentSpec(
                    label="Hemorrhage",
                    category=MORPHOLOGICALLY_ABNORMAL,
                    type=HEMORRHAGE,
                    tracking_id=found[0].tracking_id,
                    tracking_uid=found[0].tracking_uid,
                    anatomic_region=BRAIN,
                )
            ],
            ALGORITHM,
        )
        files.append(save_result(seg, context.output_dir, "ich-triage-seg.dcm"))
    report = build_measurement_report(volume.headers, ALGORITHM, found, segmentation=seg)
    files.append(save_result(report, context.output_dir, "ich-triage-sr.dcm"))
    write_key_image(volume, haemorrhage.mask, context.output_dir, window=(40.0, 80.0))
    summary = ResultSummary.from_findings(
        product_id=PRODUCT_ID,
        product_version=VERSION,
        algorithm=ALGORITHM,
        findings=found,
        triage=triage(haemorrhage),
        study_instance_uid=volume.study_instance_uid,
    )
    return ProductResult(files=files, summary=summary.model_dump(mode="json"))
