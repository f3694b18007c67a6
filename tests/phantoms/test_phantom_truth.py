"""The truth agrees with the pixels written, measured from the files as a product would."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aifi.phantoms import PhantomStudy
from aifi.phantoms.head import HeadLabel


def intracranial_mask(hounsfield: np.ndarray) -> np.ndarray:
    """Per slice: everything that is not bone and cannot be reached from the image border
    without crossing bone (4-connected), i.e. what the skull encloses."""
    mask = np.zeros(hounsfield.shape, dtype=bool)
    for k, image in enumerate(hounsfield):
        regions, _ = ndimage.label(image < 300)
        border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
        mask[k] = (regions > 0) & ~np.isin(regions, border)
    return mask


def test_ct_head_volumetry_matches_the_pixels(small_studies, series_reader):
    written = small_studies["ct-head"]
    series = series_reader(written.folder)
    brain = written.truth.brain
    assert brain is not None
    inside = intracranial_mask(series.values)
    icv_ml = inside.sum() * series.voxel_volume_mm3 / 1000.0
    assert icv_ml == pytest.approx(brain.intracranial_volume_ml, rel=0.005)
    parenchyma = inside & (series.values > 16) & (series.values < 58)
    bpf = parenchyma.sum() / inside.sum()
    assert bpf == pytest.approx(brain.brain_parenchymal_fraction, abs=0.01)
    # A real adult range, so a volumetry product sees plausible numbers.
    assert 1100 < brain.intracranial_volume_ml < 1800
    assert 0.7 < brain.brain_parenchymal_fraction < 0.9


def test_haemorrhage_volume_and_centre_match_the_pixels(small_studies, series_reader):
    written = small_studies["ct-head"]
    series = series_reader(written.folder)
    bleed = written.truth.haemorrhage
    assert bleed is not None
    blood = intracranial_mask(series.values) & (series.values >= 58) & (series.values <= 100)
    assert blood.sum() == pytest.approx(bleed.voxel_count, rel=0.01)
    assert bleed.volume_ml == pytest.approx(blood.sum() * series.voxel_volume_mm3 / 1000, rel=0.01)
    centre = series.voxel_centres(blood).mean(axis=0)
    assert np.allclose(centre, bleed.centre_mm, atol=1.0)
    # Even on the coarse small grid the written volume is close to the one asked for.
    assert bleed.volume_ml == pytest.approx(bleed.requested_volume_ml, rel=0.15)


def test_haemorrhage_volume_converges_on_a_fine_grid():
    study = PhantomStudy("ct-head", seed=2, size="default", haemorrhage_ml=12.0)
    bleed = study.truth().haemorrhage
    assert bleed is not None
    assert bleed.volume_ml == pytest.approx(12.0, rel=0.02)
    assert np.allclose(bleed.centre_mm, bleed.planned_centre_mm, atol=0.5)


def lungs_hull(hounsfield: np.ndarray) -> np.ndarray:
    """Per slice, what aerated lung encloses: the holes in the lung mask."""
    lung = (hounsfield > -950) & (hounsfield < -600)
    return np.stack([ndimage.binary_fill_holes(image) for image in lung]) & ~lung


def test_nodules_match_the_pixels(small_studies, series_reader):
    written = small_studies["ct-chest"]
    series = series_reader(written.folder)
    nodules = written.truth.nodules
    assert [n.requested_diameter_mm for n in nodules] == [20.0, 24.0]
    assert nodules[1].planned_centre_mm == (-80.0, 0.0, 10.0)
    components, count = ndimage.label(lungs_hull(series.values) & (series.values > -400))
    assert count == len(nodules)
    found = [series.voxel_centres(components == n) for n in range(1, count + 1)]
    for nodule in nodules:
        voxels = min(found, key=lambda v: np.linalg.norm(v.mean(axis=0) - nodule.centre_mm))
        assert len(voxels) == nodule.voxel_count > 0
        assert np.allclose(voxels.mean(axis=0), nodule.centre_mm, atol=0.01)
        assert nodule.volume_mm3 == pytest.approx(len(voxels) * series.voxel_volume_mm3)
        equivalent = (6 * nodule.volume_mm3 / np.pi) ** (1 / 3)
        assert nodule.diameter_mm == pytest.approx(equivalent, abs=1e-3)
        assert np.linalg.norm(np.subtract(nodule.centre_mm, nodule.planned_centre_mm)) < 6.0


def test_lung_volume_matches_the_pixels(small_studies, series_reader):
    written = small_studies["ct-chest"]
    series = series_reader(written.folder)
    lungs = written.truth.lungs
    assert lungs is not None
    lung_ml = ((series.values > -950) & (series.values < -600)).sum() * series.voxel_volume_mm3
    assert lung_ml / 1000 == pytest.approx(lungs.right_ml + lungs.left_ml, rel=0.005)
    assert 1000 < lungs.right_ml < 4000 and 1000 < lungs.left_ml < 4000


def test_fracture_truth_marks_exactly_the_pixels_it_changed(tmp_path):
    broken = PhantomStudy("dx-hand", seed=4, size="small", fracture=True)
    intact = PhantomStudy("dx-hand", seed=4, size="small", fracture=False)
    difference = next(intact.datasets()).pixel_array.astype(int) - next(
        broken.datasets()
    ).pixel_array.astype(int)
    truth = broken.truth().fracture
    assert truth is not None and intact.truth().fracture is None
    rows, columns = np.nonzero(difference)
    assert (difference >= 0).all()  # a gap in bone only lowers attenuation
    assert len(rows) == truth.pixel_count
    assert truth.bounding_box_px == (rows.min(), columns.min(), rows.max(), columns.max())
    for row, column in (truth.line_start_px, truth.line_end_px):
        assert truth.bounding_box_px[0] - 2 <= row <= truth.bounding_box_px[2] + 2
        assert truth.bounding_box_px[1] - 2 <= column <= truth.bounding_box_px[3] + 2


def test_mr_t1_contrast_orders_white_over_grey_over_csf(small_studies, series_reader):
    written = small_studies["mr-brain"]
    series = series_reader(written.folder)
    study = PhantomStudy("mr-brain", seed=written.truth.seed, size="small")
    assert study.head is not None
    grid = study.grid
    labels = np.stack(
        [
            study.head.labels(grid.x_mm()[None, :], grid.y_mm()[:, None], grid.z_mm(k))
            for k in range(grid.size.slices)
        ]
    )

    def mean(label: HeadLabel) -> float:
        return float(series.values[labels == label].mean())

    assert mean(HeadLabel.WHITE_MATTER) > mean(HeadLabel.GREY_MATTER) > mean(HeadLabel.CSF)
    assert mean(HeadLabel.CSF) > mean(HeadLabel.AIR)


def test_ct_head_and_mr_brain_of_one_seed_share_the_anatomy(small_studies):
    mr = small_studies["mr-brain"].truth
    ct = PhantomStudy("ct-head", seed=mr.seed, size="small").truth()
    assert ct.brain == mr.brain
