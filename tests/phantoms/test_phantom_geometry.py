"""Cross-sectional phantoms have real, consistent geometry; sizes are parameters."""

from __future__ import annotations

import numpy as np
import pytest

from aifi.phantoms import SIZE_PRESETS, GridSize, PhantomKind, PhantomStudy


@pytest.mark.parametrize("kind", ["ct-head", "ct-chest", "mr-brain"])
def test_positions_step_by_slice_thickness_along_the_normal(kind, small_studies, series_reader):
    series = series_reader(small_studies[kind].folder)
    first = series.headers[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    thickness = float(first.SliceThickness)
    along = series.positions() @ normal
    assert np.allclose(np.diff(along), thickness)
    # Every slice shares the in-plane origin: the stack is not sheared.
    in_plane = series.positions() - np.outer(along, normal)
    assert np.allclose(in_plane, in_plane[0])
    for header, distance in zip(series.headers, along, strict=True):
        assert float(header.SliceLocation) == pytest.approx(distance)
        assert header.FrameOfReferenceUID == small_studies[kind].truth.frame_of_reference_uid
        assert [float(v) for v in header.ImageOrientationPatient] == list(orientation)
    assert [int(h.InstanceNumber) for h in series.headers] == list(
        range(1, len(series.headers) + 1)
    )


@pytest.mark.parametrize("kind", ["ct-head", "ct-chest", "mr-brain"])
def test_the_grid_is_centred_on_the_patient_origin(kind, small_studies, series_reader):
    series = series_reader(small_studies[kind].folder)
    grid = small_studies[kind].truth.grid
    centres = series.voxel_centres(np.ones(series.values.shape, dtype=bool))
    assert np.allclose(centres.mean(axis=0), 0.0, atol=1e-6)
    assert series.values.shape == (grid.slices, grid.rows, grid.columns)
    assert series.voxel_volume_mm3 == pytest.approx(grid.voxel_volume_mm3)


def test_an_explicit_grid_size_is_honoured(tmp_path, series_reader):
    size = GridSize(rows=40, columns=48, pixel_spacing_mm=5.0, slices=6, slice_thickness_mm=20.0)
    truth = PhantomStudy("ct-head", size=size).write(tmp_path)
    series = series_reader(tmp_path)
    assert series.values.shape == (6, 40, 48)
    assert [float(v) for v in series.headers[0].PixelSpacing] == [5.0, 5.0]
    assert float(series.headers[0].SliceThickness) == 20.0
    assert truth.grid.voxel_volume_mm3 == pytest.approx(500.0)


def test_presets_include_a_benchmark_ct_head_of_300_slices_512_square():
    bench = SIZE_PRESETS[PhantomKind.CT_HEAD]["bench"]
    assert (bench.rows, bench.columns, bench.slices) == (512, 512, 300)
    small = SIZE_PRESETS[PhantomKind.CT_HEAD]["small"]
    assert (small.rows, small.columns, small.slices) == (64, 64, 16)


def test_an_unknown_size_name_is_refused():
    with pytest.raises(ValueError, match="size must be one of"):
        PhantomStudy("ct-head", size="huge")
