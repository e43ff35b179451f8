"""The training volume: HU window, lung and nodule masks, and the scale pyramid of one scan.

Steps (``preprocess_scan``): read the scan (``data.seriesuid``, or the first one sorted), set the
out-of-field value (-2048 and anything below -1500 HU) to air, window to [-1000, 1000] HU and map to
the networks' range [-1, 1] (``ctgan.intensity.hu_to_network``); take the official lung mask
(labels 3 and 4) or compute one (``compute_lung_mask``); draw the annotated nodules as spheres in
voxel space; then resize the volume and both masks to every scale shape of
``scale_shapes(pyramid)`` directly from the full-resolution arrays, trilinear with
``align_corners=True`` (the seed's rule, ctgan-facts §1). With ``pyramid.anti_aliasing`` (the
``cpu`` profile; the seed aliases, facts §14) the volume is low-passed first (``anti_alias``); the
masks are labels and keep the seed's rule, so that a nodule smaller than a voxel of the scale is
not averaged away. Masks stay float in [0, 1]. The physical spacing of scale s is the original
extent divided by its shape. ``meta.json`` records ``anti_aliasing``; whatever else resizes a scan
to a scale of the pyramid (the downstream test's held-out scans, the segmenter's crops at the
training zoom, injected volumes) follows it.

On disk (``save_pyramid`` / ``load_pyramid``): ``pyramid.npz`` with ``volume_s``, ``lungs_s``,
``nodules_s`` for every scale s (coarsest first) and ``meta.json`` (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from scipy import ndimage

from ctgan.config import PyramidConfig, scale_shapes
from ctgan.intensity import HU_MAX, HU_MIN, hu_to_network, network_to_hu
from ctgan.io import atomic_write, ensure_writable_dir, write_json
from ctgan.luna16 import LEFT_LUNG_LABEL, RIGHT_LUNG_LABEL, Luna16Folder, Scan, world_to_voxel

log = logging.getLogger(__name__)

PYRAMID_FILE = "pyramid.npz"
META_FILE = "meta.json"
OUT_OF_FIELD_THRESHOLD_HU = -1500.0  # below this a voxel is outside the scanner's field of view
LUNG_THRESHOLD_HU = -400.0
# What a scan must have to be a chest CT this pipeline can learn from (LUNA16 scans have 95-764
# slices over 200-420 mm; the phantom 126 slices over 315 x 341 x 341 mm).
MIN_SLICES = 16
MIN_FIELD_OF_VIEW_ZYX_MM = (100.0, 150.0, 150.0)
MAX_UPSAMPLING = 3.0  # finest scale voxels per scan voxel, along any axis


@dataclass
class TrainingPyramid:
    """Every scale of the training volume, coarsest first; float32 ``(D, H, W)`` arrays."""

    volumes: list[np.ndarray]  # network range [-1, 1]
    lungs: list[np.ndarray]  # [0, 1]
    nodules: list[np.ndarray]  # [0, 1]
    spacings_zyx_mm: list[tuple[float, float, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(int(n) for n in v.shape) for v in self.volumes]  # type: ignore[misc]

    @property
    def anti_aliasing(self) -> bool:
        """Whether the scan was low-passed before each downsampling (``pyramid.anti_aliasing``);
        a ``meta.json`` written before that key existed was resized by the seed's rule (False).
        Whatever resizes other scans to this pyramid's grid follows the same rule."""
        return bool(self.meta.get("anti_aliasing", False))


@dataclass
class PreparedScan:
    """One scan at full resolution, ready to resize: HU (out-of-field set to air) and masks."""

    scan: Scan
    hu: np.ndarray  # float32 (z, y, x)
    lungs: np.ndarray  # bool (z, y, x)
    nodules: np.ndarray  # bool (z, y, x)
    lung_mask_source: str  # official | computed
    nodule_rows: list[dict[str, float]]


def compute_lung_mask(hu_zyx: np.ndarray, spacing_xyz_mm: Any) -> np.ndarray:
    """A classical lung segmentation: bool ``(z, y, x)``.

    Threshold at -400 HU; drop the air connected to the in-plane border of any slice (outside the
    body, out-of-field voxels); keep the largest remaining component and the second largest when it
    is at least a tenth of the first (the two lungs, possibly joined through the airways); fill
    holes slice by slice (vessels, nodules) and close small gaps (1.5 mm).
    """
    hu_zyx = np.asarray(hu_zyx)
    if hu_zyx.ndim != 3:
        raise ValueError(f"hu_zyx must be a 3D (z, y, x) array; got shape {hu_zyx.shape}")
    spacing = np.asarray(spacing_xyz_mm, dtype=float).reshape(3)
    air = hu_zyx < LUNG_THRESHOLD_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(hu_zyx.shape, dtype=bool)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[border] = 0
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] == 0:
        return np.zeros(hu_zyx.shape, dtype=bool)
    keep = [order[0]]
    if count > 1 and sizes[order[1]] >= 0.1 * sizes[order[0]]:
        keep.append(order[1])
    mask = np.isin(labels, keep)
    radius_voxels = np.rint(1.5 / spacing[::-1]).astype(int)  # (z, y, x)
    if radius_voxels.max() > 0:
        grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius_voxels)]
        structure = (
            sum((g / max(r, 0.5)) ** 2 for g, r in zip(grids, radius_voxels, strict=True)) <= 1
        )
        mask = ndimage.binary_closing(mask, structure=structure)
    for z in range(mask.shape[0]):
        if mask[z].any():
            mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def lung_volume_litres(mask_zyx: np.ndarray, spacing_xyz_mm: Any) -> float:
    return float(np.count_nonzero(mask_zyx) * np.prod(np.asarray(spacing_xyz_mm, float)) / 1e6)


def nodule_mask(
    shape_zyx: tuple[int, int, int], nodule_rows: list[dict[str, float]], spacing_xyz_mm: Any
) -> np.ndarray:
    """Spheres at continuous voxel centres ``index_x/y/z`` with ``diameter_mm`` (physical radius)."""
    mask = np.zeros(shape_zyx, dtype=bool)
    spacing_zyx = np.asarray(spacing_xyz_mm, float)[::-1]
    for row in nodule_rows:
        centre = np.array([row["index_z"], row["index_y"], row["index_x"]])
        reach = row["diameter_mm"] / 2 / spacing_zyx
        low = np.clip(np.floor(centre - reach).astype(int), 0, shape_zyx)
        high = np.clip(np.ceil(centre + reach).astype(int) + 1, 0, shape_zyx)
        if np.any(high <= low):
            continue
        grids = np.ogrid[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
        distance_sq = sum(
            ((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx, strict=True)
        )
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        mask[box] |= distance_sq <= (row["diameter_mm"] / 2) ** 2
    return mask


def _choose_uid(folder: Luna16Folder, seriesuid: str | None) -> str:
    if seriesuid:
        folder.find_scan(seriesuid)
        return seriesuid
    uids = folder.seriesuids()
    if not uids:
        raise ValueError(
            f"{folder.root} holds no scan (expected subset*/<seriesuid>.mhd); put LUNA16 there "
            f"or point data.luna16_dir at your download, or set data.source: phantom (or write a "
            f"phantom with `ctgan phantom {folder.root}`)"
        )
    return uids[0]


def check_scan_geometry(scan: Scan) -> None:
    """Refuse what cannot be a chest CT for this pipeline: a 2D image, too few slices, a field of
    view smaller than a chest, with the numbers and the limits in the message."""
    shape = tuple(int(n) for n in np.shape(scan.array))
    if len(shape) != 3:
        size = " x ".join(str(n) for n in shape)
        raise ValueError(
            f"scan {scan.path} is a {len(shape)}D image ({size} pixels); expected a 3D chest CT "
            f"(a stack of slices): choose another data.seriesuid"
        )
    extent = np.array(shape) * np.array(scan.spacing_zyx_mm)
    problems = []
    if shape[0] < MIN_SLICES:
        problems.append(f"{shape[0]} slices (at least {MIN_SLICES})")
    if any(e < low for e, low in zip(extent, MIN_FIELD_OF_VIEW_ZYX_MM, strict=True)):
        fov = " x ".join(f"{e:.1f}" for e in extent)
        low = " x ".join(f"{v:g}" for v in MIN_FIELD_OF_VIEW_ZYX_MM)
        problems.append(f"field of view {fov} mm (z, y, x; at least {low})")
    if problems:
        raise ValueError(
            f"scan {scan.path} cannot be a chest CT for this pipeline: {'; '.join(problems)}; "
            f"choose another data.seriesuid or a complete scan"
        )


def check_upsampling(scan: Scan, finest_zyx: tuple[int, int, int]) -> None:
    """Refuse a scan the finest scale would upsample by more than ``MAX_UPSAMPLING`` (its detail
    would be invented by interpolation)."""
    factors = [f / n for f, n in zip(finest_zyx, scan.shape_zyx, strict=True)]
    if max(factors) <= MAX_UPSAMPLING:
        return
    _, height, width = scan.shape_zyx
    raise ValueError(
        f"the pyramid's finest scale {tuple(finest_zyx)} would upsample scan {scan.path} by "
        f"{factors[1]:.1f} x {factors[2]:.1f} in-plane ({height} x {width} voxels to "
        f"{finest_zyx[1]} x {finest_zyx[2]}) and {factors[0]:.1f} along z; at most "
        f"{MAX_UPSAMPLING:g}: choose a scan with finer voxels or lower pyramid.max_size"
    )


def check_scan_values(array: np.ndarray, path: Path) -> None:
    """Refuse a scan with NaN/inf voxels or a single value: nothing to learn from or window."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(
                f"scan {path} holds {bad} NaN or infinite voxels; expected finite HU values: "
                f"re-export the scan, or choose another data.seriesuid"
            )
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise ValueError(
            f"scan {path} is constant ({low:g} everywhere); expected a CT scan with air, tissue "
            f"and lungs: check the file (an empty export?) or choose another data.seriesuid"
        )


def prepare_scan(folder: Luna16Folder, seriesuid: str) -> PreparedScan:
    """Read one scan with its lung mask (official, else computed) and its nodule mask."""
    scan = folder.read_scan(seriesuid)
    check_scan_geometry(scan)
    check_scan_values(scan.array, scan.path)
    hu = scan.array.astype(np.float32)
    hu[hu < OUT_OF_FIELD_THRESHOLD_HU] = HU_MIN
    official = folder.lung_mask(seriesuid)
    if official is not None:
        lungs = np.isin(official.array, (LEFT_LUNG_LABEL, RIGHT_LUNG_LABEL))
        source = "official"
    else:
        lungs = compute_lung_mask(hu, scan.spacing_xyz_mm)
        source = "computed"
    table = folder.annotations(seriesuid)
    rows = []
    for record in table.to_dict("records"):
        world = [record["coordX"], record["coordY"], record["coordZ"]]
        index = world_to_voxel(world, scan.origin_xyz_mm, scan.spacing_xyz_mm, scan.direction)
        rows.append(
            {
                "coordX": float(record["coordX"]),
                "coordY": float(record["coordY"]),
                "coordZ": float(record["coordZ"]),
                "diameter_mm": float(record["diameter_mm"]),
                "index_x": float(index[0]),
                "index_y": float(index[1]),
                "index_z": float(index[2]),
            }
        )
    nodules = nodule_mask(scan.shape_zyx, rows, scan.spacing_xyz_mm)
    return PreparedScan(scan, hu, lungs, nodules, source, rows)


def load_training_scan(
    folder: Luna16Folder, seriesuid: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Full resolution: (volume in [-1, 1] float32 (z, y, x), lungs bool, nodules bool, spacing_xyz_mm)."""
    prepared = prepare_scan(folder, seriesuid)
    return (
        hu_to_network(prepared.hu),
        prepared.lungs,
        prepared.nodules,
        prepared.scan.spacing_xyz_mm,
    )


def anti_aliasing_sigma(
    source_shape: Sequence[int], target_shape: Sequence[int]
) -> tuple[float, ...]:
    """Per axis, the sd in source voxels of the Gaussian that band-limits a resize from
    ``source_shape`` to ``target_shape``: ``(d - 1) / 2`` for a downsampling factor
    ``d = source / target`` > 1 (scikit-image's ``resize(anti_aliasing=True)`` rule), 0 where the
    axis keeps or gains voxels."""
    if len(source_shape) != len(target_shape):
        raise ValueError(
            f"source and target shapes must have the same number of axes; got {tuple(source_shape)} "
            f"and {tuple(target_shape)}"
        )
    if min(target_shape) < 1:
        raise ValueError(f"target shape must be >= 1 voxel per axis; got {tuple(target_shape)}")
    return tuple(
        max(0.0, (float(n) / float(m) - 1.0) / 2.0)
        for n, m in zip(source_shape, target_shape, strict=True)
    )


def anti_alias(array: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """``array`` low-passed for a resize to ``shape_zyx`` (Gaussian of
    :func:`anti_aliasing_sigma`, edges extended), float32; a copy of it where no axis shrinks.

    Resized straight from a 512 x 512 scan to 63 x 63, a trilinear interpolation reads 2 voxels of
    every 8 per axis: the result is CT noise and aliased detail that no coarser scale predicts
    (ctgan-facts §14). Low-passed first, each voxel is about the average a detector of that voxel
    size would record."""
    array = np.asarray(array, dtype=np.float32)
    sigma = anti_aliasing_sigma(array.shape, shape_zyx)
    if not any(sigma):
        return array.copy()
    return ndimage.gaussian_filter(array, sigma, mode="nearest").astype(np.float32, copy=False)


def resize_volume(
    array: np.ndarray, shape_zyx: tuple[int, int, int], anti_aliasing: bool = False
) -> np.ndarray:
    """Trilinear resize with align_corners=True (the seed's rule), float32 ``(D, H, W)``;
    ``anti_aliasing``: low-passed first (:func:`anti_alias`, ``pyramid.anti_aliasing``)."""
    if anti_aliasing:
        array = anti_alias(array, shape_zyx)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    resized = functional.interpolate(
        tensor, size=tuple(shape_zyx), mode="trilinear", align_corners=True
    )
    return resized[0, 0].numpy()


def _portable_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (the pipeline runs at the
    repository root), so that the pyramid's bytes, and DVC's hash of them, do not depend on where
    the repository was cloned; absolute otherwise."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def preprocess_scan(
    folder: Luna16Folder,
    seriesuid: str | None,
    pyramid_cfg: PyramidConfig,
    *,
    source: str | None = None,
) -> TrainingPyramid:
    """Window, mask and resize one scan to every scale of ``pyramid_cfg`` (coarsest first)."""
    uid = _choose_uid(folder, seriesuid)
    prepared = prepare_scan(folder, uid)
    scan = prepared.scan
    network = hu_to_network(prepared.hu)
    extent_zyx = np.array(scan.shape_zyx) * np.array(scan.spacing_zyx_mm)
    shapes = scale_shapes(pyramid_cfg)
    check_upsampling(scan, shapes[-1])
    volumes, lungs, nodules, spacings = [], [], [], []
    for shape in shapes:
        volumes.append(np.clip(resize_volume(network, shape, pyramid_cfg.anti_aliasing), -1.0, 1.0))
        lungs.append(np.clip(resize_volume(prepared.lungs, shape), 0.0, 1.0))
        nodules.append(np.clip(resize_volume(prepared.nodules, shape), 0.0, 1.0))
        spacings.append(tuple(float(v) for v in extent_zyx / np.array(shape)))
    if source is None:
        source = "phantom" if (folder.root / "phantom.json").is_file() else "luna16"
    meta = {
        "seriesuid": uid,
        "source": source,
        "scan_path": _portable_path(scan.path),
        "origin_xyz_mm": list(scan.origin_xyz_mm),
        "direction": list(scan.direction),
        "spacing_xyz_mm": list(scan.spacing_xyz_mm),
        "shape_zyx": list(scan.shape_zyx),
        "scale_shapes": [list(s) for s in shapes],
        "anti_aliasing": bool(pyramid_cfg.anti_aliasing),
        "scale_spacings_zyx_mm": [list(s) for s in spacings],
        "hu_window": [HU_MIN, HU_MAX],
        "lung_mask_source": prepared.lung_mask_source,
        "lung_volume_l": lung_volume_litres(prepared.lungs, scan.spacing_xyz_mm),
        "nodules": prepared.nodule_rows,
    }
    log.info(
        "preprocessed %s (%s lung mask, %.2f l, %d nodules) to %s",
        uid,
        prepared.lung_mask_source,
        meta["lung_volume_l"],
        len(prepared.nodule_rows),
        shapes,
    )
    return TrainingPyramid(volumes, lungs, nodules, spacings, meta)


def save_pyramid(pyramid: TrainingPyramid, out_dir: str | Path) -> Path:
    """Write ``pyramid.npz`` and ``meta.json`` into ``out_dir`` (created if needed)."""
    out_dir = ensure_writable_dir(out_dir)
    arrays: dict[str, np.ndarray] = {}
    for s, (volume, lungs, nodules) in enumerate(
        zip(pyramid.volumes, pyramid.lungs, pyramid.nodules, strict=True)
    ):
        arrays[f"volume_{s}"] = volume.astype(np.float32)
        arrays[f"lungs_{s}"] = lungs.astype(np.float32)
        arrays[f"nodules_{s}"] = nodules.astype(np.float32)
    with atomic_write(out_dir / PYRAMID_FILE) as tmp:
        np.savez(tmp, **arrays)
    write_json(out_dir / META_FILE, pyramid.meta)
    return out_dir


def load_pyramid(out_dir: str | Path) -> TrainingPyramid:
    """Read what ``save_pyramid`` wrote; clear errors when files are missing or inconsistent."""
    out_dir = Path(out_dir)
    pyramid_path, meta_path = out_dir / PYRAMID_FILE, out_dir / META_FILE
    for path in (pyramid_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; run the preprocess stage (dvc repro preprocess) first"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(pyramid_path) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"{out_dir}: {PYRAMID_FILE} or {META_FILE} is corrupt ({err}); rerun the preprocess stage"
        ) from err
    shapes = meta.get("scale_shapes")
    spacings = meta.get("scale_spacings_zyx_mm")
    if (
        not isinstance(shapes, list)
        or not isinstance(spacings, list)
        or len(shapes) != len(spacings)
    ):
        raise ValueError(
            f"{meta_path} lacks scale_shapes / scale_spacings_zyx_mm of equal length; rerun the "
            f"preprocess stage"
        )
    volumes, lungs, nodules = [], [], []
    for s, shape in enumerate(shapes):
        for kind, bucket in (("volume", volumes), ("lungs", lungs), ("nodules", nodules)):
            name = f"{kind}_{s}"
            if name not in arrays:
                raise ValueError(f"{pyramid_path} lacks array {name}; rerun the preprocess stage")
            if list(arrays[name].shape) != list(shape):
                raise ValueError(
                    f"{pyramid_path}: {name} has shape {list(arrays[name].shape)}, meta.json says "
                    f"{list(shape)}; rerun the preprocess stage"
                )
            bucket.append(arrays[name].astype(np.float32))
    return TrainingPyramid(
        volumes, lungs, nodules, [tuple(float(v) for v in s) for s in spacings], meta
    )


def write_qa_figures(pyramid: TrainingPyramid, out_dir: str | Path) -> list[Path]:
    """qa_planes.png, qa_histogram.png, qa_masks.png, qa_pyramid.png of the finest scale."""

    from ctgan import figures

    out_dir = ensure_writable_dir(out_dir)
    hu = network_to_hu(pyramid.volumes[-1])
    spacing = pyramid.spacings_zyx_mm[-1]
    uid = pyramid.meta.get("seriesuid", "")
    built = {
        "qa_planes.png": figures.three_plane_figure(
            hu, spacing, title=f"finest scale {hu.shape}: {uid}"
        ),
        "qa_histogram.png": figures.hu_histogram_figure(
            hu, {"lungs": pyramid.lungs[-1], "nodules": pyramid.nodules[-1]}
        ),
        "qa_masks.png": figures.mask_overlay_figure(
            hu,
            {"lungs": pyramid.lungs[-1], "nodules": pyramid.nodules[-1]},
            spacing,
            centre_zyx=_nodule_centre(pyramid),
        ),
        "qa_pyramid.png": figures.pyramid_figure(
            [network_to_hu(v) for v in pyramid.volumes], pyramid.spacings_zyx_mm
        ),
    }
    paths = []
    for name, figure in built.items():
        path = out_dir / name
        with atomic_write(path) as tmp:
            figure.savefig(tmp, dpi=100)
        paths.append(path)
    return paths


def _nodule_centre(pyramid: TrainingPyramid) -> tuple[int, int, int] | None:
    """The finest scale's voxel of the strongest nodule value (None without nodules)."""
    nodules = pyramid.nodules[-1]
    if nodules.max() < 0.5:
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(nodules)), nodules.shape))  # type: ignore[return-value]
