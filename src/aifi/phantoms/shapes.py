"""Analytic shapes the phantoms are built from, evaluated on any broadcastable coordinate arrays.

Anatomy is a stack of simple solids (ellipsoids, elliptic cylinders, capsules) so that a model
can be sampled one slice at a time, at any resolution, and a lesion's placement can be checked
against the anatomy before a single voxel is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Vector = tuple[float, float, float]


def ellipsoid_rho2(
    x: np.ndarray, y: np.ndarray, z: np.ndarray | float, centre: Vector, semi_axes: Vector
) -> np.ndarray:
    """Squared normalised radius: below 1 inside the axis-aligned ellipsoid, 1 on its surface."""
    return (
        ((x - centre[0]) / semi_axes[0]) ** 2
        + ((y - centre[1]) / semi_axes[1]) ** 2
        + ((z - centre[2]) / semi_axes[2]) ** 2
    )


def ellipse_rho2(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], semi_axes: tuple[float, float]
) -> np.ndarray:
    """Squared normalised radius of an axial ellipse (an elliptic cylinder along z)."""
    return ((x - centre[0]) / semi_axes[0]) ** 2 + ((y - centre[1]) / semi_axes[1]) ** 2


def sphere_volume_semi_axis(volume_mm3: float, ratios: Vector) -> float:
    """The scale k such that an ellipsoid with semi-axes k * `ratios` has `volume_mm3`."""
    return float((3.0 * volume_mm3 / (4.0 * np.pi * ratios[0] * ratios[1] * ratios[2])) ** (1 / 3))


def ellipsoid_surface_points(centre: Vector, semi_axes: Vector, count: int = 400) -> np.ndarray:
    """`count` points spread evenly over an ellipsoid's surface, plus its centre, as (n, 3).

    Used to check that a lesion lies wholly inside an organ before it is placed.
    """
    i = np.arange(count, dtype=np.float64) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / count)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    unit = np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )
    points = np.asarray(centre) + unit * np.asarray(semi_axes)
    return np.vstack([points, np.asarray(centre)[None, :]])


def capsule_distance(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    """Distance in the plane from each (x, y) to the segment `start`-`end`."""
    sx, sy = start
    dx, dy = end[0] - sx, end[1] - sy
    length2 = dx * dx + dy * dy
    t = np.clip(((x - sx) * dx + (y - sy) * dy) / length2, 0.0, 1.0)
    return np.hypot(x - (sx + t * dx), y - (sy + t * dy))


def chord(radius: float | np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Length of the chord through a circle of `radius` at `distance` from its centre."""
    return 2.0 * np.sqrt(np.clip(np.asarray(radius) ** 2 - distance**2, 0.0, None))


def in_labels(labels: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Boolean mask of the elements of `labels` that are one of `allowed`."""
    return np.isin(labels, np.asarray(allowed, dtype=labels.dtype))


def paint(out: np.ndarray, mask: np.ndarray | np.bool_ | bool, value: int) -> None:
    """Set `out` to `value` where `mask` holds; `mask` may be any shape that broadcasts to it.

    Shapes are evaluated on separable coordinates (a row of x, a column of y, a scalar z), so
    many masks come out smaller than the slice; broadcasting them here keeps that cheap.
    """
    out[np.broadcast_to(mask, out.shape)] = value
