"""The offline slice viewer: axial, coronal and sagittal slices of volumes, in HU, in JupyterLab.

:func:`slice_viewer` shows one or more volumes of the same shape (one row per volume: real /
sample / reconstruction), a slider per axis, a crosshair at the other planes' positions,
window/level presets and the physical aspect ratio. Pure ipywidgets + matplotlib (Agg): the figure
is rendered to PNG bytes held by an ``ipywidgets.Image``, so it works with no network at all.
:func:`render_slices` is the same drawing as a plain function, for tests.

Volumes are numpy ``(D, H, W)`` = ``(z, y, x)``; spacing in array order ``spacing_zyx_mm``. Volumes
arrive in the networks' range [-1, 1] (what ``ctgan.sample`` and the pyramid hold;
``intensity="hu"`` for volumes already in HU) and are shown in HU. The 3D views are in
:mod:`ctgan.volume_view`, the explore notebook's app in :mod:`ctgan.explorer`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctgan.intensity import network_to_hu

# Window presets, (width, level) in HU.
WINDOW_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"lung": (1500.0, -600.0), "mediastinum": (350.0, 50.0), "bone": (2000.0, 300.0)}
)
PLANES = ("axial", "coronal", "sagittal")
INTENSITIES = ("network", "hu")
CROSSHAIR_COLOR = "#ffb000"
# Rendered figure: width in inches (height follows the physical proportions) and dots per inch.
FIGURE_WIDTH_INCHES = 9.0
DPI = 80


# ---------------------------------------------------------------------------------------------
# Pure helpers: checks, windowing, slicing, aspect.


def check_spacing(spacing_zyx_mm: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing_zyx_mm)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(
            f"spacing_zyx_mm must be three positive numbers (z, y, x) in mm; got "
            f"{list(spacing_zyx_mm)}"
        )
    return values  # type: ignore[return-value]


def check_volume(name: str, volume: Any) -> np.ndarray:
    array = np.asarray(volume)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(
            f"volume {name!r} must be a (D, H, W) array; got shape {array.shape}; pass one volume "
            f"(index a batch (N, D, H, W) as volumes[0])"
        )
    return array


def _check_preset(preset: str) -> tuple[float, float]:
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(WINDOW_PRESETS)}; got {preset!r}")
    return WINDOW_PRESETS[preset]


def to_hu(volume: np.ndarray, intensity: str = "network") -> np.ndarray:
    """The volume in HU: network range [-1, 1] is converted, HU passes through (float32)."""
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}; got {intensity!r}")
    if intensity == "network":
        return network_to_hu(volume)
    return np.asarray(volume, dtype=np.float32)


def window_to_display(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Window/level: [level - width/2, level + width/2] HU -> [0, 1], clipped."""
    if not width > 0:
        raise ValueError(f"window width must be > 0 HU; got {width}")
    low = level - width / 2
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / width, 0.0, 1.0)


def plane_slices(volume: np.ndarray, indices_zyx: Sequence[int]) -> dict[str, np.ndarray]:
    """The axial (y, x), coronal (z, x) and sagittal (z, y) slices through ``indices_zyx``."""
    z, y, x = (int(i) for i in indices_zyx)
    for axis, index, size in zip("zyx", (z, y, x), volume.shape, strict=True):
        if not 0 <= index < size:
            raise ValueError(f"{axis} index must be in [0, {size - 1}]; got {index}")
    return {"axial": volume[z], "coronal": volume[:, y, :], "sagittal": volume[:, :, x]}


def plane_aspects(spacing_zyx_mm: Sequence[float]) -> dict[str, float]:
    """imshow ``aspect`` (row spacing / column spacing) of each plane, for physical proportions."""
    sz, sy, sx = check_spacing(spacing_zyx_mm)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}


def render_slices(
    volumes_hu: Mapping[str, np.ndarray],
    spacing_zyx_mm: Sequence[float],
    indices_zyx: Sequence[int],
    preset: str = "lung",
) -> Figure:
    """One row per volume, columns axial / coronal / sagittal, crosshair at ``indices_zyx``.

    Volumes are in HU and share one shape. Coronal and sagittal slices are drawn with z up.
    """
    if not volumes_hu:
        raise ValueError("volumes_hu is empty; pass at least one (D, H, W) volume by name")
    width, level = _check_preset(preset)
    sz, sy, sx = check_spacing(spacing_zyx_mm)
    aspects = plane_aspects(spacing_zyx_mm)
    shape = next(iter(volumes_hu.values())).shape
    depth_mm, height_mm, width_mm = shape[0] * sz, shape[1] * sy, shape[2] * sx
    # Column widths and row height in mm: axial is H x W, coronal D x W, sagittal D x H.
    column_mm = (width_mm, width_mm, height_mm)
    row_mm = max(height_mm, depth_mm)
    inches_per_mm = FIGURE_WIDTH_INCHES / sum(column_mm)
    figure = Figure(
        figsize=(FIGURE_WIDTH_INCHES, 0.4 + len(volumes_hu) * (row_mm * inches_per_mm + 0.3)),
        dpi=DPI,
        facecolor="black",
        layout="constrained",
    )
    grid = figure.add_gridspec(len(volumes_hu), 3, width_ratios=column_mm)
    z, y, x = (int(i) for i in indices_zyx)
    # (vertical line, horizontal line) of the crosshair in each plane's pixel coordinates.
    crosshair = {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}
    for row, (name, volume) in enumerate(volumes_hu.items()):
        volume = check_volume(name, volume)
        if volume.shape != shape:
            raise ValueError(
                f"all volumes must share one shape; {name!r} has {volume.shape}, the first has "
                f"{shape}; resample them first or view them separately"
            )
        slices = plane_slices(volume, indices_zyx)
        for column, plane in enumerate(PLANES):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(
                window_to_display(slices[plane], width, level),
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                aspect=aspects[plane],
                interpolation="nearest",
                origin="upper" if plane == "axial" else "lower",
            )
            vertical, horizontal = crosshair[plane]
            axes.axvline(vertical, color=CROSSHAIR_COLOR, linewidth=0.8, alpha=0.8)
            axes.axhline(horizontal, color=CROSSHAIR_COLOR, linewidth=0.8, alpha=0.8)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(plane, color="white", fontsize=10)
            if column == 0:
                axes.set_ylabel(name, color="white", fontsize=10)
    figure.suptitle(
        f"{preset} window W{width:g} / L{level:g} HU; z={z} y={y} x={x}", color="white", fontsize=9
    )
    return figure


def figure_to_png(figure: Figure) -> bytes:
    """PNG bytes of a figure, drawn with the Agg backend (no display, no pyplot state)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The slice viewer widget.


class SliceViewer(widgets.VBox):
    """A preset dropdown, one slider per axis and the rendered slices (an ``ipywidgets.Image``)."""

    def __init__(
        self,
        volumes: Mapping[str, np.ndarray],
        spacing_zyx_mm: Sequence[float],
        preset: str = "lung",
        intensity: str = "network",
        note: str = "",
    ) -> None:
        _check_preset(preset)
        self.preset = widgets.Dropdown(
            options=list(WINDOW_PRESETS), value=preset, description="window"
        )
        self.sliders = {
            axis: widgets.IntSlider(
                value=0, min=0, max=1, description=f"{plane} ({axis})", continuous_update=False
            )
            for axis, plane in zip("zyx", PLANES, strict=True)
        }
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.note = widgets.HTML(note)
        self.volumes_hu: dict[str, np.ndarray] = {}
        self._adjusting = False
        self.spacing_zyx_mm = check_spacing(spacing_zyx_mm)
        super().__init__(
            [
                self.note,
                widgets.HBox(
                    [self.preset, *self.sliders.values()], layout={"flex_flow": "row wrap"}
                ),
                self.image,
            ]
        )
        self.set_volumes(volumes, spacing_zyx_mm, intensity=intensity)
        self.preset.observe(self._on_change, names="value")
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")

    @property
    def indices_zyx(self) -> tuple[int, int, int]:
        return tuple(self.sliders[axis].value for axis in "zyx")  # type: ignore[return-value]

    def set_volumes(
        self,
        volumes: Mapping[str, np.ndarray],
        spacing_zyx_mm: Sequence[float] | None = None,
        intensity: str = "network",
    ) -> None:
        """Replace the rows; sliders keep their positions when the shape does not change."""
        if not volumes:
            raise ValueError("volumes is empty; pass at least one (D, H, W) volume by name")
        volumes_hu = {name: to_hu(check_volume(name, v), intensity) for name, v in volumes.items()}
        shapes = {name: v.shape for name, v in volumes_hu.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"all volumes must share one shape; got {shapes}; resample them first or view "
                f"them separately"
            )
        if spacing_zyx_mm is not None:
            self.spacing_zyx_mm = check_spacing(spacing_zyx_mm)
        shape = next(iter(shapes.values()))
        previous = next(iter(self.volumes_hu.values())).shape if self.volumes_hu else None
        self.volumes_hu = volumes_hu
        self._adjusting = True  # no rendering while the sliders follow the new shape
        try:
            for axis, size in zip("zyx", shape, strict=True):
                slider = self.sliders[axis]
                if previous is None or previous["zyx".index(axis)] != size:
                    slider.max = max(size - 1, 1)
                    slider.value = size // 2
                    slider.disabled = size == 1
        finally:
            self._adjusting = False
        self.render()

    def render(self) -> None:
        figure = render_slices(
            self.volumes_hu, self.spacing_zyx_mm, self.indices_zyx, self.preset.value
        )
        self.image.value = figure_to_png(figure)

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if not self._adjusting:
            self.render()


def slice_viewer(
    volumes: Mapping[str, np.ndarray] | np.ndarray,
    spacing_zyx_mm: Sequence[float],
    preset: str = "lung",
    intensity: str = "network",
    note: str = "",
) -> SliceViewer:
    """The offline slice viewer: ``volumes`` maps a row title to a (D, H, W) volume (one shape).

    ``intensity``: "network" for the networks' range [-1, 1] (samples, reconstructions, the
    pyramid), "hu" for volumes already in HU. A single array is shown as one row named "volume".
    """
    if isinstance(volumes, np.ndarray):
        volumes = {"volume": volumes}
    if not isinstance(volumes, Mapping):
        raise TypeError(
            f"volumes must be a dict of name -> (D, H, W) array or one array; got "
            f"{type(volumes).__name__}"
        )
    return SliceViewer(volumes, spacing_zyx_mm, preset=preset, intensity=intensity, note=note)
