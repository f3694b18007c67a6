"""A job's input images as one volume with its geometry, and the files a product writes back.

Inputs arrive as pseudonymised single-frame DICOM files in any order, possibly with more than
one series (a localiser beside the axial series). Every reference product needs the same first
step: pick the series it can read, sort the slices along their normal, check the geometry and
turn the pixels into modality units (Hounsfield units for CT). A study the products cannot
read raises :class:`~aifi.vendor.ProductError` naming the rule and the attribute, so the job
fails with a reason the hospital can act on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from aifi.results.algorithm import NOT_FOR_CLINICAL_USE
from aifi.vendor import ProductError, ResultFile

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: Slices may sit this much (as a fraction of the median step) off an even spacing.
_SPACING_TOLERANCE = 0.05


@dataclass(frozen=True)
class Volume:
    """One series as a (slices, rows, columns) array in modality units, with its geometry.

    Slice ``k``, row ``i``, column ``j`` lies at ``origin + k * slice_step + i * row_step +
    j * column_step`` in the patient coordinate system (DICOM LPS, millimetres).
    """

    values: np.ndarray
    headers: list[Dataset]
    paths: list[Path]
    modality: str
    origin: np.ndarray
    slice_step: np.ndarray
    row_step: np.ndarray
    column_step: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Distance between neighbouring voxels along (slices, rows, columns)."""
        return (
            float(np.linalg.norm(self.slice_step)),
            float(np.linalg.norm(self.row_step)),
            float(np.linalg.norm(self.column_step)),
        )

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel: the cell spanned by the three steps (skew safe)."""
        return float(
            abs(np.linalg.det(np.stack([self.slice_step, self.row_step, self.column_step])))
        )

    @property
    def study_instance_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    def patient_points(self, indices: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm) of voxel indices (n, 3) given as (slice, row, column)."""
        ijk = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
        steps = np.stack([self.slice_step, self.row_step, self.column_step])
        return self.origin + ijk @ steps

    def slice_image(self, index: int) -> Dataset:
        """Slice `index` read again with its pixel data (the headers kept none)."""
        return pydicom.dcmread(self.paths[index])

    def centroid_mm(self, mask: np.ndarray) -> tuple[float, float, float]:
        """Mean patient position of the voxels where `mask` holds."""
        points = self.patient_points(np.argwhere(mask))
        x, y, z = (float(v) for v in points.mean(axis=0))
        return (x, y, z)


def load_volume(
    paths: Sequence[Path],
    *,
    modalities: Collection[str],
    sop_classes: Collection[str],
    min_slices: int,
) -> Volume:
    """The largest series of `paths` with an accepted modality and SOP class, as a volume.

    Raises
    ------
    ProductError
        When no file holds an accepted image (Modality (0008,0060), SOP Class UID
        (0008,0016)), the series has fewer than `min_slices` slices, its geometry is missing or
        inconsistent (Image Orientation / Position (Patient), Pixel Spacing, Rows, Columns),
        its slices are unevenly spaced or repeated, or a slice's pixel data cannot be decoded.
    """
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise ProductError(
                f"input {Path(path).name}: not a readable DICOM file ({exc})"
            ) from exc
        modality = str(header.get("Modality", "") or "").upper()
        if modality in modalities and str(header.get("SOPClassUID", "")) in sop_classes:
            series[str(header.get("SeriesInstanceUID", ""))].append((Path(path), header))
    if not series:
        wanted = "/".join(sorted(modalities))
        raise ProductError(
            f"the study holds no {wanted} image this product reads (Modality (0008,0060), "
            f"SOP Class UID (0008,0016))"
        )
    series_uid, members = max(series.items(), key=lambda item: len(item[1]))
    if len(members) < min_slices:
        raise ProductError(
            f"series {series_uid} has {len(members)} slices; this product needs at least "
            f"{min_slices}"
        )
    return _read_series(series_uid, members)


def _vector(header: Dataset, keyword: str, length: int, series_uid: str) -> np.ndarray:
    value = header.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.array([])
    if vector.shape != (length,) or not np.all(np.isfinite(vector)):
        raise ProductError(f"series {series_uid}: {keyword} missing or malformed")
    return vector


def _read_series(series_uid: str, members: list[tuple[Path, Dataset]]) -> Volume:
    first = members[0][1]
    orientation = _vector(first, "ImageOrientationPatient", 6, series_uid)
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise ProductError(f"series {series_uid}: ImageOrientationPatient is not orthonormal")
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    row_spacing, column_spacing = _vector(first, "PixelSpacing", 2, series_uid)
    if rows < 8 or columns < 8 or row_spacing <= 0 or column_spacing <= 0:
        raise ProductError(f"series {series_uid}: Rows, Columns or PixelSpacing unusable")
    for _path, header in members:
        same_plane = np.allclose(
            _vector(header, "ImageOrientationPatient", 6, series_uid), orientation, atol=1e-4
        )
        if not same_plane or (int(header.Rows), int(header.Columns)) != (rows, columns):
            raise ProductError(
                f"series {series_uid}: slices differ in ImageOrientationPatient, Rows or Columns"
            )
    positions = {
        id(header): _vector(header, "ImagePositionPatient", 3, series_uid)
        for _path, header in members
    }
    members.sort(key=lambda member: float(positions[id(member[1])] @ normal))
    ordered = np.stack([positions[id(header)] for _path, header in members])
    slice_step = _slice_step(ordered, normal, series_uid)

    values = np.empty((len(members), rows, columns), dtype=np.float32)
    headers: list[Dataset] = []
    for index, (path, _header) in enumerate(members):
        dataset = pydicom.dcmread(path)
        try:
            values[index] = apply_modality_lut(dataset.pixel_array, dataset)
        except Exception as exc:  # any decoder failure means the same thing to the hospital
            raise ProductError(
                f"instance {dataset.SOPInstanceUID}: pixel data cannot be decoded "
                f"({type(exc).__name__})"
            ) from exc
        del dataset.PixelData
        headers.append(dataset)
    return Volume(
        values=values,
        headers=headers,
        paths=[path for path, _header in members],
        modality=str(first.Modality).upper(),
        origin=ordered[0],
        slice_step=slice_step,
        row_step=column_direction * row_spacing,
        column_step=row_direction * column_spacing,
    )


def _slice_step(positions: np.ndarray, normal: np.ndarray, series_uid: str) -> np.ndarray:
    """The vector from one slice to the next, after checking that the slices are even."""
    if len(positions) == 1:
        raise ProductError(f"series {series_uid}: one slice is not a volume")
    distances = np.diff(positions @ normal)
    step = float(np.median(distances))
    if step <= 0 or np.any(distances <= 0):
        raise ProductError(
            f"series {series_uid}: two slices share one ImagePositionPatient (repeated slice?)"
        )
    if np.any(np.abs(distances - step) > _SPACING_TOLERANCE * step):
        raise ProductError(
            f"series {series_uid}: slices are unevenly spaced along their normal "
            f"(ImagePositionPatient steps {distances.min():.2f}–{distances.max():.2f} mm)"
        )
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def save_result(dataset: Dataset, output_dir: Path, name: str) -> ResultFile:
    """Write a result object as a DICOM Part 10 file in `output_dir`, ready to upload."""
    path = output_dir / name
    dataset.save_as(path, enforce_file_format=True)
    return ResultFile(path, name=name)


def write_key_image(
    volume: Volume,
    mask: np.ndarray,
    output_dir: Path,
    *,
    window: tuple[float, float] | None = None,
    name: str = "key-image.png",
) -> Path:
    """A PNG of the slice where `mask` covers the most voxels, with `mask` drawn over it.

    The key image stays in the product's output folder: the exchange accepts DICOM results and
    the JSON summary only, and the gateway renders its own key images from the SEG. `mask` is
    a (slices, rows, columns) label map; the middle slice is shown when it is empty.
    """
    from aifi.results.key_image import render_key_image  # matplotlib: only when drawing

    per_slice = mask.reshape(mask.shape[0], -1).astype(bool).sum(axis=1)
    index = int(np.argmax(per_slice)) if per_slice.any() else mask.shape[0] // 2
    return render_key_image(
        volume.slice_image(index),
        np.asarray(mask[index], dtype=np.uint8),
        output_dir / name,
        window=window,
        label=NOT_FOR_CLINICAL_USE,
    )


# -- masks ------------------------------------------------------------------------------------


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """`mask` with every region it encloses within a slice filled in.

    Slice by slice rather than in 3D, because a real skull or chest wall is only closed within
    each axial slice (the foramen magnum, the thoracic inlet), and because coarse slices can
    step over a thin wall that is closed in every slice.
    """
    filled = np.empty_like(mask, dtype=bool)
    for index in range(mask.shape[0]):
        filled[index] = ndimage.binary_fill_holes(mask[index])
    return filled


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-connected components of `mask` as a label array, and each label's voxel count.

    ``counts[0]`` is the background; ``counts[n]`` the size of component ``n``.
    """
    labels, _count = ndimage.label(mask)
    return labels, np.bincount(labels.ravel())


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of `mask` (empty when `mask` is)."""
    labels, counts = components(mask)
    if len(counts) < 2:
        return np.zeros(mask.shape, dtype=bool)
    return labels == int(np.argmax(counts[1:]) + 1)


def touches_border(labels: np.ndarray) -> set[int]:
    """Labels of the components that reach a face of the volume (cut off by the field of view)."""
    faces = [
        labels[0],
        labels[-1],
        labels[:, 0, :],
        labels[:, -1, :],
        labels[:, :, 0],
        labels[:, :, -1],
    ]
    return {int(v) for face in faces for v in np.unique(face) if v}
