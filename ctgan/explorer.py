"""The explore notebook's app: trained models, samples, injection at a scale, export, 3D view.

:class:`Explorer` holds a model dropdown, sampling with a seed, injection of the real volume at a
chosen scale and export to ``.nii.gz``, wired to ``ctgan.sample``; its rows are shown in the offline
slice viewer (:mod:`ctgan.slice_viewer`) and :meth:`Explorer.view_3d` renders the current volume in
3D (:mod:`ctgan.volume_view`). :func:`compare_settings` puts one sample of every trained setting
side by side. Relative folders are taken from the project root (:func:`resolve_project_path`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from ctgan.provenance import Provenance, model_provenance
from ctgan.slice_viewer import SliceViewer, slice_viewer

logger = logging.getLogger(__name__)


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
        self.provenances: dict[str, Provenance | None] = {}  # slot -> what made it (None: real)
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
        self.provenances = {}
        real = _real_volume(self.pyramid_dir, self.trained.scale_shapes[-1])
        if real is not None:
            self.rows["real"] = ("real", real)
        self.rows["reconstruction"] = ("reconstruction", np.asarray(reconstruct(self.trained)))
        self.provenances["reconstruction"] = model_provenance(
            self.trained, 0, 0, reconstruction=True
        )
        self.draw_sample()

    def draw_sample(self) -> None:
        """A new random sample with the seed in the seed box."""
        from ctgan.sample import sample_volumes

        seed = int(self.seed.value)
        volume = np.asarray(sample_volumes(self.trained, 1, seed=seed, progress=False)[0])
        self._set_row(
            "sample", f"sample seed {seed}", volume, model_provenance(self.trained, seed, 0)
        )

    def inject_real(self) -> None:
        """The real volume (the reconstruction when no pyramid matches) injected at the chosen scale."""
        from ctgan.sample import inject

        source = self.rows.get("real", self.rows["reconstruction"])[1]
        scale, seed = int(self.scale.value), int(self.seed.value)
        volume = np.asarray(inject(self.trained, source, scale, n=1, seed=seed, progress=False)[0])
        self._set_row(
            "injected",
            f"injected at scale {scale} seed {seed}",
            volume,
            model_provenance(self.trained, seed, 0, inject_scale=scale),
        )

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
            provenance=self.provenances.get(self.export_choice.value),  # synthetic rows say so
        )
        self.status.value = f"wrote <code>{path}</code>"
        logger.info("exported %s", path)
        return path

    def _set_row(
        self, slot: str, title: str, volume: np.ndarray, provenance: Provenance | None = None
    ) -> None:
        self.rows[slot] = (title, volume)
        self.provenances[slot] = provenance
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
