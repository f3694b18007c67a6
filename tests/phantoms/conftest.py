"""Fixtures for the phantom tests: small studies written once per session, and a series reader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from aifi.phantoms import Nodule, StudyTruth, write_study


@dataclass(frozen=True)
class Written:
    folder: Path
    truth: StudyTruth


@dataclass(frozen=True)
class Series:
    """A written series read back: headers in instance order and values in output units."""

    headers: Sequence[Dataset]
    values: np.ndarray  # (slices, rows, columns), rescaled (HU for CT)

    def positions(self) -> np.ndarray:
        return np.array([[float(v) for v in h.ImagePositionPatient] for h in self.headers])

    def voxel_centres(self, mask: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm) of the voxels where `mask` holds, as (n, 3)."""
        k, i, j = np.nonzero(mask)
        first = self.headers[0]
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
        row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
        col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
        origins = self.positions()[k]
        return origins + j[:, None] * col_mm * row_dir + i[:, None] * row_mm * col_dir

    @property
    def voxel_volume_mm3(self) -> float:
        row_mm, col_mm = (float(v) for v in self.headers[0].PixelSpacing)
        return row_mm * col_mm * float(self.headers[0].SliceThickness)


def read_series(folder: Path) -> Series:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    values = np.stack(
        [
            ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            for ds in datasets
        ]
    )
    return Series(headers=datasets, values=values)


@pytest.fixture(scope="session")
def series_reader() -> Callable[[Path], Series]:
    return read_series


@pytest.fixture(scope="session")
def small_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    """One small study of each kind, with findings, written once for the whole session."""
    root = tmp_path_factory.mktemp("phantoms")
    requests: dict[str, dict[str, object]] = {
        "ct-head": {"haemorrhage_ml": 30.0},
        "mr-brain": {},
        "ct-chest": {"nodules": [Nodule(20.0), Nodule(24.0, (-80.0, 0.0, 10.0))]},
        "dx-hand": {"fracture": True},
    }
    written = {}
    for kind, findings in requests.items():
        folder = root / kind
        truth = write_study(kind, folder, seed=11, size="small", **findings)  # type: ignore[arg-type]
        written[kind] = Written(folder, truth)
    return written
