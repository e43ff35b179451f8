"""Progressive training of the CT-GAN pyramid, scale by scale, and resuming from a checkpoint.

Scale by scale, coarsest first (ctgan-facts §4): grow G (G_s initialised from G_{s-1}, earlier
scales frozen) and D (D_s a copy of D_{s-1}), train the scale (``ctgan.scale_trainer``: the
iteration, its losses and the step's own departures from the seed), write the checkpoint.

Departures from the seed, on purpose:
- Seeded: scale s's fresh weights and all its noise come from generators seeded by (seed, s), so a
  run resumed from the checkpoint after scale s-1 is bitwise the uninterrupted run (CPU).
- The fixed reconstruction noise is saved in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctgan import layers
from ctgan.checkpoint import (
    CHECKPOINT_NAME,
    PyramidLike,
    RunState,
    TrainedModel,
    checkpoint_payload,
    find_checkpoint,
    load_trained,
    read_checkpoint,
    restore_discriminator,
    restore_generator,
    save_checkpoint,
)
from ctgan.config import NOT_TRAINING_SECTIONS, Config, scale_shapes
from ctgan.history import HISTORY_COLUMNS, HISTORY_NAME, HistoryWriter, Row, read_history
from ctgan.io import ensure_writable_dir, write_json
from ctgan.nets import GeneratorPyramid, grow_discriminator, make_reconstruction_noise
from ctgan.progress import progress_bar
from ctgan.runtime import freed_memory_kept
from ctgan.scale_trainer import (
    PURPOSE_RECONSTRUCTION,
    PURPOSE_WEIGHTS,
    Precision,
    ScaleContext,
    ScaleTrainer,
    derived_seed,
    precision_settings,
    real_shapes,
    resolve_training_precision,
    run_reals,
)

# Loading and reading trained models lives in ctgan.checkpoint / ctgan.history, one scale's
# training in ctgan.scale_trainer; these names stay importable from here for the notebooks and
# modules that use them.
__all__ = [
    "CHECKPOINT_NAME",
    "HISTORY_COLUMNS",
    "HISTORY_NAME",
    "Callback",
    "PyramidLike",
    "ScaleTrainer",
    "TrainedModel",
    "TrainingDiverged",
    "check_finite_row",
    "find_checkpoint",
    "load_trained",
    "precision_settings",
    "read_checkpoint",
    "read_history",
    "resolve_device",
    "resolve_training_precision",
    "scale_trainer_at",
    "train_model",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
Callback = Callable[[Row], None]


class TrainingDiverged(RuntimeError):
    """A loss or the generator's output became NaN or infinite during training."""


_FINITE_COLUMNS = ("d_loss", "g_adv", "reconstruction", "projection", "segmentation")


def check_finite_row(row: Row, cfg: Config) -> None:
    """Raise ``TrainingDiverged`` naming setting, scale and iteration if a logged loss is not
    finite (a NaN or inf in the generator's output makes every loss on it non-finite too)."""
    columns = [c for c in _FINITE_COLUMNS if c != "segmentation" or cfg.uses("segmentation")]
    bad = {c: row[c] for c in columns if not math.isfinite(row[c])}
    if not bad:
        return
    scale, iteration = int(row["scale"]), int(row["iteration"])
    kept = (
        f"{CHECKPOINT_NAME} keeps scales 0..{scale - 1}"
        if scale > 0
        else f"no {CHECKPOINT_NAME} was written (scale 0 never finished)"
    )
    values = ", ".join(f"{name}={value}" for name, value in bad.items())
    raise TrainingDiverged(
        f"training of {cfg.setting} diverged at scale {scale}, iteration {iteration}: {values}; "
        f"{kept}. Lower train.lr (now {cfg.train.lr}) or change train.precision (now "
        f"{cfg.train.precision}), then rerun the stage (outside DVC, delete the model folder first)"
    )


# ---------------------------------------------------------------------------------------------
# Devices (precision and seeds: ctgan.scale_trainer).


def resolve_device(name: str) -> torch.device:
    """``train.device``: 'auto' -> CUDA when available else CPU; 'cuda' without a GPU raises."""
    return layers.resolve_device(name, "train.device")


# ---------------------------------------------------------------------------------------------
# Checks at the boundary.


def _check_inputs(cfg: Config, pyramid: PyramidLike, segmenter: nn.Module | None) -> None:
    if cfg.setting is None or cfg.model is None:
        raise ValueError(
            "train_model needs a config with a setting (3d-A ... 2d-D); got setting=None: "
            "use load_config(..., setting=...)"
        )
    expected = scale_shapes(cfg.pyramid)
    got = [tuple(np.shape(v)) for v in pyramid.volumes]
    if got != [tuple(s) for s in expected]:
        raise ValueError(
            f"the pyramid's volume shapes {got} do not match the config's scale shapes "
            f"{expected}; preprocess with the same profile and pyramid settings"
        )
    if len(pyramid.spacings_zyx_mm) != len(expected):
        raise ValueError(
            f"pyramid.spacings_zyx_mm must have one entry per scale ({len(expected)}); "
            f"got {len(pyramid.spacings_zyx_mm)}"
        )
    if cfg.uses("segmentation") and segmenter is None:
        raise ValueError(
            f"setting {cfg.setting} uses the segmentation term but no segmenter was given; "
            f"pass segmenter=load_segmenter(path, device)"
        )


# ---------------------------------------------------------------------------------------------
# Training.


def _train_scale(
    context: ScaleContext,
    state: RunState,
    history: HistoryWriter,
    callbacks: Sequence[Callback],
    seed: int,
) -> None:
    trainer = ScaleTrainer(context, state, seed)
    log_every = context.cfg.train.log_every
    iterations = trainer.iterations
    scales = len(context.shapes)
    desc = f"{context.cfg.setting} scale {context.scale}/{scales - 1}"
    progress = progress_bar(range(iterations), desc, leave=False, dynamic_ncols=True)
    for i in progress:
        trainer.iteration(i)
        if i % log_every == 0 or i == iterations - 1:
            row = trainer.log_row(i)
            history.append(row)
            check_finite_row(row, context.cfg)
            progress.set_postfix(
                d=f"{row['d_loss']:.3g}",
                g_adv=f"{row['g_adv']:.3g}",
                rec=f"{row['reconstruction']:.3g}",
                psnr=f"{row['rec_psnr']:.2f}",
            )
            for callback in callbacks:
                callback(row)
    progress.close()
    trainer.finish()


def _grow(
    state: RunState,
    cfg: Config,
    precision: Precision,
    depth: int,
    seed: int,
    scale: int,
    device: torch.device,
) -> None:
    """Add scale ``scale`` to the generator and grow the discriminator (seeded by (seed, scale))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, scale, PURPOSE_WEIGHTS))
        state.generator.add_scale(depth, identity=cfg.train.new_scale_init == "identity")
        state.discriminator = grow_discriminator(
            state.discriminator, cfg.train.discriminator_channels, precision.norm
        )
    state.generator.to(device=device, dtype=precision.dtype)
    state.discriminator.to(device=device, dtype=precision.dtype)
    state.generator.train()
    state.discriminator.train()


def train_model(
    cfg: Config,
    pyramid: PyramidLike,
    out_dir: str | Path,
    seed: int,
    segmenter: nn.Module | None = None,
    callbacks: Iterable[Callback] = (),
) -> pd.DataFrame:
    """Train the pyramid of ``cfg.setting`` on ``pyramid`` into ``out_dir`` and return the history.

    ``out_dir`` receives ``config.json``, ``history.tsv`` (one row per logged iteration, written
    as it goes) and ``checkpoint.pt`` (after every scale). If ``out_dir`` already holds a
    checkpoint of the same config and seed, training continues after its last completed scale
    and ends with the uninterrupted run's result. ``segmenter`` (frozen, logits out) is required
    when the setting uses the segmentation term; it is put in eval mode with frozen weights.
    ``callbacks`` are called with every logged history row (a dict keyed by ``HISTORY_COLUMNS``).
    """
    _check_inputs(cfg, pyramid, segmenter)
    callbacks = list(callbacks)
    out_dir = ensure_writable_dir(out_dir)
    device = resolve_device(cfg.train.device)
    cfg = resolve_training_precision(cfg, device)  # auto -> bf16 | float32, recorded as such
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a scale: autotune the convs
    precision = precision_settings(cfg.train.precision)
    reals = run_reals(pyramid.volumes, precision, device, segmenter)
    shapes = real_shapes(reals)

    checkpoint_path = out_dir / CHECKPOINT_NAME
    state = _start_or_resume(cfg, seed, checkpoint_path, out_dir, shapes, precision, device)
    write_json(out_dir / CONFIG_NAME, cfg.to_dict())
    history = HistoryWriter(out_dir / HISTORY_NAME, keep_scales=state.completed_scales)
    if state.completed_scales == len(shapes):
        logger.info("%s already holds all %d scales; nothing to train", out_dir, len(shapes))
        return history.frame()

    # oneDNN precisions on CPU: freed activations are reused instead of page-faulted in anew
    keep = device.type == "cpu" and precision.dtype != torch.float64
    with freed_memory_kept(keep):
        for s in range(state.completed_scales, len(shapes)):
            _grow(state, cfg, precision, shapes[s][0], seed, s, device)
            context = ScaleContext.at(cfg, s, device, precision, reals, segmenter)
            _train_scale(context, state, history, callbacks, seed)
            state.completed_scales = s + 1
            payload = checkpoint_payload(cfg, seed, state, pyramid, shapes)
            save_checkpoint(checkpoint_path, payload)
            logger.info("scale %d done: checkpoint %s", s, checkpoint_path)
    return history.frame()


def _start_or_resume(
    cfg: Config,
    seed: int,
    checkpoint_path: Path,
    out_dir: Path,
    shapes: list[tuple[int, ...]],
    precision: Precision,
    device: torch.device,
) -> RunState:
    if not checkpoint_path.exists():
        rec_generator = torch.Generator(device=device).manual_seed(
            derived_seed(seed, PURPOSE_RECONSTRUCTION)
        )
        channels = (
            cfg.train.generator_channels
            if cfg.model == "3d"
            else cfg.train.slice_generator_channels
        )
        generator = GeneratorPyramid(cfg.model or "3d", channels, precision.norm)
        rec_noise = make_reconstruction_noise(shapes, rec_generator, device, precision.dtype)
        return RunState(generator, None, [], rec_noise)

    payload = read_checkpoint(checkpoint_path)
    recorded = {k: v for k, v in payload["config"].items() if k not in NOT_TRAINING_SECTIONS}
    if recorded != cfg.training_dict() or payload["seed"] != int(seed):
        what = "config" if recorded != cfg.training_dict() else f"seed ({payload['seed']})"
        raise ValueError(
            f"{out_dir} holds a checkpoint of another run (another {what}); delete the folder "
            f"or choose another out_dir"
        )
    generator = restore_generator(payload, checkpoint_path).to(device=device, dtype=precision.dtype)
    discriminator = restore_discriminator(payload, checkpoint_path).to(
        device=device, dtype=precision.dtype
    )
    completed = int(payload["completed_scales"])
    state = RunState(
        generator,
        discriminator,
        [float(a) for a in payload["noise_amplitudes"]],
        [z.to(device=device, dtype=precision.dtype) for z in payload["reconstruction_noise"]],
        completed_scales=completed,
        optimizer_states=payload["optimizers"],
        rng_states=payload["rng_states"],
    )
    logger.info("resuming %s after scale %d", out_dir, completed - 1)
    return state


def scale_trainer_at(
    cfg: Config,
    volumes: Sequence[np.ndarray],
    scale: int,
    seed: int = 0,
    segmenter: nn.Module | None = None,
) -> ScaleTrainer:
    """A ``ScaleTrainer`` at scale ``scale`` of a fresh pyramid whose earlier scales are grown but
    not trained (for timing: the cost of an iteration does not depend on the weights)."""
    if not 0 <= scale < len(volumes):
        raise ValueError(f"scale must be in [0, {len(volumes) - 1}]; got {scale}")
    device = resolve_device(cfg.train.device)
    cfg = resolve_training_precision(cfg, device)
    precision = precision_settings(cfg.train.precision)
    reals = run_reals(volumes, precision, device, segmenter)
    shapes = real_shapes(reals)
    channels = (
        cfg.train.generator_channels if cfg.model == "3d" else cfg.train.slice_generator_channels
    )
    rec_generator = torch.Generator(device=device).manual_seed(
        derived_seed(seed, PURPOSE_RECONSTRUCTION)
    )
    state = RunState(
        GeneratorPyramid(cfg.model or "3d", channels, precision.norm),
        None,
        [],
        make_reconstruction_noise(shapes, rec_generator, device, precision.dtype),
    )
    trainer: ScaleTrainer | None = None
    for s in range(scale + 1):
        _grow(state, cfg, precision, shapes[s][0], seed, s, device)
        trainer = ScaleTrainer(
            ScaleContext.at(cfg, s, device, precision, reals, segmenter), state, seed
        )
    assert trainer is not None
    return trainer
