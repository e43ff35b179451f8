"""The 3D views without a browser: physical extent, the CT transfer function, the cut plane, the
itk image, and the messages shown instead of a blank cell (rendering runs in the browser test)."""

from __future__ import annotations

import sys
import types

import ipywidgets as widgets
import numpy as np
import pytest

from ctgan import volume_view
from ctgan.slice_viewer import to_hu
from ctgan.volume_view import (
    CT_TRANSFER_FUNCTION,
    HU_RANGE,
    K3dVolumeView,
    cut_planes,
    itk_view,
    itkwidgets_available,
    k3d_transfer_function,
    k3d_view,
    physical_bounds,
    to_itk_image,
)

SPACING = (4.0, 1.5, 0.75)  # (z, y, x) mm, all different so that axis mix-ups show


def make_volume(shape: tuple[int, int, int] = (6, 10, 12), seed: int = 0) -> np.ndarray:
    """A (D, H, W) volume in [-1, 1] whose value encodes its position (z, y, x all differ)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    volume = -0.9 + 0.25 * z / shape[0] + 0.5 * y / shape[1] + 1.0 * x / shape[2]
    return np.clip(volume + rng.normal(0, 0.02, shape), -1, 1).astype(np.float32)


# --- k3d -----------------------------------------------------------------------------------------


def test_physical_bounds_follow_spacing_and_origin():
    # 10 slices of 31.5 mm, 63 x 63 pixels of 5 mm: a chest (315 mm cube), not a slab
    bounds = physical_bounds((10, 63, 63), (31.5, 5.0, 5.0))
    extents = [bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4]]
    assert extents == pytest.approx([315.0, 315.0, 315.0])
    shifted = physical_bounds((6, 10, 12), SPACING, origin_xyz_mm=(-10.0, 20.0, 30.0))
    assert shifted == pytest.approx([-10.375, -1.375, 19.25, 34.25, 28.0, 52.0])
    with pytest.raises(ValueError, match="origin_xyz_mm must be three numbers"):
        physical_bounds((6, 10, 12), SPACING, origin_xyz_mm=(0.0, 0.0))
    with pytest.raises(ValueError, match="spacing_zyx_mm must be three positive numbers"):
        physical_bounds((6, 10, 12), (1.0, -1.0, 1.0))


def test_transfer_function_spans_the_hu_window_and_hides_air():
    color_map, opacity = k3d_transfer_function()
    assert color_map.shape == (len(CT_TRANSFER_FUNCTION), 4)
    assert opacity.shape == (len(CT_TRANSFER_FUNCTION), 2)
    assert color_map.dtype == np.float32
    assert color_map[0, 0] == 0.0 and color_map[-1, 0] == 1.0
    assert np.all(np.diff(color_map[:, 0]) > 0)
    assert opacity[0, 1] == 0.0  # air clear
    hu = np.array([row[0] for row in CT_TRANSFER_FUNCTION])
    np.testing.assert_allclose(opacity[:, 0], (hu - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0]))
    bone, soft, lung = (np.interp(v, hu, opacity[:, 1]) for v in (700.0, 40.0, -800.0))
    assert bone > soft > lung > 0.0


def test_cut_planes_keep_the_half_below_the_position():
    assert cut_planes("none", 3.0) == []
    ((a, b, c, d),) = cut_planes("axial", 12.5)
    point_below, point_above = np.array([0, 0, 10.0]), np.array([0, 0, 15.0])
    assert np.dot([a, b, c], point_below) + d > 0 > np.dot([a, b, c], point_above) + d
    assert cut_planes("sagittal", 1.0) == [[-1.0, 0.0, 0.0, 1.0]]
    assert cut_planes("coronal", 2.0) == [[0.0, -1.0, 0.0, 2.0]]
    with pytest.raises(ValueError, match="plane must be one of none, axial, coronal, sagittal"):
        cut_planes("oblique", 0.0)


def test_k3d_view_renders_the_volume_in_hu_with_its_extent():
    view = k3d_view(make_volume(), SPACING, origin_xyz_mm=(1.0, 2.0, 3.0))
    assert isinstance(view, K3dVolumeView)
    np.testing.assert_allclose(view.volume.volume, to_hu(make_volume()))
    assert list(view.volume.color_range) == list(HU_RANGE)
    assert view.bounds == pytest.approx(physical_bounds((6, 10, 12), SPACING, (1.0, 2.0, 3.0)))
    # k3d holds the extent as a model matrix: scale = extent, translation = centre (mm)
    matrix = np.asarray(view.volume.model_matrix)
    np.testing.assert_allclose(np.diag(matrix)[:3], [9.0, 15.0, 24.0])  # 12*0.75, 10*1.5, 6*4
    np.testing.assert_allclose(matrix[:3, 3], [5.125, 8.75, 13.0])
    assert view.plot.clipping_planes == []
    view.cut_plane.value = "axial"
    assert (view.cut_mm.min, view.cut_mm.max) == pytest.approx((1.0, 25.0))
    assert view.plot.clipping_planes == [[0.0, 0.0, -1.0, pytest.approx(13.0)]]
    view.cut_mm.value = 5.0
    assert view.plot.clipping_planes[0][3] == pytest.approx(5.0)
    view.cut_plane.value = "none"
    assert view.plot.clipping_planes == [] and view.cut_mm.disabled


def test_k3d_view_says_how_to_install_k3d_when_it_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "k3d", None)
    monkeypatch.setattr(volume_view, "k3d_available", lambda: False)
    view = k3d_view(make_volume(), SPACING)
    assert isinstance(view, widgets.HTML)
    assert "k3d is not installed" in view.value and "make setup" in view.value


# --- itkwidgets ----------------------------------------------------------------------------------


def test_to_itk_image_keeps_spacing_origin_and_axis_order():
    volume = make_volume((6, 10, 12))
    direction = (1, 0, 0, 0, 0, 1, 0, -1, 0)
    image = to_itk_image(volume, SPACING, origin_xyz_mm=(-10.0, 20.0, 30.0), direction=direction)
    assert list(image.spacing) == [0.75, 1.5, 4.0]  # ITK order (x, y, z)
    assert list(image.size) == [12, 10, 6]
    assert list(image.origin) == [-10.0, 20.0, 30.0]
    np.testing.assert_array_equal(image.direction, np.reshape(direction, (3, 3)))
    np.testing.assert_array_equal(image.data, volume)  # data stays (z, y, x)
    assert image.imageType.dimension == 3
    # What itkwidgets does with it: the NGFF image it renders has the same physical axes.
    from ngff_zarr import itk_image_to_ngff_image

    ngff = itk_image_to_ngff_image(image)
    assert tuple(ngff.dims) == ("z", "y", "x")
    assert ngff.scale == {"z": 4.0, "y": 1.5, "x": 0.75}
    assert ngff.translation == {"z": 30.0, "y": 20.0, "x": -10.0}


def test_to_itk_image_rejects_bad_geometry():
    with pytest.raises(ValueError, match="origin_xyz_mm must be three numbers"):
        to_itk_image(make_volume(), SPACING, origin_xyz_mm=(0.0, 0.0))
    with pytest.raises(ValueError, match="direction must be 9 numbers"):
        to_itk_image(make_volume(), SPACING, direction=(1, 0, 0, 1))


def test_itkwidgets_is_installed_here():
    assert itkwidgets_available()


def test_itk_view_says_what_to_install_without_itkwidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "itkwidgets", None)  # import fails, find_spec gives None
    assert not itkwidgets_available()
    view = itk_view(make_volume(), SPACING)
    assert isinstance(view, widgets.HTML)
    assert "itkwidgets is not installed" in view.value and "make setup" in view.value


def test_itk_view_says_what_to_run_without_the_assets(tmp_path):
    view = itk_view(make_volume(), SPACING, assets_dir=str(tmp_path / "absent"))
    assert isinstance(view, widgets.HTML)
    assert "cannot load offline" in view.value
    assert "scripts/fetch-viewer-assets" in view.value
    assert "manifest.json not found" in view.value


def test_itk_view_points_itkwidgets_at_the_served_assets(monkeypatch):
    calls = {}
    fake = types.ModuleType("itkwidgets")
    fake_viewer = types.ModuleType("itkwidgets.viewer")
    fake_viewer.ITK_VIEWER_SRC = "https://ipfs.example/"
    fake.viewer = fake_viewer
    fake.view = lambda **kwargs: calls.update(kwargs) or "viewer"
    monkeypatch.setitem(sys.modules, "itkwidgets", fake)
    monkeypatch.setitem(sys.modules, "itkwidgets.viewer", fake_viewer)
    monkeypatch.setattr(volume_view, "itkwidgets_available", lambda: True)
    monkeypatch.setattr(volume_view.viewer_assets, "viewer_assets_problems", lambda d=None: [])
    assert itk_view(make_volume(), SPACING, origin_xyz_mm=(1.0, 2.0, 3.0)) == "viewer"
    assert fake_viewer.ITK_VIEWER_SRC == volume_view.viewer_assets.VIEWER_SRC
    assert calls["ui"]["uiMachineOptions"]["href"] == volume_view.viewer_assets.UI_HREF
    assert (calls["vmin"], calls["vmax"]) == HU_RANGE
    assert calls["ui_collapsed"] is True
    itk_view(make_volume(), SPACING, ui_collapsed=False)
    assert calls["ui_collapsed"] is False
    image = calls["image"]
    assert list(image.spacing) == [0.75, 1.5, 4.0]
    np.testing.assert_allclose(image.data, to_hu(make_volume()))
