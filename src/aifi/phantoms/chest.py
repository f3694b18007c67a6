"""Chest anatomy for the CT chest phantom, with optional solid lung nodules.

The thorax is an elliptic body with subcutaneous fat and a muscle wall, sloping ribs, sternum,
a spine with discs and spinal canal, two lungs whose bases are domed by the liver, the heart,
the aorta, trachea and main bronchi. Nodules are spheres placed wholly inside one lung.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from aifi.phantoms.shapes import (
    Vector,
    capsule_distance,
    ellipse_rho2,
    ellipsoid_rho2,
    ellipsoid_surface_points,
    paint,
)


class ChestLabel(IntEnum):
    """Tissue classes of the chest; nodule number i is stored as ``NODULE + i``."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG_RIGHT = 3
    LUNG_LEFT = 4
    CORTICAL_BONE = 5
    TRABECULAR_BONE = 6
    RIB = 7
    HEART = 8
    VESSEL = 9
    AIRWAY = 10
    CANAL = 11
    DISC = 12
    LIVER = 13
    NODULE = 20


MAX_NODULES = 50
NODULE_DIAMETER_RANGE_MM = (2.0, 50.0)
# Minimum clearance between a nodule and the pleura, the mediastinum or another nodule.
_CLEARANCE_MM = 2.0


@dataclass(frozen=True)
class Nodule:
    """A solid nodule of `diameter_mm`; the seed chooses `centre_mm` (patient LPS) when None."""

    diameter_mm: float
    centre_mm: Vector | None = None


class ChestModel:
    """A thorax in patient coordinates (LPS, mm) centred on the origin; `scale` sets body size."""

    def __init__(self, scale: float = 1.0, nodules: Sequence[Nodule] = ()):
        if not 0.8 <= scale <= 1.2:
            raise ValueError(f"ChestModel: scale must lie in [0.8, 1.2], got {scale}")
        self.scale = scale
        s = scale
        self._body = (165.0 * s, 112.0 * s)
        self._muscle = (152.0 * s, 102.0 * s)
        self._rib_outer = (138.0 * s, 92.0 * s)
        self._cavity = (129.0 * s, 85.0 * s)
        self._lungs = (
            (ChestLabel.LUNG_RIGHT, (-75.0 * s, 6.0 * s, 0.0), (58.0 * s, 80.0 * s, 92.0 * s)),
            (ChestLabel.LUNG_LEFT, (75.0 * s, 6.0 * s, 0.0), (56.0 * s, 80.0 * s, 90.0 * s)),
        )
        self._heart = ((18.0 * s, -28.0 * s, -38.0 * s), (58.0 * s, 46.0 * s, 52.0 * s))
        self._liver = ((-35.0 * s, 5.0 * s, -125.0 * s), (120.0 * s, 95.0 * s, 70.0 * s))
        self.nodules: tuple[tuple[Vector, float], ...] = ()
        for nodule in nodules:
            if nodule.centre_mm is None:
                raise ValueError("ChestModel: every nodule needs a centre (see place_nodules)")
            self.add_nodule(nodule.centre_mm, nodule.diameter_mm)

    @property
    def z_extent_mm(self) -> tuple[float, float]:
        """Lowest and highest z of the lungs, which a grid must cover."""
        return (-92.0 * self.scale, 92.0 * self.scale)

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """The tissue label at each point, as uint8 (see :class:`ChestLabel`)."""
        s = self.scale
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.uint8)
        paint(out, ellipse_rho2(x, y, (0.0, 0.0), self._body) < 1, ChestLabel.FAT)
        paint(out, ellipse_rho2(x, y, (0.0, 0.0), self._muscle) < 1, ChestLabel.MUSCLE)
        cavity = ellipse_rho2(x, y, (0.0, 0.0), self._cavity) < 1
        rib_ring = (ellipse_rho2(x, y, (0.0, 0.0), self._rib_outer) < 1) & ~cavity
        # Ribs slope down from back to front; the anterior midline is cartilage and sternum.
        rib_band = np.mod(z - 12.0 * s * (y / self._rib_outer[1]), 26.0 * s) < 8.0 * s
        anterior_midline = (np.abs(x) < 24.0 * s) & (y < 0)
        paint(out, rib_ring & rib_band & ~anterior_midline, ChestLabel.RIB)
        sternum = (ellipse_rho2(x, y, (0.0, -89.0 * s), (15.0 * s, 6.0 * s)) < 1) & (z > -70.0 * s)
        paint(out, sternum, ChestLabel.CORTICAL_BONE)
        for label, centre, semi in self._lungs:
            paint(out, cavity & (ellipsoid_rho2(x, y, z, centre, semi) < 1), label)
        paint(out, ellipsoid_rho2(x, y, z, *self._liver) < 1, ChestLabel.LIVER)
        paint(out, ellipsoid_rho2(x, y, z, *self._heart) < 1, ChestLabel.HEART)
        self._paint_vessels_and_airways(out, x, y, z)
        self._paint_spine(out, x, y, z)
        for index, (centre, diameter) in enumerate(self.nodules):
            radius = diameter / 2.0
            inside = ellipsoid_rho2(x, y, z, centre, (radius, radius, radius)) < 1
            paint(out, inside, ChestLabel.NODULE + index)
        return out

    def _paint_vessels_and_airways(
        self, out: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray | float
    ) -> None:
        s = self.scale
        paint(out, np.hypot(x - 18.0 * s, y - 50.0 * s) < 11.0 * s, ChestLabel.VESSEL)
        ascending = (
            (np.hypot(x - 4.0 * s, y + 18.0 * s) < 14.0 * s) & (z > -40.0 * s) & (z < 55.0 * s)
        )
        arch = (capsule_distance(x, y, (4.0 * s, -18.0 * s), (18.0 * s, 50.0 * s)) < 11.0 * s) & (
            np.abs(z - 55.0 * s) < 9.0 * s
        )
        paint(out, ascending | arch, ChestLabel.VESSEL)
        trachea = (np.hypot(x, y - 22.0 * s) < 9.0 * s) & (z > 25.0 * s)
        below_carina = 25.0 * s - z
        bronchus_x = 3.0 * s + 0.9 * below_carina
        from_bronchus = np.minimum(
            np.hypot(x - bronchus_x, y - 24.0 * s), np.hypot(x + bronchus_x, y - 24.0 * s)
        )
        main_bronchi_level = (below_carina >= 0) & (below_carina < 30.0 * s)
        bronchi = (from_bronchus < 6.0 * s) & main_bronchi_level
        wall = ((np.hypot(x, y - 22.0 * s) < 11.0 * s) & (z > 25.0 * s)) | (
            (from_bronchus < 8.0 * s) & main_bronchi_level
        )
        paint(out, wall, ChestLabel.MUSCLE)
        paint(out, trachea | bronchi, ChestLabel.AIRWAY)

    def _paint_spine(
        self, out: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray | float
    ) -> None:
        s = self.scale
        body_r = np.hypot(x, y - 72.0 * s)
        canal_r = np.hypot(x, y - 100.0 * s)
        disc = np.mod(z + 100.0 * s, 30.0 * s) < 6.0 * s
        paint(out, body_r < 17.0 * s, ChestLabel.CORTICAL_BONE)
        paint(out, (body_r < 15.0 * s) & ~disc, ChestLabel.TRABECULAR_BONE)
        paint(out, (body_r < 15.0 * s) & disc, ChestLabel.DISC)
        arch = (canal_r < 13.0 * s) | ((np.abs(x) < 4.0 * s) & (y > 100.0 * s) & (y < 122.0 * s))
        paint(out, arch & ~disc, ChestLabel.CORTICAL_BONE)
        paint(out, canal_r < 8.0 * s, ChestLabel.CANAL)

    def _base_labels(self, points: np.ndarray) -> np.ndarray:
        bare = ChestModel(self.scale)
        return bare.labels(points[:, 0], points[:, 1], points[:, 2])

    def nodule_fits(self, centre: Vector, diameter: float) -> bool:
        """Whether a nodule lies wholly inside one lung with clearance from pleura and nodules."""
        outer = diameter / 2.0 + _CLEARANCE_MM
        labels = self._base_labels(ellipsoid_surface_points(centre, (outer, outer, outer)))
        one_lung = bool((labels == labels[-1]).all()) and int(labels[-1]) in (
            ChestLabel.LUNG_RIGHT,
            ChestLabel.LUNG_LEFT,
        )
        apart = all(
            np.linalg.norm(np.subtract(centre, other)) >= (diameter + other_d) / 2.0 + _CLEARANCE_MM
            for other, other_d in self.nodules
        )
        return one_lung and apart

    @property
    def lungs(self) -> tuple[tuple[ChestLabel, Vector, Vector], ...]:
        """(label, centre, semi-axes) of the ellipsoid each lung is cut from."""
        return self._lungs

    def add_nodule(self, centre: Vector, diameter: float) -> None:
        """Add a nodule; raise ValueError naming the rule when it does not fit."""
        low, high = NODULE_DIAMETER_RANGE_MM
        if not low <= diameter <= high:
            raise ValueError(f"nodule diameter must lie in [{low}, {high}] mm, got {diameter}")
        if len(self.nodules) >= MAX_NODULES:
            raise ValueError(f"at most {MAX_NODULES} nodules per study")
        if not self.nodule_fits(centre, diameter):
            raise ValueError(
                f"nodule of {diameter} mm at {centre} mm must lie wholly inside one lung, "
                f"{_CLEARANCE_MM} mm clear of the pleura and other nodules"
            )
        self.nodules += ((centre, diameter),)


def place_nodules(
    nodules: Sequence[Nodule], scale: float, rng: np.random.Generator
) -> list[Nodule]:
    """Give every nodule without a centre one drawn by `rng` where it fits; keep the others.

    Nodules with a given centre are placed first, so drawn ones avoid them.
    """
    placed = ChestModel(scale, [n for n in nodules if n.centre_mm is not None])
    result: list[Nodule] = []
    for nodule in nodules:
        if nodule.centre_mm is not None:
            result.append(nodule)
            continue
        for _ in range(2000):
            side = placed.lungs[int(rng.integers(2))]
            centre_xyz = np.asarray(side[1]) + rng.uniform(-0.8, 0.8, 3) * np.asarray(side[2])
            centre: Vector = (float(centre_xyz[0]), float(centre_xyz[1]), float(centre_xyz[2]))
            if placed.nodule_fits(centre, nodule.diameter_mm):
                placed.add_nodule(centre, nodule.diameter_mm)
                result.append(Nodule(nodule.diameter_mm, centre))
                break
        else:
            raise ValueError(f"no place in the lungs fits a nodule of {nodule.diameter_mm} mm")
    return result


# Hounsfield units of each chest label (non-contrast CT) and label-specific noise.
CHEST_HU: dict[int, float] = {
    ChestLabel.AIR: -1000.0,
    ChestLabel.FAT: -100.0,
    ChestLabel.MUSCLE: 45.0,
    ChestLabel.LUNG_RIGHT: -850.0,
    ChestLabel.LUNG_LEFT: -850.0,
    ChestLabel.CORTICAL_BONE: 900.0,
    ChestLabel.TRABECULAR_BONE: 250.0,
    ChestLabel.RIB: 550.0,
    ChestLabel.HEART: 40.0,
    ChestLabel.VESSEL: 42.0,
    ChestLabel.AIRWAY: -1000.0,
    ChestLabel.CANAL: 15.0,
    ChestLabel.DISC: 80.0,
    ChestLabel.LIVER: 58.0,
    **{ChestLabel.NODULE + i: 40.0 for i in range(MAX_NODULES)},
}
CHEST_HU_NOISE: dict[int, float] = {
    ChestLabel.LUNG_RIGHT: 20.0,
    ChestLabel.LUNG_LEFT: 20.0,
    ChestLabel.CORTICAL_BONE: 60.0,
    ChestLabel.TRABECULAR_BONE: 40.0,
    ChestLabel.RIB: 60.0,
}
