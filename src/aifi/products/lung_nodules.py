"""Lung nodules on CT chest: detection and localisation with a multiscale Laplacian of Gaussian.

A classical reference algorithm, not for clinical use. The lungs are the large air-filled
regions inside the body (below -400 HU); everything they enclose, slice by slice, is the lung
field. Bright blobs in the lung field are found as local maxima of the scale-normalised
Laplacian of Gaussian over a range of scales (a sphere of radius r answers most strongly at
sigma = r / sqrt(3)); each candidate is then segmented as the connected solid tissue (above
-400 HU, the midpoint between aerated lung and soft tissue) it sits in. Solid structures that
are hollow (a bronchus with its lumen) or elongated (a vessel, a fissure) are not nodules.
Nodules reach the SR as one measurement group each (diameter of the sphere of equal volume,
volume), each pointing at its own segment of the SEG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import CodedConcept
from scipy import ndimage

from aifi.products.imaging import (
    CT_IMAGE_STORAGE,
    Volume,
    components,
    fill_holes_per_slice,
    largest_component,
    load_volume,
    save_result,
    write_key_image,
)
from aifi.results import (
    AlgorithmInfo,
    CodedEvaluation,
    Finding,
    NumericMeasurement,
    ResultSummary,
    SegmentSpec,
    Triage,
    build_measurement_report,
    build_segmentation,
    ucum_unit,
)
from aifi.vendor import JobContext, ProductError, ProductResult

PRODUCT_ID = "aifi-lung-nodules"
VERSION = "1.0.0"

#: Aerated lung lies below, soft tissue (a solid nodule) above.
LUNG_HU = -400.0
#: Air in the airways (about -1000 HU) is darker than aerated lung (about -850 HU).
AIRWAY_HU = -950.0
#: Thickness of an airway's wall, taken out of the lung field with the airway.
AIRWAY_WALL_MM = 2.5
#: Darker specks smaller than this are noise in the lung, not an airway.
MIN_AIRWAY_VOXELS = 8
#: The body is everything denser than this, outside air is below.
BODY_HU = -500.0
#: Gaussian scales of the Laplacian, in mm; they answer to spheres of 2 sigma sqrt(3) diameter,
#: so 4 to 33 mm.
SCALES_MM = (1.2, 1.7, 2.4, 3.4, 4.8, 6.8, 9.6)
#: Scale-normalised response (in HU) below which a blob is too faint to be a solid nodule.
MIN_RESPONSE_HU = 100.0
#: Nodules are reported from this diameter (of the sphere of equal volume) up to the largest.
MIN_DIAMETER_MM = 3.0
MAX_DIAMETER_MM = 30.0
#: A nodule's solid voxels fill at least this fraction of its slice-by-slice outline.
MIN_SOLIDITY = 0.85
#: Longest over shortest principal axis of a nodule.
MAX_ELONGATION = 2.5
MAX_NODULES = 20
MIN_LUNG_ML = 500.0
MIN_SLICES = 10
#: Coarser images cannot show a nodule of a few millimetres as a blob (CT lung screening
#: protocols ask for slices of at most 2.5 mm).
MAX_PIXEL_SPACING_MM = 2.0
MAX_SLICE_SPACING_MM = 5.0

ALGORITHM = AlgorithmInfo(
    name="AIFI lung nodules (reference)",
    version=VERSION,
    manufacturer="AIFI reference products",
    parameters={
        "lung_hu": LUNG_HU,
        "airway_hu": AIRWAY_HU,
        "log_scales_mm": ",".join(f"{s:g}" for s in SCALES_MM),
        "min_response_hu": MIN_RESPONSE_HU,
        "min_diameter_mm": MIN_DIAMETER_MM,
    },
)

NODULE = CodedConcept("27925004", "SCT", "Nodule")  # CID 6102, 7151
LUNG = CodedConcept("39607008", "SCT", "Lung")
MORPHOLOGICALLY_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
DIAMETER = CodedConcept("81827009", "SCT", "Diameter")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
PRESENCE = CodedConcept("121052", "DCM", "Presence of property")
ABSENT = CodedConcept("272519000", "SCT", "Absent")  # CID 240
MILLIMETRE = ucum_unit("mm", "millimeter")
CUBIC_MILLIMETRE = ucum_unit("mm3", "cubic millimeter")


def manifest(vendor: str) -> dict[str, Any]:
    return {
        "id": PRODUCT_ID,
        "vendor": vendor,
        "name": "Lung nodules (reference algorithm, not for clinical use)",
        "version": VERSION,
        "clinical_area": "diagnostic-support",
        "description": (
            "Detects and localises solid lung nodules of 3 to 30 mm on a CT chest series and "
            "measures their diameter and volume."
        ),
        "intended_use": "Platform testing and demonstration only. Not for clinical use.",
        "accepts": {
            "modalities": ["CT"],
            "body_parts": ["CHEST", "LUNG", "THORAX"],
            "sop_classes": [CT_IMAGE_STORAGE],
        },
        "data_needed": [],
        "outputs": [
            {"kind": "sr-tid1500", "description": "one finding per nodule: diameter, volume"},
            {"kind": "seg", "description": "one segment per nodule"},
            {"kind": "summary-json", "description": "the same findings for dashboards"},
        ],
        "priority": "routine",
        "turnaround_sla_seconds": 600,
        "for_clinical_use": False,
    }


@dataclass(frozen=True)
class DetectedNodule:
    """A nodule: its voxels as (slice, row, column) indices, and where and how large it is."""

    voxels: np.ndarray
    voxel_count: int
    volume_mm3: float
    diameter_mm: float
    centre_mm: tuple[float, float, float]
    response_hu: float


def lung_field(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The lungs and everything they enclose slice by slice (where nodules lie), less airways.

    The lungs are the air spaces inside the body that are at least a tenth of the largest
    (smaller ones are the trachea and bronchi seen apart). Airways, air at airway density
    (:data:`AIRWAY_HU`) with their walls (:data:`AIRWAY_WALL_MM`), are taken out of the field
    wherever they are: a bronchus cut across or at its end is soft tissue that the lung
    encloses, and it is not a nodule.

    Raises
    ------
    ProductError
        When the series holds no body or no air inside it.
    """
    body = largest_component(hu > BODY_HU)
    if not body.any():
        raise ProductError("no body found in the series (nothing above -500 HU)")
    inside = fill_holes_per_slice(body)
    air = inside & (hu < LUNG_HU)
    labels, counts = components(air)
    counts[0] = 0
    if not counts.any():
        raise ProductError("no lungs found: no air inside the body")
    field = fill_holes_per_slice(np.isin(labels, np.flatnonzero(counts >= 0.1 * counts.max())))
    lumen_labels, lumen_counts = components(inside & (hu < AIRWAY_HU))
    lumen_counts[0] = 0
    lumen = np.isin(lumen_labels, np.flatnonzero(lumen_counts >= MIN_AIRWAY_VOXELS))
    if lumen.any():
        field &= ~ndimage.binary_dilation(lumen, structure=_ellipsoid(AIRWAY_WALL_MM, spacing))
    return field


def _ellipsoid(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """A structuring element reaching `radius_mm` (at least one voxel) along each axis."""
    radii = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    rho2 = np.zeros([2 * r + 1 for r in radii])
    for grid, radius in zip(grids, radii, strict=True):
        rho2 = rho2 + (grid / radius) ** 2
    return np.asarray(rho2 <= 1.0)


def detect_nodules(volume: Volume) -> list[DetectedNodule]:
    """Solid nodules in the lung field of a CT chest, largest first.

    Raises
    ------
    ProductError
        When the images are too coarse (:data:`MAX_PIXEL_SPACING_MM`,
        :data:`MAX_SLICE_SPACING_MM`) or no lungs of at least :data:`MIN_LUNG_ML` are found.
    """
    slice_mm, row_mm, column_mm = volume.spacing_mm
    if max(row_mm, column_mm) > MAX_PIXEL_SPACING_MM or slice_mm > MAX_SLICE_SPACING_MM:
        raise ProductError(
            f"images too coarse for nodule detection: pixels {row_mm:.1f} x {column_mm:.1f} mm, "
            f"slices {slice_mm:.1f} mm apart (at most {MAX_PIXEL_SPACING_MM:g} mm and "
            f"{MAX_SLICE_SPACING_MM:g} mm)"
        )
    hu = volume.values
    field = lung_field(hu, volume.spacing_mm)
    lung_ml = float(np.count_nonzero(field)) * volume.voxel_volume_mm3 / 1000.0
    if lung_ml < MIN_LUNG_ML:
        raise ProductError(
            f"no lungs found: the lung field is {lung_ml:.0f} mL, below {MIN_LUNG_ML:.0f} mL "
            "(is this a chest CT?)"
        )
    solid = field & (hu > LUNG_HU)
    labels, _counts = components(solid)
    boxes = ndimage.find_objects(labels)
    candidates = _blob_candidates(hu, field, solid, volume.spacing_mm)
    nodules: list[DetectedNodule] = []
    taken: set[int] = set()
    for response, index in candidates:
        label = int(labels[index])
        if label == 0 or label in taken:
            continue
        taken.add(label)
        box = boxes[label - 1]
        assert box is not None  # every label found in `labels` has a box
        nodule = _measure(volume, labels[box] == label, box, response)
        if nodule is not None:
            nodules.append(nodule)
        if len(nodules) >= MAX_NODULES:
            break
    return sorted(nodules, key=lambda n: -n.volume_mm3)


def _blob_candidates(
    hu: np.ndarray, field: np.ndarray, solid: np.ndarray, spacing: tuple[float, float, float]
) -> list[tuple[float, tuple[int, int, int]]]:
    """(response, voxel index) of every scale-space maximum in the lung field, strongest first.

    The Laplacian is computed on the lung field's bounding box only, widened by the largest
    kernel, so the rest of the body costs nothing.
    """
    where = np.argwhere(field)
    margin = [int(np.ceil(3 * SCALES_MM[-1] / s)) for s in spacing]
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + 1 + margin, hu.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    image = np.clip(hu[box], -1000.0, 200.0).astype(np.float32)
    inside = solid[box]
    found: list[tuple[float, tuple[int, int, int]]] = []
    for sigma in SCALES_MM:
        response = -(sigma**2) * _laplacian_of_gaussian(image, sigma, spacing)
        peaks = (response == ndimage.maximum_filter(response, size=3)) & inside
        peaks &= response >= MIN_RESPONSE_HU
        for k, i, j in np.argwhere(peaks):
            index = (int(k + low[0]), int(i + low[1]), int(j + low[2]))
            found.append((float(response[k, i, j]), index))
    return sorted(found, key=lambda item: -item[0])


def _laplacian_of_gaussian(
    image: np.ndarray, sigma_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The Laplacian, in HU per mm², of `image` smoothed by a Gaussian of `sigma_mm`.

    Smoothing once and taking second differences (each axis divided by its spacing squared)
    is a third of the work of scipy's gaussian_laplace, and in millimetres on any voxel shape.
    """
    smoothed = ndimage.gaussian_filter(image, sigma=[sigma_mm / s for s in spacing])
    laplacian = np.zeros_like(smoothed)
    for axis, step in enumerate(spacing):
        laplacian += ndimage.correlate1d(smoothed, [1.0, -2.0, 1.0], axis=axis) / step**2
    return laplacian


def _measure(
    volume: Volume, mask: np.ndarray, box: tuple[slice, ...], response: float
) -> DetectedNodule | None:
    """The nodule that `mask` outlines within `box`; None when too small, large, hollow or long."""
    count = int(np.count_nonzero(mask))
    volume_mm3 = count * volume.voxel_volume_mm3
    diameter = float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))
    if not MIN_DIAMETER_MM <= diameter <= MAX_DIAMETER_MM:
        return None
    if count / np.count_nonzero(fill_holes_per_slice(mask)) < MIN_SOLIDITY:
        return None  # hollow: a bronchus wall around its lumen
    voxels = np.argwhere(mask) + [axis.start for axis in box]
    points = volume.patient_points(voxels)
    if count >= 4:
        spread = np.linalg.eigvalsh(np.cov(points.T))
        # A nodule seen on one slice has no spread along it; a voxel's own spread is d²/12.
        shortest = max(float(spread[0]), max(volume.spacing_mm) ** 2 / 12.0)
        if np.sqrt(float(spread[-1]) / shortest) > MAX_ELONGATION:
            return None  # a vessel or fissure, not a nodule
    x, y, z = (float(v) for v in points.mean(axis=0))
    return DetectedNodule(
        voxels=voxels,
        voxel_count=count,
        volume_mm3=volume_mm3,
        diameter_mm=diameter,
        centre_mm=(x, y, z),
        response_hu=response,
    )


def findings(nodules: list[DetectedNodule]) -> list[Finding]:
    """One finding per nodule (segment n is nodule n), or one "nodule absent" finding."""
    if not nodules:
        return [
            Finding(
                finding=NODULE,
                tracking_id="No nodule",
                finding_site=LUNG,
                evaluations=[CodedEvaluation(PRESENCE, ABSENT)],
            )
        ]
    return [
        Finding(
            finding=NODULE,
            tracking_id=f"Nodule {number}",
            finding_site=LUNG,
            measurements=[
                NumericMeasurement(DIAMETER, round(nodule.diameter_mm, 1), MILLIMETRE),
                NumericMeasurement(VOLUME, round(nodule.volume_mm3, 1), CUBIC_MILLIMETRE),
            ],
            segment_number=number,
        )
        for number, nodule in enumerate(nodules, start=1)
    ]


def label_map(shape: tuple[int, ...], nodules: list[DetectedNodule]) -> np.ndarray:
    """Nodule n's voxels hold n (the SEG's segment numbers)."""
    labels = np.zeros(shape, dtype=np.uint8)
    for number, nodule in enumerate(nodules, start=1):
        labels[tuple(nodule.voxels.T)] = number
    return labels


def run(context: JobContext) -> ProductResult:
    volume = load_volume(
        context.inputs, modalities={"CT"}, sop_classes={CT_IMAGE_STORAGE}, min_slices=MIN_SLICES
    )
    nodules = detect_nodules(volume)
    found = findings(nodules)
    labels = label_map(volume.values.shape, nodules)
    files = []
    seg = None
    if nodules:
        seg = build_segmentation(
            volume.headers,
            labels,
            [
                SegmentSpec(
                    label=finding.tracking_id,
                    category=MORPHOLOGICALLY_ABNORMAL,
                    type=NODULE,
                    tracking_id=finding.tracking_id,
                    tracking_uid=finding.tracking_uid,
                    anatomic_region=LUNG,
                )
                for finding in found
            ],
            ALGORITHM,
        )
        files.append(save_result(seg, context.output_dir, "lung-nodules-seg.dcm"))
    report = build_measurement_report(volume.headers, ALGORITHM, found, segmentation=seg)
    files.append(save_result(report, context.output_dir, "lung-nodules-sr.dcm"))
    write_key_image(
        volume,
        (labels == 1) if nodules else labels,
        context.output_dir,
        window=(-600.0, 1500.0),
    )
    summary = ResultSummary.from_findings(
        product_id=PRODUCT_ID,
        product_version=VERSION,
        algorithm=ALGORITHM,
        findings=found,
        triage=Triage(),
        study_instance_uid=volume.study_instance_uid,
    )
    return ProductResult(files=files, summary=summary.model_dump(mode="json"))
