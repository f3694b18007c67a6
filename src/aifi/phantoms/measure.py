"""Truth measured on label grids: voxel counts times voxel volume, centres as voxel means.

The tally is fed one slice at a time by the same pass that renders and writes the pixels, so
the truth describes exactly the voxels written, at whatever resolution, without the volume ever
being held whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aifi.phantoms.chest import ChestLabel, Nodule
from aifi.phantoms.head import INTRACRANIAL, PARENCHYMA, Haemorrhage, HeadLabel
from aifi.phantoms.truth import BrainTruth, HaemorrhageTruth, LungTruth, NoduleTruth, Point3D


class VoxelTally:
    """Voxel counts and coordinate sums per label, accumulated one slice at a time."""

    def __init__(self) -> None:
        self.count = np.zeros(256, dtype=np.int64)
        self.sum = np.zeros((3, 256), dtype=np.float64)

    def add(self, labels: np.ndarray, x: np.ndarray, y: np.ndarray, z: float) -> None:
        """Count one slice; `x` and `y` hold the patient coordinates of its flattened voxels."""
        flat = labels.ravel()
        counts = np.bincount(flat, minlength=256)
        self.count += counts
        self.sum[0] += np.bincount(flat, weights=x, minlength=256)
        self.sum[1] += np.bincount(flat, weights=y, minlength=256)
        self.sum[2] += counts * z

    def volume_mm3(self, labels: Sequence[int], voxel_mm3: float) -> float:
        return float(self.count[list(labels)].sum() * voxel_mm3)

    def centre(self, label: int, fallback: Point3D) -> Point3D:
        """Mean position of the voxels of `label`; `fallback` when the grid holds none."""
        n = int(self.count[label])
        if n == 0:
            return fallback
        x, y, z = (round(float(self.sum[axis, label]) / n, 3) for axis in range(3))
        return (x, y, z)


def _ml(tally: VoxelTally, voxel_mm3: float, *labels: int) -> float:
    return round(tally.volume_mm3(labels, voxel_mm3) / 1000.0, 3)


def brain_truth(tally: VoxelTally, voxel_mm3: float) -> BrainTruth:
    """Intracranial volume, its compartments and the brain parenchymal fraction."""
    icv = _ml(tally, voxel_mm3, *INTRACRANIAL)
    parenchyma = _ml(tally, voxel_mm3, *PARENCHYMA)
    return BrainTruth(
        intracranial_volume_ml=icv,
        brain_parenchyma_ml=parenchyma,
        brain_parenchymal_fraction=round(parenchyma / icv, 4) if icv else 0.0,
        grey_matter_ml=_ml(tally, voxel_mm3, HeadLabel.GREY_MATTER, HeadLabel.DEEP_GREY),
        white_matter_ml=_ml(tally, voxel_mm3, HeadLabel.WHITE_MATTER),
        csf_ml=_ml(tally, voxel_mm3, HeadLabel.CSF, HeadLabel.VENTRICLE),
        ventricles_ml=_ml(tally, voxel_mm3, HeadLabel.VENTRICLE),
    )


def haemorrhage_truth(
    tally: VoxelTally, voxel_mm3: float, bleed: Haemorrhage | None
) -> HaemorrhageTruth | None:
    if bleed is None:
        return None
    return HaemorrhageTruth(
        requested_volume_ml=bleed.volume_ml,
        volume_ml=_ml(tally, voxel_mm3, HeadLabel.HAEMORRHAGE),
        voxel_count=int(tally.count[HeadLabel.HAEMORRHAGE]),
        planned_centre_mm=bleed.centre_mm,
        centre_mm=tally.centre(HeadLabel.HAEMORRHAGE, bleed.centre_mm),
    )


def lung_truth(tally: VoxelTally, voxel_mm3: float) -> LungTruth:
    return LungTruth(
        right_ml=_ml(tally, voxel_mm3, ChestLabel.LUNG_RIGHT),
        left_ml=_ml(tally, voxel_mm3, ChestLabel.LUNG_LEFT),
    )


def nodule_truths(
    tally: VoxelTally, voxel_mm3: float, nodules: Sequence[Nodule]
) -> list[NoduleTruth]:
    """One truth per nodule, in the order given (nodule i is label ``ChestLabel.NODULE + i``)."""
    truths = []
    for index, nodule in enumerate(nodules):
        if nodule.centre_mm is None:
            raise ValueError(f"nodule {index} has no centre: place it before measuring")
        label = ChestLabel.NODULE + index
        volume = tally.volume_mm3([label], voxel_mm3)
        truths.append(
            NoduleTruth(
                index=index,
                requested_diameter_mm=nodule.diameter_mm,
                diameter_mm=round((6.0 * volume / np.pi) ** (1 / 3), 3),
                volume_mm3=round(volume, 3),
                voxel_count=int(tally.count[label]),
                planned_centre_mm=nodule.centre_mm,
                centre_mm=tally.centre(label, nodule.centre_mm),
            )
        )
    return truths
