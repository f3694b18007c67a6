"""Reading a job's inputs into a volume: series choice, slice order, geometry, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from aifi.phantoms import write_study
from aifi.products.imaging import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, Volume, load_volume
from aifi.vendor import ProductError


def load_ct(paths: list[Path]) -> Volume:
    return load_volume(paths, modalities={"CT"}, sop_classes={CT_IMAGE_STORAGE}, min_slices=10)


@pytest.fixture
def head(tmp_path: Path) -> tuple[list[Path], object]:
    truth = write_study("ct-head", tmp_path / "head", seed=1, size="small")
    return sorted((tmp_path / "head").glob("*.dcm")), truth


def test_slices_are_sorted_along_the_normal_whatever_the_file_order(head):
    paths, truth = head
    shuffled = list(np.random.default_rng(0).permutation(paths))
    volume = load_ct(shuffled)
    z = [float(h.ImagePositionPatient[2]) for h in volume.headers]
    assert z == sorted(z) and len(z) == truth.grid.slices
    assert volume.spacing_mm == pytest.approx((10.0, 3.6, 3.6))
    assert volume.voxel_volume_mm3 == pytest.approx(truth.grid.voxel_volume_mm3)
    first = pydicom.dcmread(paths[0])
    expected = first.pixel_array.astype(np.float32) * float(first.RescaleSlope) + float(
        first.RescaleIntercept
    )
    k = [h.SOPInstanceUID for h in volume.headers].index(first.SOPInstanceUID)
    assert np.array_equal(volume.values[k], expected)  # Hounsfield units, not stored values
    assert "PixelData" not in volume.headers[k]


def test_voxel_indices_map_to_patient_coordinates(head):
    paths, _truth = head
    volume = load_ct(paths)
    last = volume.headers[-1]
    corner = volume.patient_points(np.array([[len(paths) - 1, 0, 0]]))[0]
    assert corner == pytest.approx([float(v) for v in last.ImagePositionPatient])
    step = volume.patient_points(np.array([[0, 1, 2]]))[0] - volume.origin
    row_mm, col_mm = (float(v) for v in last.PixelSpacing)
    assert step == pytest.approx([2 * col_mm, row_mm, 0.0])  # columns along x, rows along y


def test_the_largest_accepted_series_is_read(head, tmp_path):
    paths, truth = head
    localiser = pydicom.dcmread(paths[0])
    localiser.SeriesInstanceUID = generate_uid()
    localiser.SOPInstanceUID = localiser.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra = tmp_path / "localiser.dcm"
    localiser.save_as(extra, enforce_file_format=True)
    volume = load_ct([extra, *paths])
    assert {str(h.SeriesInstanceUID) for h in volume.headers} == {
        truth.series[0].series_instance_uid
    }


def test_no_accepted_image_is_refused(head):
    paths, _truth = head
    with pytest.raises(ProductError, match=r"no MR image .*Modality \(0008,0060\)"):
        load_volume(paths, modalities={"MR"}, sop_classes={MR_IMAGE_STORAGE}, min_slices=10)


def test_too_few_slices_are_refused(head):
    paths, _truth = head
    with pytest.raises(ProductError, match="has 5 slices; this product needs at least 10"):
        load_ct(paths[:5])


def test_a_repeated_slice_is_refused(head, tmp_path):
    paths, _truth = head
    copy = pydicom.dcmread(paths[3])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin = tmp_path / "twin.dcm"
    copy.save_as(twin, enforce_file_format=True)
    with pytest.raises(ProductError, match="share one ImagePositionPatient"):
        load_ct([*paths, twin])


def test_a_missing_slice_is_refused(head):
    paths, _truth = head
    with pytest.raises(ProductError, match="unevenly spaced"):
        load_ct(paths[:7] + paths[8:])


def test_corrupt_pixel_data_is_refused_naming_the_instance(head):
    paths, _truth = head
    broken = pydicom.dcmread(paths[2])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(paths[2], enforce_file_format=True)
    with pytest.raises(ProductError, match=f"instance {broken.SOPInstanceUID}: pixel data"):
        load_ct(paths)


def test_a_file_that_is_not_dicom_is_refused(head, tmp_path):
    paths, _truth = head
    junk = tmp_path / "notes.dcm"
    junk.write_text("not an image")
    with pytest.raises(ProductError, match="notes.dcm: not a readable DICOM file"):
        load_ct([junk, *paths])


def test_missing_geometry_is_refused(head):
    paths, _truth = head
    flat = pydicom.dcmread(paths[0])
    del flat.ImagePositionPatient
    flat.save_as(paths[0], enforce_file_format=True)
    with pytest.raises(ProductError, match="ImagePositionPatient missing"):
        load_ct(paths)
