"""Training the segmenter on crops, and its Dice on held-out crops.

Dice is undefined where the ground truth holds no voxel of a structure (a scan without nodule
annotations): ``dice_score`` then returns None and the metrics say why, instead of the 1.0 that
empty against empty would give.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctgan.config import SegmenterConfig
from ctgan.progress import progress_bar
from ctgan.segmenter import CHANNELS, Array, Segmenter, freeze
from ctgan.segmenter_data import ScanCrops, prepare_scans, sample_batch

logger = logging.getLogger(__name__)


def segmenter_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (per channel over the whole batch), averaged over the channels."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probabilities = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    overlap = (probabilities * targets).sum(dims)
    total = probabilities.sum(dims) + targets.sum(dims)
    dice = (2 * overlap + 1) / (total + 1)
    return bce + (1 - dice).mean()


def dice_score(prediction: Array, target: Array, threshold: float = 0.5) -> float | None:
    """Dice of two masks binarised at ``threshold``; None when ``target`` holds no voxel of the
    structure (there is nothing to find: empty against empty would claim a perfect 1.0, a false
    positive a 0.0 that says nothing about finding it)."""
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().float().cpu().numpy()
    if isinstance(target, torch.Tensor):
        target = target.detach().float().cpu().numpy()
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(
            f"dice_score: prediction and target must have the same shape; got {prediction.shape} "
            f"and {target.shape}"
        )
    predicted, truth = prediction >= threshold, target >= threshold
    if not truth.any():
        return None
    total = int(predicted.sum()) + int(truth.sum())
    return 2.0 * int((predicted & truth).sum()) / total


def undefined_dice_reason(name: str, where: str = "the validation crops") -> str:
    """Why the Dice of structure ``name`` (lungs | nodules) is undefined on ``where``."""
    singular = {"lungs": "lung", "nodules": "nodule"}[name]
    return (
        f"no {singular} voxel in {where} (the validation scans have no annotated "
        f"{singular}); Dice would compare empty with empty"
    )


def train_segmenter(
    volumes: Sequence[Array],
    lungs: Sequence[Array],
    nodules: Sequence[Array],
    val_volumes: Sequence[Array],
    val_lungs: Sequence[Array],
    val_nodules: Sequence[Array],
    cfg: SegmenterConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    zooms: Sequence[tuple[float, float, float]] = ((1.0, 1.0, 1.0),),
    anti_aliasing: bool = False,
    levels: int = 3,
    validation_crops: int = 32,
    progress: bool = True,
) -> tuple[Segmenter, list[dict[str, float]], dict[str, Any]]:
    """Train a :class:`Segmenter` on random crops; return it frozen, its history and metrics.

    volumes / lungs / nodules: (D, H, W) arrays per scan (volume in [-1, 1], masks in [0, 1]).
    zooms: (z, y, x) resampling factors; every scan is used at each of them (1.0 = as given,
    ``finest_pyramid_shape / scan_shape`` = the training resolution), low-passed before they
    shrink with ``anti_aliasing`` (the pyramid's rule, ``SegmenterData.anti_aliasing``). Crops follow the
    segmentation term's scheme, random extents and nodule-centred extents, resized to
    ``cfg.crop_size``, flipped and shifted in intensity. Loss BCE + soft Dice, Adam(cfg.lr) with
    cosine decay. Metrics: Dice (threshold 0.5, pooled over ``validation_crops`` seeded crops of
    the validation scans at every zoom) for lungs and nodules, crops seen, seconds.
    """
    crop_size = tuple(int(c) for c in cfg.crop_size)
    started = time.perf_counter()
    train_scans = prepare_scans("training", volumes, lungs, nodules, zooms, anti_aliasing)
    val_scans = prepare_scans(
        "validation", val_volumes, val_lungs, val_nodules, zooms, anti_aliasing
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Segmenter(1, len(CHANNELS), cfg.base_channels, levels)
    if any(c < low for c, low in zip(crop_size, model.minimum_size, strict=True)):
        raise ValueError(
            f"segmenter.crop_size {list(crop_size)} is smaller than the network's minimum "
            f"{list(model.minimum_size)} for {levels} levels; raise crop_size or lower levels"
        )
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.iterations)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    model.train()
    bar = progress_bar(range(cfg.iterations), "segmenter", disable=not progress, mininterval=2.0)
    for iteration in bar:
        inputs, targets = sample_batch(train_scans, cfg.batch_size, crop_size, rng, augment=True)
        logits = model(inputs.to(device))
        loss = segmenter_loss(logits, targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append({"iteration": iteration, "loss": float(loss.detach())})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    train_seconds = time.perf_counter() - started
    freeze(model)
    dice = _validation_dice(model, val_scans, crop_size, validation_crops, seed, device)
    undefined = {name: undefined_dice_reason(name) for name, v in dice.items() if v is None}
    metrics: dict[str, Any] = {
        "dice_lungs": dice["lungs"],
        "dice_nodules": dice["nodules"],
        **({"dice_undefined": undefined} if undefined else {}),
        "train_seconds": round(train_seconds, 1),
        "iterations": cfg.iterations,
        "train_crops": cfg.iterations * cfg.batch_size,
        "validation_crops": validation_crops,
        "train_scans": len(volumes),
        "validation_scans": len(val_volumes),
        "resolutions": len(zooms),
        **model.architecture,
    }
    logger.info(
        "segmenter: Dice lungs %s, nodules %s on %d validation crops (%.0f s)",
        _format_dice(dice["lungs"]),
        _format_dice(dice["nodules"]),
        validation_crops,
        train_seconds,
    )
    return model, history, metrics


@torch.no_grad()
def _validation_dice(
    model: Segmenter,
    scans: Sequence[ScanCrops],
    crop_size: tuple[int, int, int],
    crops: int,
    seed: int,
    device: str | torch.device,
) -> dict[str, float | None]:
    rng = np.random.default_rng(seed + 1_000_003)
    inputs, targets = sample_batch(scans, crops, crop_size, rng, augment=False)
    probabilities = torch.cat(
        [torch.sigmoid(model(chunk.to(device))).cpu() for chunk in inputs.split(4)]
    )
    return {name: dice_score(probabilities[:, c], targets[:, c]) for c, name in enumerate(CHANNELS)}


def _format_dice(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
