"""Matplotlib figures. Each function returns a ``Figure`` and never saves or shows it itself.

QA figures of a volume come first (three planes, HU histogram, mask overlay); report figures follow.
Volumes are numpy ``(D, H, W)`` = ``(z, y, x)``; slices are drawn with the physical aspect ratio
given by ``spacing_zyx_mm``, patient's anterior up in axial views and superior up in the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure and its axes, outside pyplot's state: no global figure list to
    leak into, and a notebook shows a returned figure once (pyplot figures show twice)."""
    figure = Figure(figsize=kwargs.pop("figsize", None), layout="constrained")
    return figure, figure.subplots(nrows, ncols, **kwargs)


def _check_volume(name: str, volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{name} must be a 3D (z, y, x) array; got shape {volume.shape}")
    return volume


def _centre(volume: np.ndarray, centre_zyx: Sequence[int] | None) -> tuple[int, int, int]:
    if centre_zyx is None:
        return tuple(n // 2 for n in volume.shape)  # type: ignore[return-value]
    return tuple(int(np.clip(c, 0, n - 1)) for c, n in zip(centre_zyx, volume.shape, strict=True))  # type: ignore[return-value]


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    z, y, x = centre
    # axial (y, x); coronal (z, x) and sagittal (z, y) flipped so that superior is up.
    return [volume[z], volume[:, y, :][::-1], volume[:, :, x][::-1]]


def _aspects(spacing_zyx_mm: Sequence[float]) -> list[float]:
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    return [sy / sx, sz / sx, sz / sy]


def three_plane_figure(
    volume: np.ndarray,
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    centre_zyx: Sequence[int] | None = None,
    vmin: float = -1000.0,
    vmax: float = 600.0,
    title: str = "",
    unit: str = "HU",
) -> Figure:
    """Axial, coronal and sagittal slices through ``centre_zyx`` (default: the middle)."""
    volume = _check_volume("volume", volume)
    centre = _centre(volume, centre_zyx)
    figure, axes = _subplots(1, 3, figsize=(13, 4.6))
    names = (f"axial z={centre[0]}", f"coronal y={centre[1]}", f"sagittal x={centre[2]}")
    image = None
    for axis, plane, aspect, name in zip(
        axes, _planes(volume, centre), _aspects(spacing_zyx_mm), names, strict=True
    ):
        image = axis.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
        axis.set_title(name)
        axis.set_axis_off()
    figure.colorbar(image, ax=axes, shrink=0.8, label=unit)
    if title:
        figure.suptitle(title)
    return figure


def hu_histogram_figure(
    volume_hu: np.ndarray,
    masks: dict[str, np.ndarray] | None = None,
    *,
    hu_range: tuple[float, float] = (-1100.0, 1100.0),
    title: str = "HU histogram",
) -> Figure:
    """Histogram of HU values (log counts), overall and inside each named mask."""
    volume_hu = _check_volume("volume_hu", volume_hu)
    figure, axis = _subplots(figsize=(7, 4))
    bins = np.linspace(hu_range[0], hu_range[1], 221)
    axis.hist(volume_hu.ravel(), bins=bins, histtype="step", label="all voxels", color="black")
    for name, mask in (masks or {}).items():
        mask = np.asarray(mask) > 0.5
        if mask.shape != volume_hu.shape:
            raise ValueError(
                f"mask {name!r} has shape {mask.shape}; expected the volume's {volume_hu.shape}"
            )
        if mask.any():
            axis.hist(volume_hu[mask], bins=bins, histtype="step", label=name)
    axis.set_yscale("log")
    axis.set_xlabel("HU")
    axis.set_ylabel("voxels")
    axis.set_title(title)
    axis.legend()
    return figure


def mask_overlay_figure(
    volume: np.ndarray,
    masks: dict[str, np.ndarray],
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    centre_zyx: Sequence[int] | None = None,
    vmin: float = -1000.0,
    vmax: float = 600.0,
    title: str = "masks",
) -> Figure:
    """Three planes with each mask's outline drawn in its own colour (masks >= 0.5 are inside)."""
    volume = _check_volume("volume", volume)
    for name, mask in masks.items():
        if np.shape(mask) != volume.shape:
            raise ValueError(
                f"mask {name!r} has shape {np.shape(mask)}; expected the volume's {volume.shape}"
            )
    centre = _centre(volume, centre_zyx)
    figure, axes = _subplots(1, 3, figsize=(13, 4.6))
    colours = ("tab:orange", "tab:red", "tab:cyan", "tab:green")
    aspects = _aspects(spacing_zyx_mm)
    for column, (axis, plane) in enumerate(zip(axes, _planes(volume, centre), strict=True)):
        axis.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspects[column])
        for (name, mask), colour in zip(masks.items(), colours, strict=False):
            mask_plane = _planes(np.asarray(mask, dtype=np.float32), centre)[column]
            if mask_plane.max() >= 0.5 > mask_plane.min():
                axis.contour(mask_plane, levels=[0.5], colors=[colour], linewidths=1.0)
            axis.plot([], [], color=colour, label=name)
        axis.set_axis_off()
    axes[0].legend(loc="lower left", fontsize=8)
    figure.suptitle(title)
    return figure


def pyramid_figure(
    volumes: Sequence[np.ndarray],
    spacings_zyx_mm: Sequence[Sequence[float]],
    *,
    vmin: float = -1000.0,
    vmax: float = 600.0,
    title: str = "scale pyramid (middle axial and coronal slices)",
) -> Figure:
    """The middle axial (top row) and coronal (bottom row) slice of every scale, coarsest first."""
    if len(volumes) != len(spacings_zyx_mm) or not volumes:
        raise ValueError(
            f"need one spacing per volume; got {len(volumes)} volumes and "
            f"{len(spacings_zyx_mm)} spacings"
        )
    figure, axes = _subplots(2, len(volumes), figsize=(3 * len(volumes), 6), squeeze=False)
    for column, (volume, spacing) in enumerate(zip(volumes, spacings_zyx_mm, strict=True)):
        volume = _check_volume("volume", volume)
        planes = _planes(volume, _centre(volume, None))
        aspects = _aspects(spacing)
        for row, plane_index in enumerate((0, 1)):
            axis = axes[row, column]
            axis.imshow(
                planes[plane_index], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspects[plane_index]
            )
            axis.set_axis_off()
        axes[0, column].set_title(f"scale {column}: {tuple(volume.shape)}")
    figure.suptitle(title)
    return figure


# ---------------------------------------------------------------------------------------------
# Report figures (evaluation): the paper-style comparison grid, random samples, HU histograms of
# real vs samples, per-setting bars with error bars, training curves. Volumes here are in HU.


def comparison_grid_figure(
    real_hu: np.ndarray,
    reconstructions_hu: Mapping[str, np.ndarray],
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    heights: Sequence[float] = (0.25, 0.5, 0.75),
    vmin: float = -1000.0,
    vmax: float = 600.0,
    title: str = "",
) -> Figure:
    """The paper's figure: axial slices at three heights (columns) of the ground truth (first row)
    and of each named volume (one row each, e.g. each setting's reconstruction)."""
    real_hu = _check_volume("real_hu", real_hu)
    if not reconstructions_hu:
        raise ValueError("reconstructions_hu must name at least one volume, e.g. {'3d-D': rec}")
    rows = {"ground truth": real_hu}
    for name, volume in reconstructions_hu.items():
        volume = _check_volume(f"reconstructions_hu[{name!r}]", volume)
        if volume.shape != real_hu.shape:
            raise ValueError(
                f"reconstructions_hu[{name!r}] has shape {volume.shape}; expected the ground "
                f"truth's {real_hu.shape}"
            )
        rows[name] = volume
    if not heights or not all(0 <= h <= 1 for h in heights):
        raise ValueError(f"heights must be fractions of the depth in [0, 1]; got {list(heights)}")
    depth = real_hu.shape[0]
    slices = [int(round(h * (depth - 1))) for h in heights]
    aspect = _aspects(spacing_zyx_mm)[0]
    figure, axes = _subplots(
        len(rows),
        len(slices),
        figsize=(2.6 * len(slices), 2.6 * len(rows)),
        squeeze=False,
    )
    for row, (name, volume) in enumerate(rows.items()):
        for column, z in enumerate(slices):
            axis = axes[row, column]
            axis.imshow(volume[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"z = {z}")
        axes[row, 0].set_ylabel(name)
    if title:
        figure.suptitle(title)
    return figure


def _draw_plane_rows(
    axes: Any, volumes: Sequence[np.ndarray], aspects: Sequence[float], vmin: float, vmax: float
) -> None:
    """One row of ``axes`` per volume: its axial, coronal and sagittal planes through the centre
    (titled on the first row), grey in [vmin, vmax], with the physical aspect ratios."""
    for row, volume in enumerate(volumes):
        for column, plane in enumerate(_planes(volume, _centre(volume, None))):
            axis = axes[row, column]
            axis.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspects[column])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(("axial", "coronal", "sagittal")[column])


def samples_grid_figure(
    samples_hu: np.ndarray,
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    count: int = 4,
    vmin: float = -1000.0,
    vmax: float = 600.0,
    title: str = "random samples",
) -> Figure:
    """The first ``count`` samples (rows) in three planes through their middle (columns)."""
    samples_hu = np.asarray(samples_hu)
    if samples_hu.ndim != 4 or samples_hu.shape[0] < 1:
        raise ValueError(
            f"samples_hu must be (K, D, H, W) with K >= 1; got shape {samples_hu.shape}"
        )
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    shown = samples_hu[:count]
    aspects = _aspects(spacing_zyx_mm)
    figure, axes = _subplots(len(shown), 3, figsize=(9, 2.6 * len(shown)), squeeze=False)
    _draw_plane_rows(axes, list(shown), aspects, vmin, vmax)
    for row in range(len(shown)):
        axes[row, 0].set_ylabel(f"sample {row}")
    figure.suptitle(title)
    return figure


def hu_comparison_figure(
    real_hu: np.ndarray,
    samples_hu: np.ndarray,
    *,
    hu_range: tuple[float, float] = (-1000.0, 1000.0),
    title: str = "HU distribution: real vs samples",
) -> Figure:
    """Density histograms of HU: the real volume (black), every sample (thin), all samples pooled."""
    real_hu = _check_volume("real_hu", real_hu)
    samples_hu = np.asarray(samples_hu)
    if samples_hu.ndim != 4 or samples_hu.shape[1:] != real_hu.shape:
        raise ValueError(
            f"samples_hu must be (K, D, H, W) with (D, H, W) = {real_hu.shape}; got shape "
            f"{samples_hu.shape}"
        )
    bins = np.linspace(hu_range[0], hu_range[1], 101)
    figure, axis = _subplots(figsize=(7, 4))
    for index, sample in enumerate(samples_hu):
        axis.hist(
            sample.ravel(),
            bins=bins,
            density=True,
            histtype="step",
            color="tab:blue",
            alpha=0.25,
            linewidth=0.7,
            label="each sample" if index == 0 else None,
        )
    axis.hist(
        samples_hu.ravel(),
        bins=bins,
        density=True,
        histtype="step",
        color="tab:blue",
        linewidth=1.8,
        label=f"all {len(samples_hu)} samples",
    )
    axis.hist(
        real_hu.ravel(),
        bins=bins,
        density=True,
        histtype="step",
        color="black",
        linewidth=1.8,
        label="real",
    )
    axis.set_yscale("log")
    axis.set_xlabel("HU")
    axis.set_ylabel("density")
    axis.set_title(title)
    axis.legend()
    return figure


def metric_bars_figure(
    metrics_by_setting: Mapping[str, Mapping[str, Any]],
    family: str,
    metric: str,
    *,
    paper: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    """One bar per setting: mean ± sd over seeds of ``metrics[family][metric]`` (the metrics
    files' ``{"mean", "sd"}`` entries), with the paper's value as a marker where given."""
    if not metrics_by_setting:
        raise ValueError("metrics_by_setting must hold at least one setting's metrics")
    names, means, sds = [], [], []
    for name, values in metrics_by_setting.items():
        entry = values.get(family, {}).get(metric)
        if not isinstance(entry, Mapping) or "mean" not in entry:
            raise ValueError(
                f"{name} has no {family}.{metric} with a mean; pass the dicts of the metrics "
                f"files (metrics/<model>-<setting>.json)"
            )
        names.append(name)
        means.append(float(entry["mean"]))
        sds.append(float(entry.get("sd", 0.0)))
    positions = np.arange(len(names))
    figure, axis = _subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.8))
    axis.bar(positions, means, yerr=sds, capsize=4, color="tab:blue", label="ours (mean ± sd)")
    if paper:
        marked = [(i, paper[n]) for i, n in enumerate(names) if n in paper]
        if marked:
            axis.scatter(
                *zip(*marked, strict=True), marker="D", color="tab:red", zorder=3, label="paper"
            )
    axis.set_xticks(positions, names)
    axis.set_ylabel(f"{family}.{metric}")
    axis.set_title(title or metric)
    axis.legend()
    return figure


def training_curves_figure(
    histories: Mapping[str, Any],
    columns: Sequence[str] = ("d_loss", "g_adv", "reconstruction", "rec_psnr"),
    *,
    title: str = "training curves",
) -> Figure:
    """One panel per history column, one line per named run (a history.tsv path or DataFrame).

    The x axis counts logged rows across scales; dotted lines mark where a new scale starts.
    """
    import pandas as pd

    if not histories:
        raise ValueError(
            "histories must name at least one run, e.g. {'3d-D': 'models/3d-D/seed0/history.tsv'}"
        )
    frames = {}
    for name, history in histories.items():
        frame = history if isinstance(history, pd.DataFrame) else pd.read_csv(history, sep="\t")
        missing = [c for c in ("scale", *columns) if c not in frame.columns]
        if missing:
            raise ValueError(
                f"history {name!r} lacks column(s) {', '.join(missing)}; it has "
                f"{', '.join(map(str, frame.columns))}"
            )
        frames[name] = frame.reset_index(drop=True)
    figure, axes = _subplots(1, len(columns), figsize=(4 * len(columns), 3.4), squeeze=False)
    for axis, column in zip(axes[0], columns, strict=True):
        for name, frame in frames.items():
            axis.plot(frame.index, frame[column], label=name, linewidth=1.0)
        first = next(iter(frames.values()))
        for start in np.flatnonzero(np.diff(first["scale"].to_numpy())) + 1:
            axis.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(column)
        axis.set_xlabel("logged step")
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(title)
    return figure


# The lung window of the sample gallery: width 1500 HU, level -600 HU -> [-1350, 150] HU.
LUNG_WINDOW_WIDTH_HU = 1500.0
LUNG_WINDOW_LEVEL_HU = -600.0


def sample_gallery(
    real_hu: np.ndarray,
    samples_hu: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    title: str = "",
    *,
    chest_like: Sequence[bool] | None = None,
    count: int = 4,
) -> Figure:
    """The real volume (first row) and the first ``count`` samples (one row each) in three planes
    through their centre (axial, coronal, sagittal), in the lung window (W 1500 / L -600 HU), with
    the physical aspect ratio of ``spacing_zyx_mm``; each sample labelled chest-like or not.

    Volumes in HU (``ctgan.intensity.network_to_hu`` of the networks' [-1, 1] range): ``real_hu``
    (D, H, W), ``samples_hu`` (K, D, H, W). ``chest_like``: one flag per sample shown, e.g. the
    metrics file's ``per_sample.chest_like`` of the same samples; by default computed here with
    ``ctgan.anatomy.chest_like_flags`` against ``real_hu``.
    """
    real_hu = _check_volume("real_hu", real_hu)
    samples_hu = np.asarray(samples_hu)
    if samples_hu.ndim != 4 or samples_hu.shape[0] < 1 or samples_hu.shape[1:] != real_hu.shape:
        raise ValueError(
            f"samples_hu must be (K, D, H, W) with K >= 1 and (D, H, W) = {real_hu.shape}; got "
            f"shape {samples_hu.shape}"
        )
    if float(real_hu.max()) - float(real_hu.min()) <= 2.0:
        raise ValueError(
            f"real_hu spans [{real_hu.min():.3g}, {real_hu.max():.3g}]: that is the networks' "
            f"range, not HU; convert with ctgan.intensity.network_to_hu first"
        )
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    shown = samples_hu[:count]
    if chest_like is None:
        from ctgan.anatomy import chest_like_flags

        chest_like = list(chest_like_flags(real_hu, shown))
    if len(chest_like) != len(shown):
        raise ValueError(
            f"chest_like must hold one flag per sample shown ({len(shown)}); got {len(chest_like)}"
        )
    vmin = LUNG_WINDOW_LEVEL_HU - LUNG_WINDOW_WIDTH_HU / 2
    vmax = LUNG_WINDOW_LEVEL_HU + LUNG_WINDOW_WIDTH_HU / 2
    aspects = _aspects(spacing_zyx_mm)
    rows = [("real (training volume)", real_hu, "black")] + [
        (
            f"sample {i}: " + ("chest-like" if ok else "not chest-like"),
            volume,
            "tab:green" if ok else "tab:red",
        )
        for i, (volume, ok) in enumerate(zip(shown, chest_like, strict=True))
    ]
    figure, axes = _subplots(len(rows), 3, figsize=(10, 2.9 * len(rows)), squeeze=False)
    _draw_plane_rows(axes, [volume for _, volume, _ in rows], aspects, vmin, vmax)
    for row, (label, _, colour) in enumerate(rows):
        axes[row, 0].set_ylabel(label, color=colour, fontsize=10)
    chest_count = int(np.sum(np.asarray(chest_like, dtype=bool)))
    figure.suptitle(
        f"{title + ': ' if title else ''}{chest_count} of {len(shown)} samples shown chest-like "
        f"(lung window W {LUNG_WINDOW_WIDTH_HU:g} / L {LUNG_WINDOW_LEVEL_HU:g} HU)"
    )
    return figure
