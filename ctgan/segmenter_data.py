"""The segmenter's training data: scans split for validation, and the crops it learns from.

Crops follow the segmentation term's scheme (half of every axis), random extents and
nodule-centred extents, taken at every zoom, resized to ``crop_size``, flipped and shifted in
intensity (``sample_batch``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctgan.luna16 import Luna16Folder
from ctgan.preprocess import load_training_scan, resize_volume
from ctgan.segmenter import GAN_CROP_FRACTION, RANDOM_CROP_FRACTIONS, Array, as_float_array

logger = logging.getLogger(__name__)

SCHEME_PROBABILITIES = {"gan": 0.4, "random": 0.4, "nodule": 0.2}
INTENSITY_SHIFT = 0.05  # +-50 HU in the networks' range
INTENSITY_SCALE = 0.05
NOISE_STD_MAX = 0.02

Box = tuple[slice, slice, slice]


# ---------------------------------------------------------------------------------------------
# The scans it learns from, split for validation.


@dataclasses.dataclass
class SegmenterData:
    """Training and validation scans (full resolution) and the zooms that give the pipeline's.

    ``validation`` says how the split was made: ``"held-out scan"`` (the last scan of the
    folder is held out) or ``"held-out slab of the only scan"`` (a single scan: a middle
    slab of ``slab_fraction`` of its slices is held out, the slices above and below train).
    """

    train_volumes: list[np.ndarray]
    train_lungs: list[np.ndarray]
    train_nodules: list[np.ndarray]
    val_volumes: list[np.ndarray]
    val_lungs: list[np.ndarray]
    val_nodules: list[np.ndarray]
    zooms: list[tuple[float, float, float]]
    validation: str
    train_uids: list[str]
    val_uids: list[str]
    # the training zoom's crops low-passed first, as the pyramid was (``pyramid.anti_aliasing``)
    anti_aliasing: bool = False

    def summary(self) -> list[dict[str, Any]]:
        """One row per scan (or slab): role, uid, shape, lung and nodule fractions."""
        rows = []
        for role, uids, volumes, lungs, nodules in (
            ("train", self.train_uids, self.train_volumes, self.train_lungs, self.train_nodules),
            ("validation", self.val_uids, self.val_volumes, self.val_lungs, self.val_nodules),
        ):
            for uid, volume, lung, nodule in zip(uids, volumes, lungs, nodules, strict=True):
                rows.append(
                    {
                        "role": role,
                        "seriesuid": uid,
                        "shape (D, H, W)": tuple(volume.shape),
                        "lung fraction": round(float((lung >= 0.5).mean()), 4),
                        "nodule voxels": int((nodule >= 0.5).sum()),
                    }
                )
        return rows


def held_out_slab(depth: int, fraction: float) -> tuple[int, int]:
    """``(low, high)``: the middle slab of ``fraction`` of ``depth`` slices (at least one) that a
    single scan holds out for validation; ``low < 1`` leaves nothing to train on below it."""
    slab = max(1, round(depth * fraction))
    low = (depth - slab) // 2
    return low, low + slab


def load_segmenter_data(
    root: str | Path,
    training_shape: Sequence[int],
    source_shape: Sequence[int],
    *,
    max_scans: int = 4,
    slab_fraction: float = 0.25,
    anti_aliasing: bool = False,
) -> SegmenterData:
    """Read up to ``max_scans`` scans of a LUNA16-layout folder and split them for validation.

    Masks: the official lung mask when present, else the computed one; nodule spheres from
    ``annotations.csv`` (``ctgan.preprocess.load_training_scan``). ``training_shape`` (the finest
    pyramid shape) and ``source_shape`` (the full-resolution shape of the scan it was made from)
    give the zoom of the training resolution; every scan is used at zoom 1 and at that zoom
    (``anti_aliasing``: the pyramid's resize rule, its ``meta.json`` says which).
    """
    folder = Luna16Folder(root)
    uids = folder.seriesuids()[:max_scans]
    if not uids:
        raise ValueError(
            f"{root} holds no scan (expected subset*/<seriesuid>.mhd); write the phantom "
            f"(`ctgan phantom {root}`) or point data.luna16_dir at a LUNA16 download"
        )
    if not 0 < slab_fraction < 1:
        raise ValueError(f"slab_fraction must be in (0, 1); got {slab_fraction}")
    scans = []
    for uid in uids:
        volume, lungs, nodules, _spacing = load_training_scan(folder, uid)
        scans.append((volume, lungs.astype(np.float32), nodules.astype(np.float32)))
    zoom = tuple(float(t) / float(s) for t, s in zip(training_shape, source_shape, strict=True))
    if len(scans) > 1:
        train, val = scans[:-1], scans[-1:]
        validation, train_uids, val_uids = "held-out scan", uids[:-1], uids[-1:]
    else:
        depth = scans[0][0].shape[0]
        low, high = held_out_slab(depth, slab_fraction)
        if low < 1:
            raise ValueError(
                f"the only scan {uids[0]} has {depth} slices: too few to hold out a slab of "
                f"{slab_fraction:.0%} and train on the rest; add scans to {root}"
            )
        train = [tuple(a[:low] for a in scans[0]), tuple(a[high:] for a in scans[0])]
        val = [tuple(a[low:high] for a in scans[0])]
        validation = "held-out slab of the only scan"
        train_uids = [f"{uids[0]} z[0:{low}]", f"{uids[0]} z[{high}:{depth}]"]
        val_uids = [f"{uids[0]} z[{low}:{high}]"]
        logger.warning(
            "only one scan in %s: the segmenter trains on crops of slices outside %d-%d and "
            "validates on that held-out slab",
            root,
            low,
            high - 1,
        )
    return SegmenterData(
        train_volumes=[t[0] for t in train],
        train_lungs=[t[1] for t in train],
        train_nodules=[t[2] for t in train],
        val_volumes=[v[0] for v in val],
        val_lungs=[v[1] for v in val],
        val_nodules=[v[2] for v in val],
        zooms=[(1.0, 1.0, 1.0), zoom],  # type: ignore[list-item]
        validation=validation,
        train_uids=list(train_uids),
        val_uids=list(val_uids),
        anti_aliasing=anti_aliasing,
    )


# ---------------------------------------------------------------------------------------------
# Crops: the training and validation inputs.


@dataclasses.dataclass(frozen=True)
class ScanCrops:
    """One scan at one resolution: volume, lungs, nodules stacked, and its nodule voxels."""

    stacked: torch.Tensor  # (3, D, H, W): volume in [-1, 1], lungs and nodules in [0, 1]
    nodule_voxels: np.ndarray  # (K, 3) z, y, x of voxels with nodule >= 0.5


def prepare_scans(
    what: str,
    volumes: Sequence[Array],
    lungs: Sequence[Array],
    nodules: Sequence[Array],
    zooms: Sequence[tuple[float, float, float]],
    anti_aliasing: bool = False,
) -> list[ScanCrops]:
    """Every scan at every zoom, by the preprocess stage's resize rule
    (``ctgan.preprocess.resize_volume``: trilinear, ``align_corners=True``; with ``anti_aliasing``
    the volume, not its masks, is low-passed before it shrinks)."""
    if not (len(volumes) == len(lungs) == len(nodules)) or len(volumes) == 0:
        raise ValueError(
            f"{what}: volumes, lungs and nodules must be non-empty lists of the same length; "
            f"got {len(volumes)}, {len(lungs)}, {len(nodules)}"
        )
    scans = []
    for index, (volume, lung, nodule) in enumerate(zip(volumes, lungs, nodules, strict=True)):
        arrays = [
            as_float_array(f"{what} {name}[{index}]", value)
            for name, value in (("volumes", volume), ("lungs", lung), ("nodules", nodule))
        ]
        if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
            raise ValueError(
                f"{what} scan {index}: volume, lungs and nodules must have the same shape; got "
                f"{arrays[0].shape}, {arrays[1].shape}, {arrays[2].shape}"
            )
        for zoom in zooms:
            shape = tuple(max(1, round(s * z)) for s, z in zip(arrays[0].shape, zoom, strict=True))
            resized = torch.from_numpy(
                np.stack(
                    [
                        resize_volume(array, shape, anti_aliasing and channel == 0)
                        if shape != arrays[0].shape
                        else array
                        for channel, array in enumerate(arrays)
                    ]
                )
            )  # (3, D, H, W); only the volume is low-passed: masks are labels (ctgan.preprocess)
            nodule_voxels = np.argwhere(resized[2].numpy() >= 0.5)
            scans.append(ScanCrops(resized.contiguous(), nodule_voxels))
    return scans


def _extent(size: int, fraction: float) -> int:
    return min(size, max(1, int(size * fraction)))


def _crop_box(shape: Sequence[int], scheme: str, rng: np.random.Generator, scan: ScanCrops) -> Box:
    """A crop box of ``scheme`` (gan | random | nodule) inside a (D, H, W) volume."""
    depth, height, width = shape
    if scheme == "gan":
        depth_fraction = plane_fraction = GAN_CROP_FRACTION
    else:
        depth_fraction, plane_fraction = rng.uniform(*RANDOM_CROP_FRACTIONS, size=2)
    sizes = (
        _extent(depth, depth_fraction),
        _extent(height, plane_fraction),
        _extent(width, plane_fraction),
    )
    if scheme == "nodule" and len(scan.nodule_voxels):
        centre = scan.nodule_voxels[rng.integers(len(scan.nodule_voxels))]
        starts = [
            int(np.clip(c - rng.integers(0, s), 0, n - s))
            for c, s, n in zip(centre, sizes, shape, strict=True)
        ]
    else:
        starts = [int(rng.integers(0, n - s + 1)) for s, n in zip(sizes, shape, strict=True)]
    return tuple(slice(a, a + s) for a, s in zip(starts, sizes, strict=True))  # type: ignore[return-value]


def _crop(
    scan: ScanCrops, box: Box, crop_size: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, *crop_size) volume and (2, *crop_size) targets, resized trilinearly like the term."""
    stacked = scan.stacked[(slice(None), *box)]
    resized = F.interpolate(stacked[None], size=crop_size, mode="trilinear", align_corners=True)
    return resized[0, :1], resized[0, 1:]


def sample_batch(
    scans: Sequence[ScanCrops],
    batch_size: int,
    crop_size: tuple[int, int, int],
    rng: np.random.Generator,
    augment: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    schemes = list(SCHEME_PROBABILITIES)
    weights = np.array(list(SCHEME_PROBABILITIES.values()))
    inputs, targets = [], []
    for _ in range(batch_size):
        scan = scans[rng.integers(len(scans))]
        scheme = schemes[rng.choice(len(schemes), p=weights / weights.sum())]
        volume, target = _crop(
            scan, _crop_box(scan.stacked.shape[1:], scheme, rng, scan), crop_size
        )
        if augment:
            flips = [axis + 1 for axis in range(3) if rng.random() < 0.5]
            if flips:
                volume, target = volume.flip(flips), target.flip(flips)
            scale = 1 + rng.uniform(-INTENSITY_SCALE, INTENSITY_SCALE)
            shift = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT)
            noise_std = rng.uniform(0, NOISE_STD_MAX)
            noise = torch.from_numpy(rng.standard_normal(volume.shape).astype(np.float32))
            volume = (volume * scale + shift + noise_std * noise).clamp(-1, 1)
        inputs.append(volume)
        targets.append(target)
    return torch.stack(inputs), torch.stack(targets)  # (N, 1, *crop), (N, 2, *crop)
