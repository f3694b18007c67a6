"""Sampling grids of synthetic studies: image size, pixel spacing and where each voxel lies.

Anatomy is defined in patient coordinates (DICOM LPS, millimetres, the phantom's centre at the
origin), so one model can be sampled at any size: a 64 x 64 x 16 grid for fast tests, a
512 x 512 x 300 grid for the benchmark. The grid is axial and axis-aligned: rows run along +x
(towards the patient's left), columns along +y (posterior), slices step along +z (superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXIAL_ORIENTATION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class GridSize:
    """How finely a study is sampled; `slices` and `slice_thickness_mm` are ignored for radiographs.

    Pixels are square: `pixel_spacing_mm` is both the row and the column spacing. Slices are
    contiguous: the spacing between slices equals the slice thickness.
    """

    rows: int
    columns: int
    pixel_spacing_mm: float
    slices: int = 1
    slice_thickness_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.rows < 8 or self.columns < 8:
            raise ValueError(
                f"GridSize: rows and columns must be at least 8, got {self.rows}x{self.columns}"
            )
        if self.slices < 1:
            raise ValueError(f"GridSize: slices must be at least 1, got {self.slices}")
        if self.pixel_spacing_mm <= 0 or self.slice_thickness_mm <= 0:
            raise ValueError("GridSize: pixel_spacing_mm and slice_thickness_mm must be positive")


@dataclass(frozen=True)
class VolumeGrid:
    """An axial stack of `size.slices` images centred on `centre_mm` in patient coordinates."""

    size: GridSize
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def voxel_volume_mm3(self) -> float:
        return self.size.pixel_spacing_mm**2 * self.size.slice_thickness_mm

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """(row spacing, column spacing), the order of Pixel Spacing (0028,0030)."""
        return (self.size.pixel_spacing_mm, self.size.pixel_spacing_mm)

    def x_mm(self) -> np.ndarray:
        """Patient x of each column (the direction of a row, first half of Image Orientation)."""
        return self._axis(self.size.columns, self.size.pixel_spacing_mm, self.centre_mm[0])

    def y_mm(self) -> np.ndarray:
        """Patient y of each row (the direction down a column, second half of Image Orientation)."""
        return self._axis(self.size.rows, self.size.pixel_spacing_mm, self.centre_mm[1])

    def z_mm(self, slice_index: int) -> float:
        """Patient z of slice `slice_index` (0 is the most inferior)."""
        return float(
            self._axis(self.size.slices, self.size.slice_thickness_mm, self.centre_mm[2])[
                slice_index
            ]
        )

    def image_position(self, slice_index: int) -> tuple[float, float, float]:
        """Image Position (Patient) of slice `slice_index`: the centre of its first pixel."""
        return (float(self.x_mm()[0]), float(self.y_mm()[0]), self.z_mm(slice_index))

    @staticmethod
    def _axis(count: int, spacing: float, centre: float) -> np.ndarray:
        return centre + (np.arange(count, dtype=np.float64) - (count - 1) / 2.0) * spacing
