"""Paired masks: a lung mask and a nodule mask beside every generated volume, and how far to trust
them.

The masks come from the frozen in-pipeline segmenter (``models/segmenter/segmenter.pt``,
``ctgan.segmenter``), post-processed as its own whole-volume predictions are
(:func:`ctgan.segmenter.predict_volume`: windows of its training crop size covering half of the
training extent, averaged; lungs = :func:`ctgan.segmenter.largest_lung_components` of the lung
probability, the classical mask's two-largest-components rule; nodules = nodule probability
>= 0.5). A sample of another size (``scale``) gets windows over 0.5 / f of the volume, f its
largest size factor, i.e. half of the training extent along that axis (:func:`field_fraction_for`;
kept in [0.3, 1], the fractions ``predict_volume`` accepts: beyond a factor of 1.67 the windows
see more of the training extent than at the training size).
They are written as uint8 label maps (0 / 1) with the volume's exact geometry and its provenance
(``ctgan.export.export_label_map``, ``ctgan.provenance``).

Trust (:func:`lung_mask_dice`): the Dice of the segmenter's lung mask against the classical
threshold lung mask of the same volume, :func:`ctgan.preprocess.compute_lung_mask` (below -400 HU,
air connected to the in-plane border dropped, the two largest components, 1.5 mm closing, holes
filled per slice). That definition, not ``ctgan.anatomy.lung_mask``, because it is the lung the
segmenter learnt: filled lungs with their vessels and nodules inside (the official LUNA16 masks,
or this mask where a scan has none), while the anatomy's lungs leave out every voxel >= -400 HU.
Both empty counts as agreement (1.0); a lung found by only one of the two as 0.0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctgan.export import EXPORT_SUFFIXES, export_label_map, export_volume, model_geometry
from ctgan.intensity import network_to_hu
from ctgan.preprocess import compute_lung_mask
from ctgan.provenance import Provenance, model_provenance
from ctgan.segmenter import (
    GAN_CROP_FRACTION,
    RANDOM_CROP_FRACTIONS,
    Segmenter,
    largest_lung_components,
    load_segmenter,
    predict_volume,
    read_segmenter_file,
)
from ctgan.segmenter_train import dice_score

if TYPE_CHECKING:
    from ctgan.train import TrainedModel

log = logging.getLogger(__name__)

NODULE_PROBABILITY_THRESHOLD = 0.5
MASK_NAMES = ("lungs", "nodules")


def default_segmenter_path(model: TrainedModel) -> Path:
    """``models/segmenter/segmenter.pt`` beside the model: the seed folder is
    ``models/<model>-<setting>/seed<k>``, so two levels up, then ``segmenter/segmenter.pt``."""
    model_dir = Path(model.model_dir).resolve()
    return model_dir.parents[1] / "segmenter" / "segmenter.pt"


def load_mask_segmenter(path: str | Path, device: str = "cpu") -> Segmenter:
    """The frozen segmenter behind the paired masks, with ``crop_size`` (the crop size it was
    trained on, from its file) set on it; a clear error when its file is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"paired masks need the frozen segmenter's weights: expected the file {path}, but "
            f"there is none; run the segmenter stage (`dvc repro segmenter`) or give the file "
            f"(ctgan sample --segmenter PATH)"
        )
    segmenter = load_segmenter(path, device)
    crop_size = read_segmenter_file(path)["config"]["crop_size"]
    segmenter.crop_size = tuple(int(c) for c in crop_size)  # type: ignore[attr-defined]
    return segmenter


def field_fraction_for(scale: Sequence[float]) -> float:
    """predict_volume's ``field_fraction`` for a volume of size factor ``scale``: 0.5 / f of the
    volume, f the largest factor (half of the training extent along that axis), kept in [0.3, 1]."""
    largest = max(float(f) for f in scale)
    return min(1.0, max(RANDOM_CROP_FRACTIONS[0], GAN_CROP_FRACTION / largest))


def predict_masks(
    segmenter: Segmenter, volume: np.ndarray, scale: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(lungs, nodules)`` masks ``(D, H, W)`` of a volume in [-1, 1] of size factor
    ``scale`` (module docstring)."""
    crop_size = getattr(segmenter, "crop_size", None)
    if crop_size is None:
        raise ValueError(
            "the segmenter does not know the crop size it was trained on; load it with "
            "ctgan.masks.load_mask_segmenter from its file"
        )
    probabilities = predict_volume(
        segmenter, volume, crop_size, field_fraction=field_fraction_for(scale)
    )
    lungs = largest_lung_components(probabilities[0])
    nodules = probabilities[1] >= NODULE_PROBABILITY_THRESHOLD
    return lungs, nodules


def lung_mask_dice(
    segmenter_lungs: np.ndarray, volume: np.ndarray, spacing_zyx_mm: Sequence[float]
) -> float:
    """Dice of the segmenter's lung mask against the classical threshold lung mask of the same
    ``volume`` (in [-1, 1]; spacing for the closing radius). 1.0 when both are empty."""
    classical = compute_lung_mask(network_to_hu(volume), tuple(spacing_zyx_mm)[::-1])
    dice = dice_score(np.asarray(segmenter_lungs, dtype=np.float32), classical.astype(np.float32))
    if dice is None:  # no classical lung: agreement only when the segmenter finds none either
        return 0.0 if np.asarray(segmenter_lungs).any() else 1.0
    return dice


def mask_paths(path: str | Path) -> dict[str, Path]:
    """``{"lungs": <stem>_lungs<suffix>, "nodules": <stem>_nodules<suffix>}`` beside ``path``."""
    path = Path(path)
    suffix = next((s for s in EXPORT_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(
            f"cannot name masks beside {path.name}: the extension must be one of "
            f"{', '.join(EXPORT_SUFFIXES)}"
        )
    stem = path.name[: -len(suffix)]
    return {name: path.with_name(f"{stem}_{name}{suffix}") for name in MASK_NAMES}


def export_sample(
    model: TrainedModel,
    volume: np.ndarray,
    path: str | Path,
    provenance: Provenance,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Write a generated volume with its provenance and, given a ``segmenter``, its lung and nodule
    masks beside it (:func:`mask_paths`), all with the volume's geometry.

    Returns ``{"volume": path}`` plus, with masks, ``"lungs"``, ``"nodules"`` (paths) and
    ``"lung_dice"`` (:func:`lung_mask_dice`).
    """
    geometry = model_geometry(model, scale)
    written: dict[str, Any] = {
        "volume": export_volume(volume, path, *geometry, provenance=provenance)
    }
    if segmenter is None:
        return written
    lungs, nodules = predict_masks(segmenter, volume, scale)
    for name, mask in (("lungs", lungs), ("nodules", nodules)):
        written[name] = export_label_map(
            mask, mask_paths(path)[name], *geometry, provenance=provenance.with_content(name)
        )
    written["lung_dice"] = lung_mask_dice(lungs, volume, geometry[0])
    return written


def write_samples(
    model: TrainedModel,
    volumes: np.ndarray,
    paths: Sequence[str | Path],
    seed: int,
    *,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    inject_scale: int | None = None,
    start_scale: int | None = None,
    segmenter: Segmenter | None = None,
) -> list[dict[str, Any]]:
    """Write ``volumes`` ``(n, D, H, W)`` (drawn with ``seed``; volume i = sample i) to ``paths``
    with their provenance, and their paired masks when a ``segmenter`` is given
    (:func:`export_sample`); one result dict per volume. Random samples (no ``inject_scale``)
    started at ``start_scale`` (None: the model's own), as their provenance records."""
    if len(paths) != len(volumes):
        raise ValueError(
            f"write_samples needs one path per volume; got {len(paths)} paths for "
            f"{len(volumes)} volumes"
        )
    return [
        export_sample(
            model,
            volume,
            path,
            model_provenance(
                model,
                seed,
                index,
                inject_scale=inject_scale,
                scale=tuple(scale),
                start_scale=start_scale,
            ),
            scale,
            segmenter,
        )
        for index, (volume, path) in enumerate(zip(volumes, paths, strict=True))
    ]
