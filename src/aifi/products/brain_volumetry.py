"""Brain volumetry: intracranial volume, brain parenchyma and its fraction, from CT head or MR T1.

A classical reference algorithm, not for clinical use. On CT, the intracranial space is what
the skull (bone above 300 HU) encloses, slice by slice, within a soft-tissue window; brain
parenchyma is the part of it between the CSF and the blood windows. On a T1-weighted MR the
contrast is not calibrated, so the thresholds come from the image itself: a four-class Otsu
split of the histogram separates dark (air, bone, CSF) from grey matter, white matter and fat,
the brain is the largest tissue component the field of view holds whole, and the intracranial
space adds the CSF that touches it. Brain parenchymal fraction (BPF) is parenchyma over
intracranial volume. Results: a TID 1500 SR, a two-segment SEG (parenchyma, intracranial CSF)
and the JSON summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import CodedConcept
from scipy import ndimage

from aifi.products.imaging import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    Volume,
    components,
    fill_holes_per_slice,
    largest_component,
    load_volume,
    save_result,
    touches_border,
    write_key_image,
)
from aifi.results import (
    AlgorithmInfo,
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

PRODUCT_ID = "aifi-brain-volumetry"
VERSION = "1.0.0"

#: CT: bone (skull), the intracranial content window, and brain parenchyma between CSF
#: (about 0–10 HU) and acute blood (about 60–90 HU).
CT_BONE_HU = 300.0
CT_INTRACRANIAL_HU = (-20.0, 100.0)
CT_PARENCHYMA_HU = (16.0, 56.0)
#: An adult intracranial volume is 1,100–1,900 mL; far less means no (whole) brain was imaged.
MIN_INTRACRANIAL_ML = 500.0
MIN_SLICES = 10
#: On MR the skull's inner table is dark like CSF and thin: thicker slices step over it, so the
#: brain would merge with the diploë and scalp. 3D T1 series are 1–1.5 mm.
MAX_MR_SLICE_SPACING_MM = 3.0

ALGORITHM = AlgorithmInfo(
    name="AIFI brain volumetry (reference)",
    version=VERSION,
    manufacturer="AIFI reference products",
    parameters={
        "ct_bone_hu": CT_BONE_HU,
        "ct_parenchyma_hu": f"{CT_PARENCHYMA_HU[0]:g}..{CT_PARENCHYMA_HU[1]:g}",
        "mr_thresholds": "4-class Otsu, CSF/tissue at midpoint of class means",
    },
)

# Coded concepts (SNOMED CT and DICOM, as listed in pydicom's code dictionary).
CRANIAL_CAVITY = CodedConcept("1101003", "SCT", "Cranial cavity")  # CID 7140
BRAIN = CodedConcept("12738006", "SCT", "Brain")
CSF = CodedConcept("65216001", "SCT", "Cerebrospinal fluid")
HEAD = CodedConcept("69536005", "SCT", "Head")
ANATOMICAL_STRUCTURE = CodedConcept("91723000", "SCT", "Anatomical Structure")  # CID 7150
VOLUME = CodedConcept("118565006", "SCT", "Volume")
VOLUME_RATIO = CodedConcept("113288", "DCM", "Volume Ratio")  # CID 7469
MILLILITRE = ucum_unit("mL", "milliliter")
RATIO = ucum_unit("{ratio}", "ratio")

#: Labels of the segmentation: segment numbers of the SEG.
PARENCHYMA_LABEL = 1
CSF_LABEL = 2


def manifest(vendor: str) -> dict[str, Any]:
    return {
        "id": PRODUCT_ID,
        "vendor": vendor,
        "name": "Brain volumetry (reference algorithm, not for clinical use)",
        "version": VERSION,
        "clinical_area": "quantification",
        "description": (
            "Intracranial volume, brain parenchyma volume and brain parenchymal fraction from "
            "a CT head or a T1-weighted MR brain series. Study dates are kept (shifted "
            "consistently per patient) so that successive results can be put on a time axis."
        ),
        "intended_use": "Platform testing and demonstration only. Not for clinical use.",
        "accepts": {
            "modalities": ["CT", "MR"],
            "body_parts": ["HEAD", "BRAIN"],
            "sop_classes": [CT_IMAGE_STORAGE, MR_IMAGE_STORAGE],
        },
        "data_needed": ["retain-long-modified-dates"],
        "outputs": [
            {"kind": "sr-tid1500", "description": "ICV, parenchyma and CSF in mL, BPF"},
            {"kind": "seg", "description": "brain parenchyma and intracranial CSF"},
            {"kind": "summary-json", "description": "the same figures for dashboards"},
        ],
        "priority": "routine",
        "turnaround_sla_seconds": 600,
        "for_clinical_use": False,
    }


@dataclass(frozen=True)
class BrainVolumes:
    """What the product measures, in mL (and BPF as a fraction).

    ``csf_ml`` is the intracranial volume outside the parenchyma: CSF, and on CT any acute
    blood too (on MR a haemorrhage looks like grey matter and counts as parenchyma).
    """

    intracranial_ml: float
    parenchyma_ml: float
    csf_ml: float

    @property
    def parenchymal_fraction(self) -> float:
        return self.parenchyma_ml / self.intracranial_ml if self.intracranial_ml else 0.0


@dataclass(frozen=True)
class BrainSegmentation:
    """A label map (0 outside, 1 parenchyma, 2 intracranial CSF) and the volumes it gives."""

    labels: np.ndarray
    volumes: BrainVolumes


def segment_brain(volume: Volume) -> BrainSegmentation:
    """Segment the intracranial space and the brain parenchyma of a CT head or MR T1 volume.

    Raises
    ------
    ProductError
        When MR slices are too far apart, no brain is found wholly inside the field of view,
        or the intracranial space found is implausibly small.
    """
    if volume.modality == "CT":
        intracranial, parenchyma = _ct_masks(volume.values)
    else:
        spacing = volume.spacing_mm[0]
        if spacing > MAX_MR_SLICE_SPACING_MM * 1.01:
            raise ProductError(
                f"MR slices are {spacing:.1f} mm apart; brain volumetry on MR needs at most "
                f"{MAX_MR_SLICE_SPACING_MM:g} mm (a 3D T1 series)"
            )
        intracranial, parenchyma = _mr_masks(volume.values)
    voxel_ml = volume.voxel_volume_mm3 / 1000.0
    intracranial_ml = float(np.count_nonzero(intracranial)) * voxel_ml
    if intracranial_ml < MIN_INTRACRANIAL_ML:
        raise ProductError(
            f"no brain found: intracranial volume {intracranial_ml:.0f} mL is below "
            f"{MIN_INTRACRANIAL_ML:.0f} mL (is the whole head in the series?)"
        )
    labels = np.zeros(volume.values.shape, dtype=np.uint8)
    labels[intracranial] = CSF_LABEL
    labels[parenchyma] = PARENCHYMA_LABEL
    parenchyma_ml = float(np.count_nonzero(parenchyma)) * voxel_ml
    return BrainSegmentation(
        labels=labels,
        volumes=BrainVolumes(
            intracranial_ml=intracranial_ml,
            parenchyma_ml=parenchyma_ml,
            csf_ml=intracranial_ml - parenchyma_ml,
        ),
    )


def ct_intracranial(hu: np.ndarray) -> np.ndarray:
    """The intracranial space of a CT head: soft tissue and fluid that the skull encloses.

    The skull is bone above :data:`CT_BONE_HU`; what it encloses within each slice and lies in
    the :data:`CT_INTRACRANIAL_HU` window, as one connected whole, is the intracranial space.
    The intracranial haemorrhage product uses the same mask.
    """
    bone = hu >= CT_BONE_HU
    enclosed = fill_holes_per_slice(bone) & ~bone
    content = enclosed & (hu >= CT_INTRACRANIAL_HU[0]) & (hu <= CT_INTRACRANIAL_HU[1])
    return np.asarray(ndimage.binary_fill_holes(largest_component(content)), dtype=bool)


def _ct_masks(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intracranial, parenchyma) on CT: what the skull encloses, then a parenchyma window."""
    intracranial = ct_intracranial(hu)
    parenchyma = intracranial & (hu >= CT_PARENCHYMA_HU[0]) & (hu < CT_PARENCHYMA_HU[1])
    return intracranial, parenchyma


def _mr_masks(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intracranial, parenchyma) on a T1-weighted MR, with thresholds from the histogram."""
    dark_cut, tissue_cut = mr_thresholds(signal)
    tissue = signal >= tissue_cut
    labels, counts = components(tissue)
    counts[0] = 0
    for cut_off in touches_border(labels):  # the brain must be wholly in the field of view
        counts[cut_off] = 0
    if not counts.any():
        raise ProductError("no brain found wholly inside the field of view")
    brain = labels == int(np.argmax(counts))
    fluid = (signal >= dark_cut) & (signal < tissue_cut)
    reach, _counts = components(brain | fluid)
    seed = int(reach[tuple(np.argwhere(brain)[0])])
    intracranial = ndimage.binary_fill_holes(reach == seed)
    return intracranial, brain


def mr_thresholds(signal: np.ndarray) -> tuple[float, float]:
    """(dark/CSF, CSF/tissue) cuts of a T1-weighted volume.

    A four-class Otsu split puts its first cut between the dark classes (air, bone, CSF) and
    grey matter. An Otsu split below that cut separates air and bone from CSF; the CSF/tissue
    cut is then moved to the midpoint between the mean CSF and the mean grey-matter signal, so
    that neither class sits near it.

    Raises
    ------
    ProductError
        When the histogram has no such classes (a blank or saturated series).
    """
    values = signal[:: max(1, signal.shape[0] // 32)].ravel()
    first, second, _third = multi_otsu(values, classes=4)
    dark_cut = multi_otsu(values[values < first], classes=2)[0]
    fluid = values[(values >= dark_cut) & (values < first)]
    grey = values[(values >= first) & (values < second)]
    if fluid.size == 0 or grey.size == 0:
        raise ProductError("MR signal has no CSF and grey-matter classes (blank series?)")
    return float(dark_cut), float((fluid.mean() + grey.mean()) / 2.0)


def multi_otsu(values: np.ndarray, classes: int, bins: int = 256) -> list[float]:
    """Otsu's thresholds splitting `values` into `classes` classes (maximal between-class variance).

    Dynamic programming over histogram bins; returns the ``classes - 1`` cuts, ascending.

    Raises
    ------
    ProductError
        When `values` is empty or holds a single value.
    """
    if values.size == 0 or float(values.min()) == float(values.max()):
        raise ProductError("image has no contrast to threshold (constant pixel values)")
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    moment = np.concatenate([[0.0], np.cumsum(counts * centres, dtype=np.float64)])

    def score(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        w = weight[end] - weight[start]
        m = moment[end] - moment[start]
        return np.where(w > 0, m * m / np.maximum(w, 1e-12), 0.0)

    ends = np.arange(bins + 1)
    best = score(np.zeros_like(ends), ends)  # best[j]: one class over bins [0, j)
    choices = []
    for _ in range(classes - 1):
        start = ends[:, None]
        end = ends[None, :]
        total = np.where(start < end, best[:, None] + score(start, end), -np.inf)
        choices.append(np.argmax(total, axis=0))
        best = total.max(axis=0)
    cuts = []
    position = bins
    for choice in reversed(choices):
        position = int(choice[position])
        cuts.append(float(edges[position]))
    return sorted(cuts)


def findings(segmentation: BrainSegmentation) -> list[Finding]:
    """The SR findings: intracranial volume; parenchyma (segment 1) with BPF; CSF (segment 2)."""
    volumes = segmentation.volumes
    return [
        Finding(
            finding=CRANIAL_CAVITY,
            tracking_id="Intracranial volume",
            finding_site=HEAD,
            measurements=[
                NumericMeasurement(VOLUME, round(volumes.intracranial_ml, 1), MILLILITRE)
            ],
        ),
        Finding(
            finding=BRAIN,
            tracking_id="Brain parenchyma",
            finding_site=CRANIAL_CAVITY,
            measurements=[
                NumericMeasurement(VOLUME, round(volumes.parenchyma_ml, 1), MILLILITRE),
                NumericMeasurement(VOLUME_RATIO, round(volumes.parenchymal_fraction, 4), RATIO),
            ],
            segment_number=PARENCHYMA_LABEL,
        ),
        Finding(
            finding=CSF,
            tracking_id="Intracranial CSF",
            finding_site=CRANIAL_CAVITY,
            measurements=[NumericMeasurement(VOLUME, round(volumes.csf_ml, 1), MILLILITRE)],
            segment_number=CSF_LABEL,
        ),
    ]


def run(context: JobContext) -> ProductResult:
    volume = load_volume(
        context.inputs,
        modalities={"CT", "MR"},
        sop_classes={CT_IMAGE_STORAGE, MR_IMAGE_STORAGE},
        min_slices=MIN_SLICES,
    )
    segmentation = segment_brain(volume)
    found = findings(segmentation)
    seg = build_segmentation(
        volume.headers,
        segmentation.labels,
        [
            SegmentSpec(
                label="Brain parenchyma",
                category=ANATOMICAL_STRUCTURE,
                type=BRAIN,
                tracking_id=found[1].tracking_id,
                tracking_uid=found[1].tracking_uid,
            ),
            SegmentSpec(
                label="Intracranial CSF",
                category=ANATOMICAL_STRUCTURE,
                type=CSF,
                tracking_id=found[2].tracking_id,
                tracking_uid=found[2].tracking_uid,
            ),
        ],
        ALGORITHM,
    )
    report = build_measurement_report(volume.headers, ALGORITHM, found, segmentation=seg)
    files = [
        save_result(seg, context.output_dir, "brain-volumetry-seg.dcm"),
        save_result(report, context.output_dir, "brain-volumetry-sr.dcm"),
    ]
    write_key_image(
        volume,
        segmentation.labels,
        context.output_dir,
        window=(40.0, 80.0) if volume.modality == "CT" else None,
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
