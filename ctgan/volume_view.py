"""3D views of one volume in HU with its physical spacing: k3d (offline, no set-up) and itkwidgets.

- :func:`k3d_view`: volume rendering with k3d (an anywidget: its JavaScript ships inside the Python
  package, so it renders in JupyterLab 4 with no network and no set-up step). A CT transfer
  function in HU (:data:`CT_TRANSFER_FUNCTION`), the volume's physical extent from its spacing and
  origin, and a cut plane (axial / coronal / sagittal, at a position in mm) for slicing. Drag to
  rotate, scroll to zoom.
- :func:`itk_view`: itkwidgets 1.0 (volume rendering with its transfer-function editor, slicing,
  window/level). Its viewer is a web page; offline it needs the assets fetched at install time
  by ``scripts/fetch-viewer-assets`` (:mod:`ctgan.viewer_assets`). When they are absent it shows a
  message saying what to run instead of a blank cell.

Volumes are numpy ``(D, H, W)`` = ``(z, y, x)`` in the networks' range [-1, 1]
(``intensity="hu"`` for volumes already in HU); spacing in array order ``spacing_zyx_mm``, origin
in SimpleITK order ``origin_xyz_mm``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from ctgan import viewer_assets
from ctgan.slice_viewer import check_spacing, check_volume, to_hu

logger = logging.getLogger(__name__)

# HU mapped to colour and opacity: air and the lungs' inside clear, lung tissue faint, fat
# yellow, soft tissue red, bone white. (HU, opacity, (r, g, b)), HU increasing.
CT_TRANSFER_FUNCTION: tuple[tuple[float, float, tuple[float, float, float]], ...] = (
    (-1000.0, 0.0, (0.0, 0.0, 0.0)),
    (-900.0, 0.0, (0.3, 0.15, 0.1)),
    (-700.0, 0.04, (0.75, 0.45, 0.4)),
    (-400.0, 0.02, (0.8, 0.5, 0.45)),
    (-150.0, 0.05, (0.9, 0.75, 0.45)),
    (40.0, 0.15, (0.8, 0.25, 0.2)),
    (250.0, 0.6, (0.95, 0.85, 0.75)),
    (1000.0, 0.95, (1.0, 1.0, 1.0)),
)
HU_RANGE = (-1000.0, 1000.0)  # the training window: what the transfer function spans
CUT_PLANES = ("none", "axial", "coronal", "sagittal")
_CUT_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # index into (x, y, z)


def physical_bounds(
    shape_zyx: Sequence[int],
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float] | None = None,
) -> list[float]:
    """``[xmin, xmax, ymin, ymax, zmin, zmax]`` in mm of the voxels' extent: voxel centres at
    ``origin + index * spacing``, each voxel one spacing wide (the direction is not applied)."""
    sz, sy, sx = check_spacing(spacing_zyx_mm)
    origin = (0.0, 0.0, 0.0) if origin_xyz_mm is None else tuple(float(o) for o in origin_xyz_mm)
    if len(origin) != 3:
        raise ValueError(f"origin_xyz_mm must be three numbers (x, y, z); got {list(origin)}")
    bounds: list[float] = []
    for size, spacing, start in zip(shape_zyx[::-1], (sx, sy, sz), origin, strict=True):
        bounds += [start - spacing / 2, start + (int(size) - 0.5) * spacing]
    return bounds


def k3d_transfer_function() -> tuple[np.ndarray, np.ndarray]:
    """:data:`CT_TRANSFER_FUNCTION` as k3d wants it over :data:`HU_RANGE`: ``color_map`` rows
    (x, r, g, b) and ``opacity_function`` rows (x, opacity), x in [0, 1] (float32)."""
    low, high = HU_RANGE
    rows = [((hu - low) / (high - low), opacity, rgb) for hu, opacity, rgb in CT_TRANSFER_FUNCTION]
    color_map = np.array([(x, *rgb) for x, _, rgb in rows], dtype=np.float32)
    opacity = np.array([(x, a) for x, a, _ in rows], dtype=np.float32)
    return color_map, opacity


def k3d_available() -> bool:
    """Whether k3d is importable (checked, not imported)."""
    return importlib.util.find_spec("k3d") is not None


def cut_planes(plane: str, position_mm: float) -> list[list[float]]:
    """k3d ``clipping_planes`` that keep the half of the volume below ``position_mm`` along the
    plane's axis (axial: z, coronal: y, sagittal: x); none for ``"none"``."""
    if plane not in CUT_PLANES:
        raise ValueError(f"plane must be one of {', '.join(CUT_PLANES)}; got {plane!r}")
    if plane == "none":
        return []
    normal = [0.0, 0.0, 0.0]
    normal[_CUT_AXIS[plane]] = -1.0  # keeps a . p + d >= 0, i.e. p[axis] <= position
    return [[*normal, float(position_mm)]]


class K3dVolumeView(widgets.VBox):
    """A k3d plot of one volume in HU, a cut-plane dropdown and its position in mm."""

    def __init__(
        self,
        hu: np.ndarray,
        spacing_zyx_mm: Sequence[float],
        origin_xyz_mm: Sequence[float] | None = None,
        height: int = 480,
    ) -> None:
        import k3d

        self.bounds = physical_bounds(hu.shape, spacing_zyx_mm, origin_xyz_mm)
        color_map, opacity = k3d_transfer_function()
        self.plot = k3d.plot(
            height=height,
            background_color=0x000000,
            grid_visible=False,
            menu_visibility=False,
            camera_auto_fit=True,
            camera_fov=35.0,  # narrower than the default 60: the volume fills more of the view
            axes=["x (mm)", "y (mm)", "z (mm)"],
        )
        self.volume = k3d.volume(
            np.ascontiguousarray(hu, dtype=np.float32),
            color_map=color_map,
            opacity_function=opacity,
            color_range=list(HU_RANGE),
            bounds=self.bounds,
            samples=256,
            alpha_coef=30.0,
            name="volume (HU)",
        )
        self.plot += self.volume
        self.cut_plane = widgets.Dropdown(options=CUT_PLANES, value="none", description="cut")
        self.cut_mm = widgets.FloatSlider(description="at (mm)", continuous_update=False)
        self.cut_mm.disabled = True
        self.cut_plane.observe(self._on_plane, names="value")
        self.cut_mm.observe(self._on_position, names="value")
        note = widgets.HTML(
            "k3d volume rendering in HU (air clear, lung faint, fat yellow, soft tissue red, "
            "bone white) with the physical spacing: drag to rotate, scroll to zoom, right-drag "
            "to pan; <i>cut</i> slices it along a plane."
        )
        super().__init__([note, widgets.HBox([self.cut_plane, self.cut_mm]), self.plot])

    def _on_plane(self, change: dict[str, Any]) -> None:
        plane = change["new"]
        if plane == "none":
            self.cut_mm.disabled = True
            self.plot.clipping_planes = []
            return
        axis = _CUT_AXIS[plane]
        low, high = self.bounds[2 * axis], self.bounds[2 * axis + 1]
        # widen first, then narrow: ipywidgets refuses a min above the current max
        self.cut_mm.min, self.cut_mm.max = min(low, self.cut_mm.min), max(high, self.cut_mm.max)
        self.cut_mm.min, self.cut_mm.max = low, high
        self.cut_mm.step = (high - low) / 100
        self.cut_mm.disabled = False
        self.cut_mm.value = (low + high) / 2
        self.plot.clipping_planes = cut_planes(plane, self.cut_mm.value)

    def _on_position(self, change: dict[str, Any]) -> None:
        if self.cut_plane.value != "none":
            self.plot.clipping_planes = cut_planes(self.cut_plane.value, change["new"])


def _message(html: str) -> widgets.HTML:
    return widgets.HTML(
        f'<div style="border-left: 4px solid #c00; padding: 4px 8px">{html}</div>',
    )


def k3d_view(
    volume: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float] | None = None,
    intensity: str = "network",
    height: int = 480,
) -> widgets.Widget:
    """k3d 3D view of the volume in HU with its physical extent (offline, no set-up).

    Without k3d installed, a message saying how to install it.
    """
    hu = to_hu(check_volume("volume", volume), intensity)
    check_spacing(spacing_zyx_mm)
    if not k3d_available():
        logger.warning("k3d is not installed; no k3d 3D view")
        return _message(
            "<b>k3d is not installed</b>, so there is no k3d 3D view: run <code>make setup</code> "
            "(or <code>pip install 'k3d==3.2.0'</code>) and restart the kernel."
        )
    return K3dVolumeView(hu, spacing_zyx_mm, origin_xyz_mm, height=height)


# ---------------------------------------------------------------------------------------------
# itkwidgets.


def itkwidgets_available() -> bool:
    """Whether itkwidgets 1.0 and its JupyterLab extension are importable (checked, not imported:
    importing itkwidgets inside a kernel hooks into cell execution)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("itkwidgets", "imjoy_jupyterlab_extension", "itkwasm")
    )


def to_itk_image(
    volume: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
) -> Any:
    """An ``itkwasm.Image`` of a (D, H, W) volume: data stays (z, y, x), while spacing, origin and
    size are in ITK order (x, y, z); ``direction`` is 9 floats (row-major, as in meta.json)."""
    import itkwasm

    array = np.ascontiguousarray(check_volume("volume", volume), dtype=np.float32)
    sz, sy, sx = check_spacing(spacing_zyx_mm)
    origin = [0.0, 0.0, 0.0] if origin_xyz_mm is None else [float(o) for o in origin_xyz_mm]
    if len(origin) != 3:
        raise ValueError(f"origin_xyz_mm must be three numbers (x, y, z); got {origin}")
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if matrix.size != 9:
        raise ValueError(f"direction must be 9 numbers (a 3x3 matrix); got {matrix.size}")
    image_type = itkwasm.ImageType(
        dimension=3, componentType="float32", pixelType="Scalar", components=1
    )
    return itkwasm.Image(
        imageType=image_type,
        spacing=[sx, sy, sz],
        origin=origin,
        direction=matrix.reshape(3, 3),
        size=[array.shape[2], array.shape[1], array.shape[0]],
        data=array,
    )


def itk_view(
    volume: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    intensity: str = "network",
    assets_dir: str | None = None,
    ui_collapsed: bool = True,
) -> Any:
    """itkwidgets 3D view of the volume in HU with its spacing, its viewer served locally.

    ``ui_collapsed=False`` opens the viewer's panel (transfer-function editor, colour map,
    slicing planes) over the view; collapsed, the whole view is the rendering.

    The viewer's page and UI come from the assets that ``scripts/fetch-viewer-assets`` installed
    (:mod:`ctgan.viewer_assets`). When itkwidgets or those assets are missing, returns a message
    saying what to run (the k3d view and the slice viewer need neither).
    """
    hu = to_hu(check_volume("volume", volume), intensity)
    if not itkwidgets_available():
        logger.warning("itkwidgets is not installed; no itkwidgets 3D view")
        return _message(
            "<b>itkwidgets is not installed</b>, so there is no itkwidgets 3D view: run "
            "<code>make setup</code> and restart the kernel. The k3d view and the slice viewer "
            "work without it."
        )
    problems = viewer_assets.viewer_assets_problems(
        None if assets_dir is None else Path(assets_dir)
    )
    if problems:
        logger.warning("itkwidgets viewer assets: %s", "; ".join(problems))
        items = "".join(f"<li>{p}</li>" for p in problems)
        return _message(
            "<b>The itkwidgets viewer cannot load offline</b>: its web assets are not set up "
            f"here.<ul>{items}</ul>Run <code>scripts/fetch-viewer-assets</code> (part of "
            "<code>make setup</code>), restart JupyterLab and reload this page. The k3d view "
            "and the slice viewer need no set-up."
        )
    import itkwidgets.viewer

    itkwidgets.viewer.ITK_VIEWER_SRC = viewer_assets.VIEWER_SRC
    image = to_itk_image(hu, spacing_zyx_mm, origin_xyz_mm, direction)
    ui = {"uiMachineOptions": {"href": viewer_assets.UI_HREF, "export": "default"}}
    return itkwidgets.view(
        image=image,
        ui=ui,
        ui_collapsed=ui_collapsed,
        cmap="Grayscale",
        vmin=HU_RANGE[0],  # the training window: air clear and dark, bone opaque and bright
        vmax=HU_RANGE[1],
        bg_color=(0.0, 0.0, 0.0),
        units="mm",
    )
