"""Progressive training of the CT-GAN pyramid, scale by scale, and resuming from a checkpoint.

One scale s (ctgan-facts §4): a new generator G_s (initialised from G_{s-1}) and discriminator D_s
(a copy of D_{s-1}) train for ``iterations_for_scale(cfg.train, s, S)`` iterations of ``g_steps``
generator steps then ``d_steps`` discriminator steps, with fresh Adam optimisers and one lr decay.
Earlier scales are frozen. Losses: the adversarial one (lsgan | wgangp | zerogp) on a random
sample, plus the enabled terms of the setting on the reconstruction G(z_rec).

Departures from the seed, on purpose:
- The noise amplitude of scale s >= 1 is RMSE(up(rec_{s-1}), x_s), computed once per scale from
  the frozen chain and detached (the seed recomputed it every step and let the adversarial
  gradient leak through it, ctgan-facts §6.8). Since the earlier scales are frozen, it is the same
  number the seed would get before its first step. ``train.noise_amplitude_factor`` (a realism
  switch, seed 1.0) multiplies it; ``train.finest_iterations_factor`` lengthens the finest scale.
- The frozen reconstruction chain up to s-1 is computed once per scale; the random chain of the
  frozen scales runs without autograd.
- Seeded: scale s's fresh weights and all its noise come from generators seeded by (seed, s), so a
  run resumed from the checkpoint after scale s-1 is bitwise the uninterrupted run (CPU).
- The fixed reconstruction noise is saved in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctgan import losses
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
from ctgan.config import NOT_TRAINING_SECTIONS, Config, iterations_for_scale, scale_shapes
from ctgan.history import HISTORY_COLUMNS, HISTORY_NAME, HistoryWriter, Row, read_history
from ctgan.intensity import network_to_paper
from ctgan.io import ensure_writable_dir, write_json
from ctgan.layers import bf16_autocast
from ctgan.nets import (
    GeneratorPyramid,
    grow_discriminator,
    make_noise,
    make_reconstruction_noise,
    upsample,
)
from ctgan.progress import progress_bar
from ctgan.runtime import freed_memory_kept

# Loading and reading trained models lives in ctgan.checkpoint / ctgan.history; these names stay
# importable from here for the notebooks and modules that use them.
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
# Devices, precision, seeds.


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU raises."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How a precision name maps to numerics: parameter dtype, norm layer, bf16 autocast."""

    dtype: torch.dtype
    norm: str
    autocast_bf16: bool


def precision_settings(precision: str) -> Precision:
    """float32 (default) | bf16 (autocast on the conv passes, float32 weights and losses) |
    reference (float64 + BatchNorm: the seed's numerics)."""
    if precision == "float32":
        return Precision(torch.float32, "instance", False)
    if precision == "bf16":
        return Precision(torch.float32, "instance", True)
    if precision == "reference":
        return Precision(torch.float64, "batch", False)
    raise ValueError(f"train.precision must be float32, bf16 or reference; got {precision!r}")


def _derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from the run seed and a path of ints (scale, purpose)."""
    value = int(seed) & 0xFFFFFFFF
    for key in keys:
        value = (value * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return value


_PURPOSE_WEIGHTS, _PURPOSE_NOISE, _PURPOSE_CROPS, _PURPOSE_RECONSTRUCTION = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Metrics.


def reconstruction_psnr(reconstruction: torch.Tensor, real: torch.Tensor) -> float:
    """PSNR in dB on the paper's [0, 1] scale (peak 1) between two network-range volumes."""
    mse = torch.mean(
        (network_to_paper(reconstruction.float()) - network_to_paper(real.float())) ** 2
    ).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


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


def _adversarial_losses(
    name: str,
) -> tuple[
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]
]:
    table = {
        "lsgan": (losses.d_lsgan_loss, losses.g_lsgan_loss),
        "wgangp": (losses.d_wgangp_loss, losses.g_wgangp_loss),
        "zerogp": (losses.d_zerogp_loss, losses.g_zerogp_loss),
    }
    if name not in table:
        raise ValueError(f"adversarial loss must be one of {', '.join(table)}; got {name!r}")
    return table[name]


def _frozen_chain(
    generator: GeneratorPyramid, noises: Sequence[torch.Tensor], scale: int
) -> torch.Tensor | None:
    """Output of scales 0 .. scale-1 (no autograd), or None at scale 0."""
    previous: torch.Tensor | None = None
    with torch.no_grad():
        for s in range(scale):
            previous = generator.forward_scale(s, noises[s], previous)
    return previous


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class _ScaleContext:
    cfg: Config
    scale: int
    device: torch.device
    precision: Precision
    real: torch.Tensor
    shapes: list[tuple[int, ...]]
    segmenter: nn.Module | None


class ScaleTrainer:
    """Training of one scale, one iteration at a time (``_train_scale`` loops it; the benchmark
    in ``benchmarks/bench_train.py`` times it).

    Construction does the once-per-scale work: the frozen reconstruction chain up to s-1, the
    noise amplitude, fresh Adam optimisers. ``iteration(i)`` runs ``g_steps`` generator steps then
    ``d_steps`` discriminator steps without any host sync; ``log_row(i)`` is the only place that
    reads values back to the host.
    """

    def __init__(self, context: _ScaleContext, state: RunState, seed: int) -> None:
        self.context = context
        self.state = state
        cfg, s, device = context.cfg, context.scale, context.device
        self.dtype = context.precision.dtype
        self.autocast = context.precision.autocast_bf16
        assert state.discriminator is not None
        self.generator, self.discriminator = state.generator, state.discriminator
        self.d_loss_fn, self.g_loss_fn = _adversarial_losses(cfg.train.adversarial_loss)
        self.noise_generator = torch.Generator(device=device).manual_seed(
            _derived_seed(seed, s, _PURPOSE_NOISE)
        )
        self.crop_generator = torch.Generator(device="cpu").manual_seed(
            _derived_seed(seed, s, _PURPOSE_CROPS)
        )
        with bf16_autocast(device, self.autocast):
            rec_previous = _frozen_chain(self.generator, state.reconstruction_noise, s)
        if rec_previous is not None:
            rec_previous = upsample(rec_previous.to(self.dtype), context.shapes[s])
            rmse = float(torch.sqrt(torch.mean((rec_previous - context.real) ** 2)).item())
            amplitude = cfg.train.noise_amplitude_factor * rmse
        else:
            amplitude = 1.0
        self.rec_previous = rec_previous
        self.amplitude = amplitude
        state.noise_amplitudes.append(amplitude)
        train_cfg = cfg.train
        self.opt_g = torch.optim.Adam(
            self.generator.scales[s].parameters(), lr=train_cfg.lr, betas=train_cfg.betas
        )
        self.opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=train_cfg.lr, betas=train_cfg.betas
        )
        self.iterations = iterations_for_scale(train_cfg, s, len(context.shapes))
        self.decay_at = int(round(train_cfg.lr_decay_fraction * self.iterations))
        self.need_rec = any(cfg.uses(t) for t in ("reconstruction", "projection", "segmentation"))
        self.d_loss = torch.full((), float("nan"))
        self.g_adv = torch.full((), float("nan"))
        self.segmentation_value = torch.full((), float("nan"))

    def reconstruct(self) -> torch.Tensor:
        """G_s(z_rec) on the frozen chain's reconstruction (with autograd unless disabled)."""
        context = self.context
        with bf16_autocast(context.device, self.autocast):
            return self.generator.forward_scale(
                context.scale, self.state.reconstruction_noise[context.scale], self.rec_previous
            ).to(self.dtype)

    def iteration(self, i: int) -> None:
        """Iteration ``i`` of the scale: lr decay at ``decay_at``, G steps, D steps."""
        context = self.context
        cfg, s, device = context.cfg, context.scale, context.device
        train_cfg, weights = cfg.train, cfg.loss_weights
        real, dtype, autocast = context.real, self.dtype, self.autocast
        generator, discriminator = self.generator, self.discriminator
        if i == self.decay_at:
            _set_lr(self.opt_g, train_cfg.lr * train_cfg.lr_decay_factor)
            _set_lr(self.opt_d, train_cfg.lr * train_cfg.lr_decay_factor)
        # ---- generator steps
        discriminator.requires_grad_(False)
        self.segmentation_value = torch.full((), float("nan"))
        for _ in range(train_cfg.g_steps):
            noises = make_noise(
                context.shapes[: s + 1],
                self.state.noise_amplitudes,
                1,
                self.noise_generator,
                device,
                dtype,
            )
            with bf16_autocast(device, autocast):
                previous = _frozen_chain(generator, noises, s)
                fake = generator.forward_scale(s, noises[s], previous)
                self.g_adv = self.g_loss_fn(discriminator(fake).float())
            total = self.g_adv
            if self.need_rec:
                rec = self.reconstruct()
                if cfg.uses("reconstruction"):
                    total = total + weights.reconstruction * losses.reconstruction_loss(rec, real)
                if cfg.uses("projection"):
                    total = total + weights.projection * losses.projection_loss(
                        rec, real, train_cfg.projection_mode
                    )
                if cfg.uses("segmentation"):
                    assert context.segmenter is not None
                    with bf16_autocast(device, autocast):
                        self.segmentation_value = losses.segmentation_loss(
                            rec,
                            real,
                            context.segmenter,
                            cfg.segmenter.crop_size,
                            self.crop_generator,
                        )
                    total = total + weights.segmentation * self.segmentation_value
            self.opt_g.zero_grad(set_to_none=True)
            total.backward()
            self.opt_g.step()
        discriminator.requires_grad_(True)
        # ---- discriminator steps (on the last noise, as the seed)
        with torch.no_grad(), bf16_autocast(device, autocast):
            fake = generator.forward_scale(s, noises[s], previous).to(dtype)
        for _ in range(train_cfg.d_steps):
            real_input = real.detach().requires_grad_(train_cfg.adversarial_loss == "zerogp")
            with bf16_autocast(device, autocast):
                real_logits = discriminator(real_input).float()
                fake_logits = discriminator(fake).float()
            d_loss = self.d_loss_fn(real_logits, fake_logits)
            if train_cfg.adversarial_loss == "wgangp" and weights.penalty > 0:
                with bf16_autocast(device, autocast):
                    penalty = losses.gradient_penalty(
                        discriminator, real, fake, self.noise_generator
                    )
                d_loss = d_loss + weights.penalty * penalty.float()
            elif train_cfg.adversarial_loss == "zerogp" and weights.penalty > 0:
                d_loss = d_loss + weights.penalty * losses.r1_penalty(real_logits, real_input)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        self.d_loss = d_loss

    def log_row(self, i: int) -> Row:
        """The history row after iteration ``i`` (host syncs: call at log points only)."""
        context = self.context
        real, mode = context.real, context.cfg.train.projection_mode
        with torch.no_grad():
            rec = self.reconstruct()
            return {
                "step": sum(
                    iterations_for_scale(context.cfg.train, s, len(context.shapes))
                    for s in range(context.scale)
                )
                + i,
                "scale": context.scale,
                "iteration": i,
                "d_loss": float(self.d_loss.item()),
                "g_adv": float(self.g_adv.item()),
                "reconstruction": float(losses.reconstruction_loss(rec, real).item()),
                "projection": float(losses.projection_loss(rec, real, mode).item()),
                "segmentation": float(self.segmentation_value.item()),
                "noise_amplitude": self.amplitude,
                "rec_psnr": reconstruction_psnr(rec, real),
            }

    def finish(self) -> None:
        """Store the optimiser and RNG states in the run state (for the checkpoint)."""
        self.state.optimizer_states = {
            "generator": self.opt_g.state_dict(),
            "discriminator": self.opt_d.state_dict(),
        }
        self.state.rng_states = {
            "noise": self.noise_generator.get_state(),
            "crops": self.crop_generator.get_state(),
        }


def _train_scale(
    context: _ScaleContext,
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
        torch.manual_seed(_derived_seed(seed, scale, _PURPOSE_WEIGHTS))
        state.generator.add_scale(depth)
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a scale: autotune the convs
    precision = precision_settings(cfg.train.precision)
    shapes = [tuple(int(v) for v in np.shape(volume)) for volume in pyramid.volumes]
    reals = [
        torch.as_tensor(np.asarray(volume), dtype=precision.dtype).to(device)[None, None]
        for volume in pyramid.volumes
    ]
    if segmenter is not None:
        segmenter.requires_grad_(False)
        segmenter.eval()
        segmenter.to(device)

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
            context = _ScaleContext(cfg, s, device, precision, reals[s], shapes, segmenter)
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
            _derived_seed(seed, _PURPOSE_RECONSTRUCTION)
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
    precision = precision_settings(cfg.train.precision)
    shapes = [tuple(int(v) for v in np.shape(volume)) for volume in volumes]
    reals = [
        torch.as_tensor(np.asarray(volume), dtype=precision.dtype).to(device)[None, None]
        for volume in volumes
    ]
    if segmenter is not None:
        segmenter.requires_grad_(False)
        segmenter.eval()
        segmenter.to(device)
    channels = (
        cfg.train.generator_channels if cfg.model == "3d" else cfg.train.slice_generator_channels
    )
    rec_generator = torch.Generator(device=device).manual_seed(
        _derived_seed(seed, _PURPOSE_RECONSTRUCTION)
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
        context = _ScaleContext(cfg, s, device, precision, reals[s], shapes, segmenter)
        trainer = ScaleTrainer(context, state, seed)
    assert trainer is not None
    return trainer
