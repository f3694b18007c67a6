"""The key image: the slice as the window shows it, the segmentation drawn where it lies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from pydicom import Dataset

from aifi.results.key_image import KEY_IMAGE_PIXELS, render_key_image

# The fixture's blob is centred on row 12, column 20 of a 32x32 slice; on a 512-pixel PNG each
# source pixel is 16 PNG pixels wide.
SCALE = KEY_IMAGE_PIXELS // 32
BLOB = (12 * SCALE + SCALE // 2, 20 * SCALE + SCALE // 2)
BACKGROUND = (4 * SCALE, 4 * SCALE)


def _is_grey(pixel: np.ndarray) -> bool:
    return bool(np.ptp(pixel[:3]) < 0.02)


@pytest.fixture
def slice_with_blob(ct_series: list[Dataset]) -> Dataset:
    return ct_series[1]


def test_key_image_overlays_the_segmentation(
    slice_with_blob: Dataset, blob_mask: np.ndarray, tmp_path: Path
):
    path = render_key_image(slice_with_blob, blob_mask[1].astype(np.uint8), tmp_path / "key.png")
    picture = imread(path)
    assert picture.shape[:2] == (KEY_IMAGE_PIXELS, KEY_IMAGE_PIXELS)
    assert not _is_grey(picture[BLOB]), "the segment is drawn in colour"
    assert _is_grey(picture[BACKGROUND]), "outside the segment the slice stays grey"


def test_key_image_without_a_mask_shows_the_windowed_slice(
    slice_with_blob: Dataset, tmp_path: Path
):
    picture = imread(render_key_image(slice_with_blob, None, tmp_path / "plain.png"))
    blob, background = picture[BLOB], picture[BACKGROUND]
    assert _is_grey(blob) and _is_grey(background)
    # Window 40/80: brain at 35 HU is mid-grey (0.44), the 60 HU blob brighter (0.75).
    assert blob[0] == pytest.approx(0.75, abs=0.02)
    assert background[0] == pytest.approx(0.44, abs=0.02)


def test_each_segment_gets_its_own_colour(
    slice_with_blob: Dataset, blob_mask: np.ndarray, tmp_path: Path
):
    labels = blob_mask[1].astype(np.uint8)
    labels[25:29, 3:8] = 2
    picture = imread(render_key_image(slice_with_blob, labels, tmp_path / "two.png"))
    second = picture[27 * SCALE + SCALE // 2, 5 * SCALE + SCALE // 2]
    assert not _is_grey(second)
    assert not np.allclose(second[:3], picture[BLOB][:3], atol=0.05)


def test_a_mask_of_another_shape_is_refused(slice_with_blob: Dataset, tmp_path: Path):
    with pytest.raises(ValueError, match="mask shape"):
        render_key_image(slice_with_blob, np.zeros((16, 16)), tmp_path / "bad.png")
