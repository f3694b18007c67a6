"""Head anatomy shared by the CT head and MR brain phantoms, with an optional haemorrhage.

The head is nested ellipsoids: scalp, a skull with outer and inner tables around the diploë,
subarachnoid CSF, a cortex of grey matter folded by sulci, white matter, deep grey nuclei,
lateral and third ventricles, an interhemispheric fissure, and a neck below. The seed varies
head size and atrophy, so brain parenchymal fraction differs between patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from aifi.phantoms.shapes import (
    Vector,
    ellipse_rho2,
    ellipsoid_rho2,
    ellipsoid_surface_points,
    in_labels,
    paint,
    sphere_volume_semi_axis,
)


class HeadLabel(IntEnum):
    """Tissue classes of the head; the value is the label stored in the label grid."""

    AIR = 0
    SOFT_TISSUE = 1
    BONE = 2
    DIPLOE = 3
    CSF = 4
    GREY_MATTER = 5
    WHITE_MATTER = 6
    VENTRICLE = 7
    DEEP_GREY = 8
    HAEMORRHAGE = 9


INTRACRANIAL = (
    HeadLabel.CSF,
    HeadLabel.GREY_MATTER,
    HeadLabel.WHITE_MATTER,
    HeadLabel.VENTRICLE,
    HeadLabel.DEEP_GREY,
    HeadLabel.HAEMORRHAGE,
)
PARENCHYMA = (HeadLabel.GREY_MATTER, HeadLabel.WHITE_MATTER, HeadLabel.DEEP_GREY)

# Axis ratios of a haemorrhage (left-right, anterior-posterior, cranio-caudal); product is 1.
_BLEED_RATIOS: Vector = (1.15, 1.0, 0.87)
# Where haemorrhages typically sit: basal ganglia (hypertensive) and lobar, either side.
_BLEED_SITES: tuple[Vector, ...] = (
    (-24.0, -2.0, 2.0),
    (24.0, -2.0, 2.0),
    (-34.0, 28.0, 22.0),
    (34.0, 28.0, 22.0),
    (-30.0, -40.0, 18.0),
    (30.0, -40.0, 18.0),
    (0.0, 0.0, 0.0),
)


@dataclass(frozen=True)
class Haemorrhage:
    """An intraparenchymal haemorrhage: an ellipsoid of `volume_ml` centred at `centre_mm`."""

    volume_ml: float
    centre_mm: Vector

    @property
    def semi_axes_mm(self) -> Vector:
        k = sphere_volume_semi_axis(self.volume_ml * 1000.0, _BLEED_RATIOS)
        return (k * _BLEED_RATIOS[0], k * _BLEED_RATIOS[1], k * _BLEED_RATIOS[2])


class HeadModel:
    """A head in patient coordinates (LPS, mm), centred on the origin.

    `scale` multiplies every dimension (head size); `atrophy` in (0, 1] shrinks the brain
    inside an unchanged skull and widens the ventricles.
    """

    def __init__(
        self, scale: float = 1.0, atrophy: float = 1.0, haemorrhage: Haemorrhage | None = None
    ):
        if not 0.8 <= scale <= 1.2:
            raise ValueError(f"HeadModel: scale must lie in [0.8, 1.2], got {scale}")
        if not 0.85 <= atrophy <= 1.0:
            raise ValueError(f"HeadModel: atrophy must lie in [0.85, 1.0], got {atrophy}")
        self.scale = scale
        self.atrophy = atrophy
        self.haemorrhage = haemorrhage
        s = scale
        self._scalp = (78.0 * s, 96.0 * s, 70.0 * s)
        self._outer_skull = (73.0 * s, 91.0 * s, 65.0 * s)
        self._diploe_outer = (71.0 * s, 89.0 * s, 63.0 * s)
        self._diploe_inner = (69.0 * s, 87.0 * s, 61.0 * s)
        self._inner_skull = (67.0 * s, 85.0 * s, 59.0 * s)
        b = s * atrophy
        self._brain = (64.5 * b, 82.5 * b, 56.5 * b)
        v = s * (1.0 + 4.0 * (1.0 - atrophy))
        self._lateral_ventricles = (
            ((-9.0 * s, -2.0 * s, 8.0 * s), (5.0 * v, 24.0 * s, 8.0 * v)),
            ((9.0 * s, -2.0 * s, 8.0 * s), (5.0 * v, 24.0 * s, 8.0 * v)),
            ((0.0, 2.0 * s, -8.0 * s), (1.5 * v, 11.0 * s, 7.0 * s)),
        )
        self._deep_grey = (
            ((-12.0 * s, 10.0 * s, -3.0 * s), (8.0 * s, 12.0 * s, 8.0 * s)),
            ((12.0 * s, 10.0 * s, -3.0 * s), (8.0 * s, 12.0 * s, 8.0 * s)),
            ((-22.0 * s, -8.0 * s, 2.0 * s), (6.0 * s, 14.0 * s, 9.0 * s)),
            ((22.0 * s, -8.0 * s, 2.0 * s), (6.0 * s, 14.0 * s, 9.0 * s)),
        )
        if haemorrhage is not None:
            self._check_haemorrhage(haemorrhage)

    @property
    def z_extent_mm(self) -> tuple[float, float]:
        """Lowest and highest z of the skull, which a grid must cover for the whole brain."""
        return (-self._outer_skull[2], self._outer_skull[2])

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """The tissue label (a :class:`HeadLabel` value) at each point, as uint8."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.uint8)
        s = self.scale
        neck_section = ellipse_rho2(x, y, (0.0, 12.0 * s), (48.0 * s, 52.0 * s)) < 1
        neck = (z < -25.0 * s) & neck_section
        paint(out, neck, HeadLabel.SOFT_TISSUE)
        paint(out, ellipsoid_rho2(x, y, z, (0, 0, 0), self._scalp) < 1, HeadLabel.SOFT_TISSUE)
        paint(out, ellipsoid_rho2(x, y, z, (0, 0, 0), self._outer_skull) < 1, HeadLabel.BONE)
        paint(out, ellipsoid_rho2(x, y, z, (0, 0, 0), self._diploe_outer) < 1, HeadLabel.DIPLOE)
        paint(out, ellipsoid_rho2(x, y, z, (0, 0, 0), self._diploe_inner) < 1, HeadLabel.BONE)
        intracranial = ellipsoid_rho2(x, y, z, (0, 0, 0), self._inner_skull) < 1
        paint(out, intracranial, HeadLabel.CSF)
        self._paint_brain(out, x, y, z)
        if self.haemorrhage is not None:
            bleed = (
                ellipsoid_rho2(x, y, z, self.haemorrhage.centre_mm, self.haemorrhage.semi_axes_mm)
                < 1
            )
            paint(out, bleed & intracranial, HeadLabel.HAEMORRHAGE)
        return out

    def _paint_brain(
        self, out: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray | float
    ) -> None:
        rho2 = ellipsoid_rho2(x, y, z, (0, 0, 0), self._brain)
        brain = rho2 < 1
        if not brain.any():
            return
        rho = np.sqrt(rho2)
        # Gyri and sulci: a folding phase around the head axis that drifts with height.
        theta = np.arctan2(y / self._brain[1], x / self._brain[0])
        phase = 11.0 * theta + 2.5 * np.sin(z / (12.0 * self.scale))
        white_edge = 0.78 + 0.06 * (1.0 - np.cos(2.0 * phase)) / 2.0
        sulcus = (np.abs(np.sin(phase)) < 0.12) & (rho > 0.82)
        fissure = (np.abs(x) < 1.2 * self.scale) & (rho > 0.5)
        paint(out, brain, HeadLabel.GREY_MATTER)
        paint(out, brain & (rho < white_edge), HeadLabel.WHITE_MATTER)
        for centre, semi in self._deep_grey:
            paint(out, brain & (ellipsoid_rho2(x, y, z, centre, semi) < 1), HeadLabel.DEEP_GREY)
        for centre, semi in self._lateral_ventricles:
            paint(out, brain & (ellipsoid_rho2(x, y, z, centre, semi) < 1), HeadLabel.VENTRICLE)
        paint(out, brain & (sulcus | fissure), HeadLabel.CSF)

    def _check_haemorrhage(self, bleed: Haemorrhage) -> None:
        if not 0.0 < bleed.volume_ml <= 150.0:
            raise ValueError(f"haemorrhage volume must lie in (0, 150] mL, got {bleed.volume_ml}")
        if not self.haemorrhage_fits(bleed):
            raise ValueError(
                f"haemorrhage of {bleed.volume_ml} mL at {bleed.centre_mm} mm does not lie wholly "
                "inside the brain"
            )

    def haemorrhage_fits(self, bleed: Haemorrhage) -> bool:
        """Whether `bleed` lies wholly inside the cranium, clear of the skull."""
        points = ellipsoid_surface_points(bleed.centre_mm, bleed.semi_axes_mm)
        base = HeadModel(self.scale, self.atrophy)
        labels = base.labels(points[:, 0], points[:, 1], points[:, 2])
        return bool(in_labels(labels, [int(v) for v in INTRACRANIAL]).all())


def haemorrhage_site(
    volume_ml: float, scale: float, atrophy: float, rng: np.random.Generator
) -> Vector:
    """A plausible centre for a haemorrhage of `volume_ml`, chosen by `rng` among those that fit."""
    model = HeadModel(scale, atrophy)
    order = rng.permutation(len(_BLEED_SITES) - 1).tolist() + [len(_BLEED_SITES) - 1]
    for index in order:
        site = tuple(c * scale for c in _BLEED_SITES[index])
        centre: Vector = (site[0], site[1], site[2])
        if model.haemorrhage_fits(Haemorrhage(volume_ml, centre)):
            return centre
    raise ValueError(f"no haemorrhage site fits {volume_ml} mL inside this brain")


# Hounsfield units of each head label (realistic non-contrast CT) and their noise.
HEAD_HU: dict[int, float] = {
    HeadLabel.AIR: -1000.0,
    HeadLabel.SOFT_TISSUE: 35.0,
    HeadLabel.BONE: 1300.0,
    HeadLabel.DIPLOE: 750.0,
    HeadLabel.CSF: 6.0,
    HeadLabel.GREY_MATTER: 40.0,
    HeadLabel.WHITE_MATTER: 26.0,
    HeadLabel.VENTRICLE: 6.0,
    HeadLabel.DEEP_GREY: 38.0,
    HeadLabel.HAEMORRHAGE: 72.0,
}
HEAD_HU_NOISE: dict[int, float] = {HeadLabel.BONE: 60.0, HeadLabel.DIPLOE: 60.0}

# MR T1-weighted (MPRAGE-like) signal: fat-rich scalp and marrow bright, WM > GM > CSF,
# cortical bone and air dark.
HEAD_T1: dict[int, float] = {
    HeadLabel.AIR: 0.0,
    HeadLabel.SOFT_TISSUE: 1050.0,
    HeadLabel.BONE: 40.0,
    HeadLabel.DIPLOE: 650.0,
    HeadLabel.CSF: 180.0,
    HeadLabel.GREY_MATTER: 560.0,
    HeadLabel.WHITE_MATTER: 860.0,
    HeadLabel.VENTRICLE: 180.0,
    HeadLabel.DEEP_GREY: 620.0,
    HeadLabel.HAEMORRHAGE: 540.0,
}
