"""Interactive viewers for JupyterLab: an offline slice viewer and the itkwidgets 3D view.

Two viewers, and the explorer that the explore notebook shows:

- :func:`slice_viewer`: axial, coronal and sagittal slices of one or more volumes of the same shape
  (one row per volume: real / sample / reconstruction), a slider per axis, a crosshair at the other
  planes' positions, window/level presets, physical aspect ratio. Pure ipywidgets + matplotlib
  (Agg): the figure is rendered to PNG bytes held by an ``ipywidgets.Image``, so it works with no
  network at all. :func:`render_slices` is the same drawing as a plain function, for tests.
- :func:`itk_view`: itkwidgets 1.0 volume rendering with the physical spacing. Its viewer is
  loaded from the web when it is displayed, so it renders only where the browser is online;
  without itkwidgets it falls back to the slice viewer and says why. :func:`to_itk_image` builds
  the image it is given.
- :class:`Explorer`: a model dropdown, sampling with a seed, injection at a chosen scale and
  export to ``.nii.gz``, wired to ``ctgan.sample``; :func:`compare_settings` puts one sample of
  every trained setting side by side.

Volumes are numpy ``(D, H, W)`` = ``(z, y, x)``; spacing in array order ``spacing_zyx_mm``, origin
in SimpleITK order ``origin_xyz_mm``. Volumes arrive in the networks' range [-1, 1] (what
``ctgan.sample`` and the pyramid hold; ``intensity="hu"`` for volumes already in HU) and are shown
in HU.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctgan.intensity import network_to_hu

logger = logging.getLogger(__name__)

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


def _check_spacing(spacing_zyx_mm: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing_zyx_mm)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(
            f"spacing_zyx_mm must be three positive numbers (z, y, x) in mm; got "
            f"{list(spacing_zyx_mm)}"
        )
    return values  # type: ignore[return-value]


def _check_volume(name: str, volume: Any) -> np.ndarray:
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
    sz, sy, sx = _check_spacing(spacing_zyx_mm)
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
    sz, sy, sx = _check_spacing(spacing_zyx_mm)
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
        volume = _check_volume(name, volume)
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
        self.spacing_zyx_mm = _check_spacing(spacing_zyx_mm)
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
        volumes_hu = {name: to_hu(_check_volume(name, v), intensity) for name, v in volumes.items()}
        shapes = {name: v.shape for name, v in volumes_hu.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"all volumes must share one shape; got {shapes}; resample them first or view "
                f"them separately"
            )
        if spacing_zyx_mm is not None:
            self.spacing_zyx_mm = _check_spacing(spacing_zyx_mm)
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

    array = np.ascontiguousarray(_check_volume("volume", volume), dtype=np.float32)
    sz, sy, sx = _check_spacing(spacing_zyx_mm)
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
) -> Any:
    """itkwidgets 3D view of the volume in HU with its spacing (loads its viewer from the web).

    Without itkwidgets, returns the offline slice viewer with a note saying why. Put it in the
    last cell: offline, itkwidgets holds the cells run after it until its viewer has loaded.
    """
    hu = to_hu(_check_volume("volume", volume), intensity)
    if not itkwidgets_available():
        note = (
            "<b>itkwidgets is not installed</b> (the 3D view needs <code>pip install --pre "
            "'itkwidgets[lab]'</code> and a browser online); showing the offline slice viewer."
        )
        logger.warning("itkwidgets is not installed; falling back to the slice viewer")
        return slice_viewer({"volume": hu}, spacing_zyx_mm, intensity="hu", note=note)
    import itkwidgets
    from IPython.display import display

    image = to_itk_image(hu, spacing_zyx_mm, origin_xyz_mm, direction)
    display(
        widgets.HTML(
            "The itkwidgets viewer loads from the web: if no 3D view appears below, this "
            "browser is offline; the slice viewers above work without a connection."
        )
    )
    return itkwidgets.view(image=image, ui_collapsed=True, cmap="Grayscale")


# ---------------------------------------------------------------------------------------------
# The explorer: trained models, samples, injection, export.


def resolve_project_path(path: str | Path, start: str | Path | None = None) -> Path:
    """A relative ``path`` taken from the project root: the nearest folder at or above ``start``
    (default: the working directory) that holds params.yaml; ``start`` itself when none does.

    So "models" means the same folder whether the notebook runs from notebooks/ (JupyterLab) or
    from the repository root (papermill). Absolute paths pass through.
    """
    path = Path(path)
    if path.is_absolute():
        return path
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder / path
    return here / path


def find_models(models_dir: str | Path) -> list[str]:
    """Trained models under ``models_dir``: "<model>-<setting>/seed<k>" with a checkpoint.pt."""
    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"models folder {root} not found; run `dvc repro` (or the train stage) first, or "
            f"pass models_dir"
        )
    found = [
        f"{path.parent.parent.name}/{path.parent.name}"
        for path in root.glob("*/seed*/checkpoint.pt")
    ]
    return sorted(found)


def _pick_model(choices: list[str], model: str, models_dir: str | Path) -> str:
    if not choices:
        raise FileNotFoundError(
            f"no trained model (<model>-<setting>/seed<k>/checkpoint.pt) under {models_dir}; "
            f"run `dvc repro` first"
        )
    matching = [c for c in choices if c == model or c.split("/")[0] == model]
    return matching[0] if matching else choices[0]


def _real_volume(pyramid_dir: str | Path | None, shape: Sequence[int]) -> np.ndarray | None:
    """The finest scale of the training pyramid, or None when absent or of another shape."""
    if pyramid_dir is None or not Path(pyramid_dir).is_dir():
        return None
    from ctgan.preprocess import load_pyramid

    real = np.asarray(load_pyramid(pyramid_dir).volumes[-1])
    if tuple(real.shape) != tuple(shape):
        logger.warning("pyramid in %s has shape %s, the model %s", pyramid_dir, real.shape, shape)
        return None
    return real


class Explorer(widgets.VBox):
    """Pick a trained model, draw samples with a seed, inject at a scale, export to .nii.gz.

    Relative folders are taken from the project root (:func:`resolve_project_path`).
    """

    def __init__(
        self,
        models_dir: str | Path = "models",
        pyramid_dir: str | Path | None = "data/preprocessed",
        model: str = "3d-D",
        seed: int = 0,
        samples_dir: str | Path = "samples",
        device: str = "cpu",
    ) -> None:
        self.models_dir = resolve_project_path(models_dir)
        self.pyramid_dir = None if pyramid_dir is None else resolve_project_path(pyramid_dir)
        self.samples_dir = resolve_project_path(samples_dir)
        self.device = device
        choices = find_models(self.models_dir)
        self.model_choice = widgets.Dropdown(
            options=choices, value=_pick_model(choices, model, self.models_dir), description="model"
        )
        self.seed = widgets.IntText(value=int(seed), description="seed")
        self.sample_button = widgets.Button(description="New sample", icon="random")
        self.scale = widgets.Dropdown(options=[1], value=1, description="inject at")
        self.inject_button = widgets.Button(description="Inject real", icon="sign-in")
        self.export_choice = widgets.Dropdown(options=[], description="volume")
        self.export_button = widgets.Button(description="Export .nii.gz", icon="download")
        self.status = widgets.HTML()
        self.rows: dict[str, tuple[str, np.ndarray]] = {}  # slot -> (title, volume [-1, 1])
        self.viewer: SliceViewer | None = None
        super().__init__()
        self.load_model(self.model_choice.value)
        self.model_choice.observe(lambda change: self.load_model(change["new"]), names="value")
        self.sample_button.on_click(lambda _: self.draw_sample())
        self.inject_button.on_click(lambda _: self.inject_real())
        self.export_button.on_click(lambda _: self.export_current())

    def load_model(self, name: str) -> None:
        """Load ``<models_dir>/<name>``; rows: real (if the pyramid matches), reconstruction, sample."""
        from ctgan.sample import reconstruct
        from ctgan.train import load_trained

        self.name = name
        self.trained = load_trained(self.models_dir / name, device=self.device)
        self.spacing_zyx_mm = tuple(self.trained.scale_spacings_zyx_mm[-1])
        source = dict(self.trained.source or {})
        self.origin_xyz_mm = tuple(source.get("origin_xyz_mm") or (0.0, 0.0, 0.0))
        self.direction = tuple(source.get("direction") or np.eye(3).ravel())
        # Injection starts at level 1 .. num_scales - 1 (level 0 is pure noise).
        num_scales = len(self.trained.scale_shapes)
        self.scale.options = list(range(1, num_scales)) or [1]
        self.scale.value = self.scale.options[len(self.scale.options) // 2]
        self.inject_button.disabled = num_scales < 2
        self.rows = {}
        real = _real_volume(self.pyramid_dir, self.trained.scale_shapes[-1])
        if real is not None:
            self.rows["real"] = ("real", real)
        self.rows["reconstruction"] = ("reconstruction", np.asarray(reconstruct(self.trained)))
        self.draw_sample()

    def draw_sample(self) -> None:
        """A new random sample with the seed in the seed box."""
        from ctgan.sample import sample_volumes

        seed = int(self.seed.value)
        volume = np.asarray(sample_volumes(self.trained, 1, seed=seed, progress=False)[0])
        self._set_row("sample", f"sample seed {seed}", volume)

    def inject_real(self) -> None:
        """The real volume (the reconstruction when no pyramid matches) injected at the chosen scale."""
        from ctgan.sample import inject

        source = self.rows.get("real", self.rows["reconstruction"])[1]
        scale, seed = int(self.scale.value), int(self.seed.value)
        volume = np.asarray(inject(self.trained, source, scale, n=1, seed=seed, progress=False)[0])
        self._set_row("injected", f"injected at scale {scale} seed {seed}", volume)

    def current_volume(self) -> np.ndarray:
        """The volume picked in the export dropdown (network range)."""
        return self.rows[self.export_choice.value][1]

    def export_current(self) -> Path:
        """Write the picked volume to ``<samples_dir>/<model>-<seed folder>-<title>.nii.gz``."""
        from ctgan.sample import export_volume

        title = self.rows[self.export_choice.value][0]
        stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{self.name}-{title}").strip("-")
        path = self.samples_dir / f"{stem}.nii.gz"
        export_volume(
            self.current_volume(),
            path,
            spacing_zyx_mm=self.spacing_zyx_mm,
            origin_xyz_mm=self.origin_xyz_mm,
            direction=self.direction,
        )
        self.status.value = f"wrote <code>{path}</code>"
        logger.info("exported %s", path)
        return path

    def _set_row(self, slot: str, title: str, volume: np.ndarray) -> None:
        self.rows[slot] = (title, volume)
        volumes = {row_title: v for row_title, v in self.rows.values()}
        self.export_choice.options = [(row_title, key) for key, (row_title, _) in self.rows.items()]
        self.export_choice.value = slot
        if self.viewer is None:
            self.viewer = slice_viewer(volumes, self.spacing_zyx_mm)
        else:
            self.viewer.set_volumes(volumes, self.spacing_zyx_mm)
        self.status.value = f"{self.name}: {', '.join(volumes)}"
        self.children = [
            widgets.HBox([self.model_choice, self.seed, self.sample_button]),
            widgets.HBox([self.scale, self.inject_button]),
            widgets.HBox([self.export_choice, self.export_button]),
            self.status,
            self.viewer,
        ]


def explorer(
    models_dir: str | Path = "models",
    pyramid_dir: str | Path | None = "data/preprocessed",
    model: str = "3d-D",
    seed: int = 0,
    samples_dir: str | Path = "samples",
) -> Explorer:
    """The explore notebook's app (see :class:`Explorer`)."""
    return Explorer(models_dir, pyramid_dir, model=model, seed=seed, samples_dir=samples_dir)


def compare_settings(
    models_dir: str | Path = "models",
    names: Sequence[str] | None = None,
    seed: int = 0,
    pyramid_dir: str | Path | None = "data/preprocessed",
) -> SliceViewer:
    """One sample (same seed) of every trained model in ``names`` (default: all), beside the real.

    Models whose volumes have another shape than the first are left out, and the viewer says so.
    """
    from ctgan.sample import sample_volumes
    from ctgan.train import load_trained

    models_dir = resolve_project_path(models_dir)
    pyramid_dir = None if pyramid_dir is None else resolve_project_path(pyramid_dir)
    names = list(names) if names is not None else find_models(models_dir)
    if not names:
        raise FileNotFoundError(f"no trained model under {models_dir}; run `dvc repro` first")
    volumes: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    spacing: Sequence[float] | None = None
    for name in names:
        trained = load_trained(Path(models_dir) / name, device="cpu")
        volume = np.asarray(sample_volumes(trained, 1, seed=seed, progress=False)[0])
        if spacing is None:
            spacing = tuple(trained.scale_spacings_zyx_mm[-1])
            real = _real_volume(pyramid_dir, volume.shape)
            if real is not None:
                volumes["real"] = real
        elif volume.shape != next(iter(volumes.values())).shape:
            skipped.append(f"{name} {volume.shape}")
            continue
        volumes[f"{name} seed {seed}"] = volume
    note = f"left out (another shape): {', '.join(skipped)}" if skipped else ""
    assert spacing is not None
    return slice_viewer(volumes, spacing, note=note)
