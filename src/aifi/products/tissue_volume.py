"""Tissue volume: the volume of CT voxels inside an attenuation window, as an SR TID 1500.

The simplest honest quantification: count the voxels whose Hounsfield value lies in the window
and multiply by the voxel volume. It exercises the whole path (pixels in, a measurement with a
UCUM unit out, referenced to the images it read) and is a reference algorithm, not for
clinical use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from highdicom.sr import CodedConcept

from aifi.results import (
    AlgorithmInfo,
    Finding,
    NumericMeasurement,
    build_measurement_report,
    ucum_unit,
)
from aifi.results.summary import ResultSummary, Triage
from aifi.vendor import JobContext, ProductError, ProductResult, ResultFile

PRODUCT_ID = "aifi-tissue-volume"
VERSION = "1.0.0"
#: Soft tissue, in Hounsfield units: brain, muscle, blood; not fat, air or bone.
WINDOW_HU = (0.0, 100.0)

ALGORITHM = AlgorithmInfo(
    name="AIFI tissue volume (reference)",
    version=VERSION,
    manufacturer="AIFI reference products",
    parameters={"window_hu_low": WINDOW_HU[0], "window_hu_high": WINDOW_HU[1]},
)
SOFT_TISSUE = CodedConcept("85756007", "SCT", "Body tissue structure")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def manifest(vendor: str) -> dict[str, Any]:
    return {
        "id": PRODUCT_ID,
        "vendor": vendor,
        "name": "Tissue volume (reference algorithm, not for clinical use)",
        "version": VERSION,
        "clinical_area": "quantification",
        "description": "Volume of soft tissue (0–100 HU) in a CT series.",
        "intended_use": "Platform testing only. Not for clinical use.",
        "accepts": {"modalities": ["CT"], "body_parts": [], "sop_classes": [CT_IMAGE_STORAGE]},
        "data_needed": [],
        "outputs": [
            {"kind": "sr-tid1500", "description": "tissue volume in mL"},
            {"kind": "summary-json", "description": "the same figure for dashboards"},
        ],
        "priority": "routine",
        "turnaround_sla_seconds": 300,
        "for_clinical_use": False,
    }


def _voxel_volume_ml(first: pydicom.Dataset, second: pydicom.Dataset | None) -> float:
    rows_mm, cols_mm = (float(v) for v in first.PixelSpacing)
    if second is not None:
        step = float(
            np.linalg.norm(
                np.array(second.ImagePositionPatient, float)
                - np.array(first.ImagePositionPatient, float)
            )
        )
    else:
        step = float(first.get("SliceThickness", 0) or 0)
    if step <= 0:
        raise ProductError("slice spacing unknown: no Image Position (Patient) or Slice Thickness")
    return rows_mm * cols_mm * float(step) / 1000.0


def measure(paths: list[Path]) -> tuple[float, list[pydicom.Dataset]]:
    """Tissue volume in mL over the CT slices at `paths`, and their headers (for references)."""
    headers: list[pydicom.Dataset] = []
    voxels = 0
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID != CT_IMAGE_STORAGE:
            continue
        try:
            hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0)
            )
        except Exception as exc:
            raise ProductError(
                f"instance {ds.SOPInstanceUID}: pixel data unreadable ({exc})"
            ) from exc
        voxels += int(np.count_nonzero((hu >= WINDOW_HU[0]) & (hu <= WINDOW_HU[1])))
        del ds.PixelData
        headers.append(ds)
    if not headers:
        raise ProductError("the study holds no CT image")
    headers.sort(key=lambda h: float(np.dot(h.ImagePositionPatient, _normal(h))))
    second = headers[1] if len(headers) > 1 else None
    return voxels * _voxel_volume_ml(headers[0], second), headers


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    row, col = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    return np.cross(row, col)


def run(context: JobContext) -> ProductResult:
    volume_ml, headers = measure(context.inputs)
    finding = Finding(
        finding=SOFT_TISSUE,
        tracking_id="Soft tissue",
        measurements=[
            NumericMeasurement(VOLUME, round(volume_ml, 2), ucum_unit("mL", "milliliter"))
        ],
    )
    report = build_measurement_report(headers, ALGORITHM, [finding])
    sr_path = context.output_dir / "tissue-volume-sr.dcm"
    report.save_as(sr_path, enforce_file_format=True)
    summary = ResultSummary.from_findings(
        product_id=PRODUCT_ID,
        product_version=VERSION,
        algorithm=ALGORITHM,
        findings=[finding],
        triage=Triage(),
        study_instance_uid=str(headers[0].StudyInstanceUID),
    )
    return ProductResult(
        files=[ResultFile(sr_path, name="tissue-volume-sr.dcm")],
        summary=summary.model_dump(mode="json"),
    )
