"""A PA radiograph of a left hand and wrist, with an optional distal radius fracture.

The image is a projection: each pixel's value is proportional to the X-ray attenuation along
its ray (log-domain, "For Presentation", bone bright), summed from soft-tissue thickness and from
bones modelled as tubes with a cortex around marrow: forearm bones, eight carpals, metacarpals and
phalanges. Fingers point up, the thumb is on the image's right, the forearm enters from below.
The layout is drawn in frame millimetres (x to the right, y down), whatever the image size;
`_CENTRE` is the frame point at the image centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from aifi.phantoms.geometry import GridSize
from aifi.phantoms.shapes import capsule_distance, chord
from aifi.phantoms.truth import FractureTruth

Point2D = tuple[float, float]

# Linear attenuation near 50 keV, per mm.
_MU_SOFT = 0.021
_MU_CORTEX = 0.075
_MU_MARROW = 0.032
# Stored value = offset + gain * attenuation (12-bit), with mild quantum noise.
_OFFSET = 150.0
_GAIN = 1300.0
_NOISE = 12.0
_MAX_STORED = 4095

# The point of the layout below (frame mm) that sits at the image centre.
_CENTRE = (104.0, 108.0)


@dataclass(frozen=True)
class Bone:
    """A tubular bone from `start` to `end` (mm, frame coordinates) with cortex outside `inner`."""

    name: str
    start: Point2D
    end: Point2D
    radius: float
    inner: float


def _digit(
    name: str, base: Point2D, head: Point2D, lengths: tuple[float, ...], radii: tuple[float, ...]
) -> list[Bone]:
    """Phalanges continuing the line of a metacarpal from its `head`, with joint gaps."""
    direction = np.subtract(head, base) / np.linalg.norm(np.subtract(head, base))
    bones = []
    start = np.asarray(head) + direction * 2.5
    for number, (length, radius) in enumerate(zip(lengths, radii, strict=True), start=1):
        end = start + direction * length
        bones.append(
            Bone(
                f"{name} phalanx {number}",
                (start[0], start[1]),
                (end[0], end[1]),
                radius,
                radius * 0.55,
            )
        )
        start = end + direction * 2.2
    return bones


_METACARPALS: tuple[
    tuple[str, Point2D, Point2D, float, tuple[float, ...], tuple[float, ...]], ...
] = (
    ("thumb", (139.0, 143.0), (156.0, 112.0), 5.5, (28.0, 20.0), (4.5, 3.6)),
    ("index", (126.0, 140.0), (128.0, 84.0), 4.5, (38.0, 22.0, 16.0), (4.0, 3.4, 2.8)),
    ("middle", (112.0, 138.0), (111.0, 80.0), 4.5, (42.0, 26.0, 17.0), (4.1, 3.5, 2.9)),
    ("ring", (98.0, 140.0), (94.0, 86.0), 4.2, (40.0, 25.0, 16.0), (3.9, 3.3, 2.8)),
    ("little", (86.0, 145.0), (77.0, 96.0), 4.0, (31.0, 18.0, 14.0), (3.5, 3.0, 2.5)),
)
_FINGER_SOFT_RADIUS = {"thumb": 10.0, "index": 8.5, "middle": 8.8, "ring": 8.3, "little": 7.5}
_CARPALS: tuple[tuple[str, Point2D, Point2D, float], ...] = (
    ("scaphoid", (124.0, 165.0), (133.0, 156.0), 6.0),
    ("lunate", (108.0, 167.0), (108.5, 165.0), 6.5),
    ("triquetrum", (94.0, 164.0), (94.5, 163.0), 5.5),
    ("pisiform", (88.0, 169.0), (88.2, 168.5), 4.0),
    ("trapezium", (138.0, 150.0), (139.0, 147.0), 6.0),
    ("trapezoid", (126.0, 149.0), (126.5, 147.0), 5.5),
    ("capitate", (111.0, 152.0), (111.0, 143.0), 6.5),
    ("hamate", (96.0, 150.0), (97.0, 145.0), 6.5),
)
_RADIUS = Bone("radius", (128.0, 300.0), (126.0, 176.0), 11.0, 7.0)
_ULNA = Bone("ulna", (82.0, 300.0), (86.0, 182.0), 7.0, 4.0)
# Distal radius fracture: this far proximal to the articular end, this oblique to the shaft.
_FRACTURE_FROM_END_MM = 24.0
_FRACTURE_TILT_DEG = 20.0


def hand_bones() -> list[Bone]:
    """Every bone of the model, forearm to fingertips."""
    bones = [_RADIUS, _ULNA]
    bones += [Bone(name, start, end, radius, radius * 0.6) for name, start, end, radius in _CARPALS]
    for name, base, head, radius, lengths, radii in _METACARPALS:
        bones.append(Bone(f"{name} metacarpal", base, head, radius, radius * 0.55))
        bones += _digit(name, base, head, lengths, radii)
    return bones


@dataclass(frozen=True)
class FractureLine:
    """Where the fracture crosses the radius, in frame millimetres."""

    start: Point2D
    end: Point2D
    half_gap_mm: float

    def gap(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Points within the fracture gap (a band around the line, limited to the radius)."""
        return capsule_distance(x, y, self.start, self.end) < self.half_gap_mm


def radius_fracture_line(pixel_spacing_mm: float) -> FractureLine:
    """The fracture line across the distal radius; the gap is at least one pixel wide."""
    axis = np.subtract(_RADIUS.start, _RADIUS.end)
    axis /= np.linalg.norm(axis)
    centre = np.asarray(_RADIUS.end) + axis * _FRACTURE_FROM_END_MM
    tilt = np.radians(90.0 - _FRACTURE_TILT_DEG)
    direction = np.array(
        [
            axis[0] * np.cos(tilt) - axis[1] * np.sin(tilt),
            axis[0] * np.sin(tilt) + axis[1] * np.cos(tilt),
        ]
    )
    # Reach the cortex on both sides: the perpendicular reach is the radius over sin(angle to axis).
    reach = _RADIUS.radius / abs(np.sin(tilt)) + pixel_spacing_mm
    start, end = centre - direction * reach, centre + direction * reach
    return FractureLine((start[0], start[1]), (end[0], end[1]), max(0.6, 0.55 * pixel_spacing_mm))


class HandRadiograph:
    """Renders the hand on a grid; `fracture` breaks the distal radius."""

    body_part = "HAND"

    def __init__(self, size: GridSize, fracture: bool = False):
        self.size = size
        self.fracture = radius_fracture_line(size.pixel_spacing_mm) if fracture else None
        spacing = size.pixel_spacing_mm
        self._u = (np.arange(size.columns) - (size.columns - 1) / 2.0) * spacing
        self._v = (np.arange(size.rows) - (size.rows - 1) / 2.0) * spacing

    def frame_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame millimetres (x right, y down) of every pixel, as two (rows, columns) arrays."""
        x = self._u[None, :] + _CENTRE[0]
        y = self._v[:, None] + _CENTRE[1]
        x_full, y_full = np.broadcast_arrays(x, y)
        return x_full, y_full

    def attenuation(self) -> tuple[np.ndarray, np.ndarray]:
        """Line integral of attenuation per pixel, and the mask of pixels the fracture changed."""
        x, y = self.frame_coordinates()
        soft = 0.7 * chord(31.0, capsule_distance(x, y, (106.0, 320.0), (108.0, 160.0)))
        palm = np.clip(1.0 - ((x - 110.0) / 42.0) ** 2 - ((y - 120.0) / 44.0) ** 2, 0.0, None)
        soft = np.maximum(soft, 34.0 * np.sqrt(palm))
        for name, base, head, _radius, lengths, _radii in _METACARPALS:
            direction = np.subtract(head, base) / np.linalg.norm(np.subtract(head, base))
            tip = np.asarray(head) + direction * (sum(lengths) + 2.5 * len(lengths) + 3.0)
            finger = chord(
                _FINGER_SOFT_RADIUS[name], capsule_distance(x, y, base, (tip[0], tip[1]))
            )
            soft = np.maximum(soft, finger)
        cortex = np.zeros_like(x)
        marrow = np.zeros_like(x)
        changed = np.zeros(x.shape, dtype=bool)
        gap = self.fracture.gap(x, y) if self.fracture is not None else None
        for bone in hand_bones():
            distance = capsule_distance(x, y, bone.start, bone.end)
            outer = chord(bone.radius, distance)
            inner = chord(bone.inner, distance)
            if gap is not None and bone is _RADIUS:
                broken = gap & (outer > 0)
                outer = np.where(broken, 0.0, outer)
                inner = np.where(broken, 0.0, inner)
                changed |= broken
            cortex += outer - inner
            marrow += inner
        soft = np.maximum(soft, cortex + marrow)
        total = _MU_SOFT * (soft - cortex - marrow) + _MU_CORTEX * cortex + _MU_MARROW * marrow
        return total, changed

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, FractureTruth | None]:
        """Stored pixel values (uint16, 12 bits) and the truth of the fracture, if any."""
        total, changed = self.attenuation()
        blur = 0.25 / self.size.pixel_spacing_mm
        if blur > 0.2:
            total = ndimage.gaussian_filter(total, blur)
        values = _OFFSET + _GAIN * total + rng.normal(0.0, _NOISE, total.shape)
        pixels = np.clip(np.rint(values), 0, _MAX_STORED).astype(np.uint16)
        return pixels, self._fracture_truth(changed)

    def _fracture_truth(self, changed: np.ndarray) -> FractureTruth | None:
        if self.fracture is None:
            return None
        rows, columns = np.nonzero(changed)
        if rows.size == 0:
            raise ValueError("the fracture line misses the radius at this image size")
        spacing = self.size.pixel_spacing_mm

        def to_pixel(point: Point2D) -> tuple[float, float]:
            column = (point[0] - _CENTRE[0]) / spacing + (self.size.columns - 1) / 2.0
            row = (point[1] - _CENTRE[1]) / spacing + (self.size.rows - 1) / 2.0
            return (round(row, 2), round(column, 2))

        start_px, end_px = to_pixel(self.fracture.start), to_pixel(self.fracture.end)
        return FractureTruth(
            bone="distal radius",
            line_start_px=start_px,
            line_end_px=end_px,
            line_start_mm=(round(start_px[0] * spacing, 2), round(start_px[1] * spacing, 2)),
            line_end_mm=(round(end_px[0] * spacing, 2), round(end_px[1] * spacing, 2)),
            bounding_box_px=(
                int(rows.min()),
                int(columns.min()),
                int(rows.max()),
                int(columns.max()),
            ),
            pixel_count=int(rows.size),
        )
