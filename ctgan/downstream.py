"""Do generated volumes help a segmenter? The downstream test.

The same small lung and nodule segmenter (:class:`ctgan.segmenter.Segmenter`, trained by
:func:`ctgan.segmenter_train.train_segmenter` with the ``downstream`` sizes of params.yaml and the
in-pipeline segmenter's crop size) is trained three ways, at the GAN's training resolution (the
finest pyramid shape):

- ``real``: the one real training scan (the finest pyramid volume and its masks);
- ``real+synthetic``: that scan plus N generated volumes with their paired masks;
- ``synthetic``: the N generated volumes only.

Paired masks come from the frozen in-pipeline segmenter, post-processed as ``ctgan sample
--with-masks`` writes them (:func:`ctgan.masks.predict_masks`). Each generator of
``downstream.models`` (a 3D setting, or ``gpnn``) gets its own ``real+synthetic`` and
``synthetic`` runs; the ``real`` run is shared. Each seed s trains every arm with seed s and its
own N volumes: a GAN draws them fresh (sampling seed ``SAMPLING_SEED_OFFSET + s``, the evaluation
used 0); GPNN takes N of the K samples its stage wrote (``models/gpnn/samples.npz``), a subset
drawn with seed s, since one GPNN sample costs seconds.

Test: every scan of the data folder except the training scan (up to ``downstream.test_scans``),
never seen by any arm, resized whole to the training shape as preprocessing resizes the
training scan. Score: whole-volume Dice (probability >= 0.5, :func:`ctgan.segmenter.predict_volume`,
as ``metrics/segmenter.json``'s ``dice_*_whole_volume``), per test scan, and their mean per run.
The statistics and the verdict are :mod:`ctgan.downstream_stats`.

Speed: ``downstream.precision`` runs each segmenter's training and test under bf16 autocast
(``auto``: where the device computes bf16 natively, :func:`ctgan.layers.auto_precision`), and
``downstream.workers`` > 1 runs the runs in that many processes, the torch threads split between
them. Both change the numbers as rounding does, no more: on the phantom every run's Dice stayed
within 0.008 of float32's on 2 threads, and every verdict the same (``docs/performance.md``).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctgan.config import SegmenterConfig
from ctgan.layers import bf16_autocast
from ctgan.luna16 import Luna16Folder
from ctgan.masks import lung_mask_dice, predict_masks
from ctgan.preprocess import load_training_scan, resize_volume
from ctgan.sample import resolve_precision
from ctgan.segmenter import Segmenter, predict_volume
from ctgan.segmenter_train import dice_score, train_segmenter

log = logging.getLogger(__name__)

ARMS = ("real", "real+synthetic", "synthetic")
ARM_LABELS = {
    "real": "(a) the real scan",
    "real+synthetic": "(b) real + N generated",
    "synthetic": "(c) N generated only",
}
GPNN = "gpnn"
SAMPLING_SEED_OFFSET = 1000
STRUCTURES = ("lungs", "nodules")


@dataclass
class LabelledSet:
    """Volumes (``(D, H, W)`` in [-1, 1]) with lung and nodule masks ([0, 1]), one name each."""

    names: list[str]
    volumes: list[np.ndarray]
    lungs: list[np.ndarray]
    nodules: list[np.ndarray]

    def __add__(self, other: LabelledSet) -> LabelledSet:
        return LabelledSet(
            self.names + other.names,
            self.volumes + other.volumes,
            self.lungs + other.lungs,
            self.nodules + other.nodules,
        )

    def __len__(self) -> int:
        return len(self.volumes)


def training_scan(pyramid: Any) -> LabelledSet:
    """The real scan the GANs learnt from, at the finest scale, with its masks."""
    uid = str(pyramid.meta.get("seriesuid", "training scan"))
    return LabelledSet(
        [uid],
        [np.asarray(pyramid.volumes[-1], dtype=np.float32)],
        [np.asarray(pyramid.lungs[-1], dtype=np.float32)],
        [np.asarray(pyramid.nodules[-1], dtype=np.float32)],
    )


def held_out_scans(
    root: str | Path,
    training_uid: str,
    shape: Sequence[int],
    limit: int,
    anti_aliasing: bool = False,
) -> LabelledSet:
    """Up to ``limit`` scans of the LUNA16-layout folder ``root`` other than ``training_uid``,
    each resized whole to ``shape`` (volume and masks, the preprocess stage's resize rule; the
    volume low-passed first with ``anti_aliasing``, as the training pyramid's)."""
    folder = Luna16Folder(root)
    uids = [uid for uid in folder.seriesuids() if uid != training_uid][:limit]
    if not uids:
        raise ValueError(
            f"the downstream test needs scans it never trains on, but {root} holds no scan other "
            f"than the training scan {training_uid}; write more phantom scans "
            f"(data.phantom_scans >= 2) or add LUNA16 scans to {root}"
        )
    target = tuple(int(n) for n in shape)
    volumes, lungs, nodules = [], [], []
    for uid in uids:
        volume, lung, nodule, _spacing = load_training_scan(folder, uid)
        volumes.append(np.clip(resize_volume(volume, target, anti_aliasing), -1.0, 1.0))
        lungs.append(np.clip(resize_volume(lung, target), 0.0, 1.0))
        nodules.append(np.clip(resize_volume(nodule, target), 0.0, 1.0))
        log.info("held-out scan %s resized to %s", uid, target)
    return LabelledSet(uids, volumes, lungs, nodules)


def generated_volumes(
    generator: str,
    models_dir: str | Path,
    count: int,
    seeds: Sequence[int],
    device: str = "cpu",
) -> dict[int, np.ndarray]:
    """``{seed: volumes (count, D, H, W)}`` of ``generator`` for every seed of ``seeds`` (module
    docstring): a GAN's fresh samples from its first seed's model, or subsets of GPNN's; the
    model (or GPNN's samples) is read once for all seeds."""
    models_dir = Path(models_dir)
    if generator == GPNN:
        path = models_dir / GPNN / "samples.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"GPNN's samples are expected in {path}, but there is no such file; run the gpnn "
                f"stage (`dvc repro gpnn`)"
            )
        with np.load(path) as data:
            samples = np.asarray(data["samples"], dtype=np.float32)
        if count > len(samples):
            raise ValueError(
                f"downstream.num_volumes is {count}, but the gpnn stage wrote {len(samples)} "
                f"samples ({path}); lower downstream.num_volumes or raise evaluate.num_samples"
            )
        return {
            seed: samples[np.sort(np.random.default_rng(seed).choice(len(samples), count, False))]
            for seed in seeds
        }
    from ctgan.evaluate import seed_folders
    from ctgan.sample import sample_volumes
    from ctgan.train import load_trained

    model = load_trained(seed_folders(models_dir / generator)[0][1], device=device)
    return {
        seed: sample_volumes(
            model,
            count,
            seed=SAMPLING_SEED_OFFSET + seed,
            batch_size=1,
            progress=False,
            precision="float32",
        )
        for seed in seeds
    }


def with_paired_masks(
    names: Sequence[str], volumes: np.ndarray, frozen: Segmenter, spacing_zyx_mm: Sequence[float]
) -> tuple[LabelledSet, list[float]]:
    """The generated ``volumes`` with the frozen segmenter's paired masks, and for each the Dice
    of its lung mask against the classical threshold mask (how far to trust the labels)."""
    lungs, nodules, trust = [], [], []
    for volume in volumes:
        lung, nodule = predict_masks(frozen, volume)
        lungs.append(lung.astype(np.float32))
        nodules.append(nodule.astype(np.float32))
        trust.append(lung_mask_dice(lung, volume, spacing_zyx_mm))
    return LabelledSet(list(names), list(volumes), lungs, nodules), trust


def test_dice(
    model: Segmenter, crop_size: Sequence[int], test: LabelledSet
) -> dict[str, list[float | None]]:
    """Whole-volume Dice per test scan, per structure (None where a scan has no such voxel)."""
    scores: dict[str, list[float | None]] = {name: [] for name in STRUCTURES}
    for volume, lungs, nodules in zip(test.volumes, test.lungs, test.nodules, strict=True):
        probabilities = predict_volume(model, volume, crop_size)
        scores["lungs"].append(dice_score(probabilities[0], lungs))
        scores["nodules"].append(dice_score(probabilities[1], nodules))
    return scores


def train_and_test(
    train: LabelledSet,
    test: LabelledSet,
    segmenter_cfg: SegmenterConfig,
    seed: int,
    device: str = "cpu",
    precision: str = "float32",
) -> dict[str, Any]:
    """Train one segmenter on ``train`` with ``seed`` and score it on ``test``: one run's row.
    ``precision`` ``bf16`` trains and tests under bf16 autocast (the weights stay float32)."""
    started = time.perf_counter()
    with bf16_autocast(torch.device(device), precision == "bf16"):
        model, _history, metrics = train_segmenter(
            train.volumes,
            train.lungs,
            train.nodules,
            test.volumes,
            test.lungs,
            test.nodules,
            segmenter_cfg,
            seed=seed,
            device=device,
            progress=False,
        )
        scores = test_dice(model, segmenter_cfg.crop_size, test)
    row: dict[str, Any] = {
        "train_volumes": len(train),
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": metrics["train_seconds"],
    }
    for name in STRUCTURES:
        defined = [s for s in scores[name] if s is not None]
        row[f"dice_{name}_per_scan"] = scores[name]
        row[f"dice_{name}"] = float(np.mean(defined)) if defined else None
    return row


@dataclass
class Run:
    """One run of the test: ``generator`` (``-`` for the real arm), ``arm``, ``seed`` and the
    set it trains on."""

    generator: str
    arm: str
    seed: int
    train: LabelledSet


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_all(
    runs: Sequence[Run],
    test: LabelledSet,
    segmenter_cfg: SegmenterConfig,
    device: str = "cpu",
    precision: str = "float32",
    workers: int = 1,
    done: Callable[[Run, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`train_and_test` for every run, in order. ``workers`` > 1: in that many spawned
    processes, each with ``torch.get_num_threads() // workers`` threads (at least 1); a script
    that calls this (or :func:`run_downstream`) with more than one worker needs an
    ``if __name__ == "__main__":`` guard, as any spawned process pool (a notebook does not).
    ``done`` is called in this process as each run finishes (in the order they finish)."""
    rows: list[dict[str, Any] | None] = [None] * len(runs)

    def finished(index: int, row: dict[str, Any]) -> None:
        rows[index] = row
        if done is not None:
            done(runs[index], row)

    if workers <= 1 or len(runs) <= 1:
        for index, run in enumerate(runs):
            finished(
                index, train_and_test(run.train, test, segmenter_cfg, run.seed, device, precision)
            )
    else:
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(
            max_workers=min(workers, len(runs)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_set_threads,
            initargs=(threads,),
        ) as pool:
            futures = {
                pool.submit(
                    train_and_test, run.train, test, segmenter_cfg, run.seed, device, precision
                ): index
                for index, run in enumerate(runs)
            }
            try:
                for future in as_completed(futures):
                    finished(futures[future], future.result())
            except BaseException:  # a failed or interrupted run: do not start the others
                for future in futures:
                    future.cancel()
                raise
    return [row for row in rows if row is not None]


def run_downstream(
    cfg: Any,
    pyramid: Any,
    frozen: Segmenter,
    data_root: str | Path,
    models_dir: str | Path,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every run of the downstream test (module docstring) for ``cfg.downstream``; returns the
    runs, the held-out scans and the paired masks' trust (no statistics: ``downstream_stats``)."""
    down = cfg.downstream
    segmenter_cfg = SegmenterConfig(
        crop_size=tuple(cfg.segmenter.crop_size),
        base_channels=down.base_channels,
        iterations=down.iterations,
        batch_size=down.batch_size,
        lr=down.lr,
    )
    real = training_scan(pyramid)
    shape = pyramid.volumes[-1].shape
    spacing = pyramid.spacings_zyx_mm[-1]
    test = held_out_scans(data_root, real.names[0], shape, down.test_scans, pyramid.anti_aliasing)
    trust: dict[str, list[float]] = {name: [] for name in down.models}
    examples: dict[str, dict[str, np.ndarray]] = {}
    started = time.perf_counter()
    seeds = range(down.seeds)
    drawn = {
        generator: generated_volumes(generator, models_dir, down.num_volumes, seeds, device)
        for generator in down.models
    }
    planned: list[Run] = []
    for seed in seeds:
        planned.append(Run("-", "real", seed, real))
        for generator in down.models:
            volumes = drawn[generator][seed]
            names = [f"{generator} seed {seed} volume {i}" for i in range(len(volumes))]
            synthetic, agreement = with_paired_masks(names, volumes, frozen, spacing)
            trust[generator] += agreement
            if generator not in examples:
                examples[generator] = {"volume": volumes[0], "lungs": synthetic.lungs[0]}
            planned.append(Run(generator, "real+synthetic", seed, real + synthetic))
            planned.append(Run(generator, "synthetic", seed, synthetic))
    precision = resolve_precision(down.precision, device)
    log.info(
        "downstream: %d runs, %s, %d worker(s)",
        len(planned),
        precision,
        min(down.workers, len(planned)),
    )
    count = 0

    def done(run: Run, row: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        log.info(
            "downstream run %d/%d: %s, %s, seed %d: Dice lungs %s (%d training volumes, %.0f s; "
            "%.0f s so far)",
            count,
            len(planned),
            run.generator,
            run.arm,
            run.seed,
            "n/a" if row["dice_lungs"] is None else f"{row['dice_lungs']:.3f}",
            row["train_volumes"],
            row["seconds"],
            time.perf_counter() - started,
        )

    rows = run_all(planned, test, segmenter_cfg, device, precision, down.workers, done)
    runs = [
        {"generator": run.generator, "arm": run.arm, "seed": run.seed, **row}
        for run, row in zip(planned, rows, strict=True)
    ]
    return {
        "training_scan": real.names[0],
        "test_scans": test.names,
        "shape": [int(n) for n in shape],
        "spacing_zyx_mm": [float(v) for v in spacing],
        "runs": runs,
        "paired_mask_trust": {
            g: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)}
            for g, v in trust.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
        "_examples": examples,  # for the figure; not written to JSON
    }
