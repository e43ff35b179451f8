"""Progressive training of the CT-GAN pyramid, scale by scale; checkpoints, resume, loading.

One scale s (ctgan-facts §4): a new generator G_s (initialised from G_{s-1}) and discriminator D_s
(a copy of D_{s-1}) train for ``iterations_for_scale(cfg.train, s)`` iterations of ``g_steps``
generator steps then ``d_steps`` discriminator steps, with fresh Adam optimisers and one lr decay.
Earlier scales are frozen. Losses: the adversarial one (lsgan | wgangp | zerogp) on a random
sample, plus the enabled terms of the setting on the reconstruction G(z_rec).

Departures from the seed, on purpose:
- The noise amplitude of scale s >= 1 is RMSE(up(rec_{s-1}), x_s), computed once per scale from
  the frozen chain and detached (the seed recomputed it every step and let the adversarial
  gradient leak through it, ctgan-facts §6.8). Since the earlier scales are frozen, it is the same
  number the seed would get before its first step.
- The frozen reconstruction chain up to s-1 is computed once per scale; the random chain of the
  frozen scales runs without autograd.
- Seeded: scale s's fresh weights and all its noise come from generators seeded by (seed, s), so a
  run resumed from the checkpoint after scale s-1 is bitwise the uninterrupted run (CPU).
- The fixed reconstruction noise is saved in the checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ctgan import losses
from ctgan.config import Config, config_from_dict, iterations_for_scale, scale_shapes
from ctgan.intensity import network_to_paper
from ctgan.io import atomic_write, ensure_writable_dir, write_json
from ctgan.nets import (
    Discriminator,
    GeneratorPyramid,
    bf16_autocast,
    build_generator_pyramid,
    grow_discriminator,
    load_weights,
    make_noise,
    make_reconstruction_noise,
    upsample,
)
from ctgan.runtime import freed_memory_kept

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
HISTORY_NAME = "history.tsv"
HISTORY_COLUMNS = (
    "step",
    "scale",
    "iteration",
    "d_loss",
    "g_adv",
    "reconstruction",
    "projection",
    "segmentation",
    "noise_amplitude",
    "rec_psnr",
)

Row = dict[str, float]
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


class PyramidLike(Protocol):
    """What training needs from ``ctgan.preprocess.TrainingPyramid``."""

    volumes: Sequence[np.ndarray]
    spacings_zyx_mm: Sequence[Sequence[float]]
    meta: Mapping[str, Any]


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
# History.


class _HistoryWriter:
    """history.tsv written row by row (flushed), so that a crashed run keeps its curves."""

    def __init__(self, path: Path, keep: pd.DataFrame | None) -> None:
        self.path = path
        with atomic_write(path) as tmp:
            frame = keep if keep is not None else pd.DataFrame(columns=list(HISTORY_COLUMNS))
            frame.to_csv(tmp, sep="\t", index=False)
        self.rows: list[Row] = [] if keep is None else keep.to_dict("records")

    def append(self, row: Row) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t").writerow([row[c] for c in HISTORY_COLUMNS])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))


def read_history(model_dir: str | Path) -> pd.DataFrame:
    """The history.tsv of a seed folder as a DataFrame (columns ``HISTORY_COLUMNS``)."""
    path = Path(model_dir) / HISTORY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train the model first (notebooks/03_train)")
    return pd.read_csv(path, sep="\t")


# ---------------------------------------------------------------------------------------------
# Checkpoints.


@dataclass
class _RunState:
    generator: GeneratorPyramid
    discriminator: Discriminator | None
    noise_amplitudes: list[float]
    reconstruction_noise: list[torch.Tensor]
    completed_scales: int = 0
    optimizer_states: dict[str, Any] = field(default_factory=dict)
    rng_states: dict[str, torch.Tensor] = field(default_factory=dict)


def _checkpoint_payload(
    cfg: Config, seed: int, state: _RunState, pyramid: PyramidLike, shapes: list[tuple[int, ...]]
) -> dict[str, Any]:
    assert state.discriminator is not None
    return {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "seed": int(seed),
        "completed_scales": state.completed_scales,
        "num_scales": len(shapes),
        "generator_architecture": state.generator.architecture(),
        "generator": {k: v.detach().cpu() for k, v in state.generator.state_dict().items()},
        "discriminator_architecture": {
            "channels": cfg.train.discriminator_channels,
            "norm": state.generator.norm,
        },
        "discriminator": {k: v.detach().cpu() for k, v in state.discriminator.state_dict().items()},
        "optimizers": state.optimizer_states,
        "noise_amplitudes": [float(a) for a in state.noise_amplitudes],
        "reconstruction_noise": [z.detach().cpu() for z in state.reconstruction_noise],
        "rng_states": {k: v.cpu() for k, v in state.rng_states.items()},
        "torch_rng_state": torch.get_rng_state(),
        "scale_shapes": [list(s) for s in shapes],
        "scale_spacings_zyx_mm": [[float(v) for v in s] for s in pyramid.spacings_zyx_mm],
        "source": _plain(dict(pyramid.meta)),
    }


def _plain(value: Any) -> Any:
    """Make meta JSON-like (numpy scalars/arrays to Python) so weights_only loading accepts it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict (weights-only unpickling) and check its format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the model first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError or UnpicklingError
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated or "
            f"not a ctgan checkpoint: delete it and retrain"
        ) from err
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{path} is not a ctgan checkpoint (no format_version); retrain the model")
    if payload["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {payload['format_version']}, this code reads "
            f"{FORMAT_VERSION}; retrain the model with this version of ctgan"
        )
    return payload


def _restore_generator(payload: dict[str, Any], path: Path) -> GeneratorPyramid:
    arch = payload["generator_architecture"]
    generator = build_generator_pyramid(
        arch["model"], int(arch["channels"]), arch["norm"], [int(d) for d in arch["depths"]]
    )
    return load_weights(
        generator,
        payload["generator"],
        f"checkpoint {path} does not match the generator architecture it declares ({{reason}}); "
        f"it was written by another version of ctgan: retrain the model",
    )


def _restore_discriminator(payload: dict[str, Any], path: Path) -> Discriminator:
    arch = payload["discriminator_architecture"]
    discriminator = Discriminator(int(arch["channels"]), arch["norm"])
    return load_weights(
        discriminator,
        payload["discriminator"],
        f"checkpoint {path} does not match the discriminator architecture ({{reason}}); "
        f"retrain the model",
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

    def __init__(self, context: _ScaleContext, state: _RunState, seed: int) -> None:
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
            amplitude = float(torch.sqrt(torch.mean((rec_previous - context.real) ** 2)).item())
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
        self.iterations = iterations_for_scale(train_cfg, s)
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
                    iterations_for_scale(context.cfg.train, s) for s in range(context.scale)
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
    state: _RunState,
    history: _HistoryWriter,
    callbacks: Sequence[Callback],
    seed: int,
) -> None:
    trainer = ScaleTrainer(context, state, seed)
    log_every = context.cfg.train.log_every
    iterations = trainer.iterations
    progress = tqdm(
        range(iterations), desc=f"scale {context.scale}", leave=False, dynamic_ncols=True
    )
    for i in progress:
        trainer.iteration(i)
        if i % log_every == 0 or i == iterations - 1:
            row = trainer.log_row(i)
            history.append(row)
            check_finite_row(row, context.cfg)
            progress.set_postfix(d=f"{row['d_loss']:.3g}", psnr=f"{row['rec_psnr']:.2f}")
            for callback in callbacks:
                callback(row)
    progress.close()
    trainer.finish()


def _grow(
    state: _RunState,
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
    state, keep = _start_or_resume(cfg, seed, checkpoint_path, out_dir, shapes, precision, device)
    write_json(out_dir / CONFIG_NAME, cfg.to_dict())
    history = _HistoryWriter(out_dir / HISTORY_NAME, keep)
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
            payload = _checkpoint_payload(cfg, seed, state, pyramid, shapes)
            _save_checkpoint(checkpoint_path, payload)
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
) -> tuple[_RunState, pd.DataFrame | None]:
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
        return _RunState(generator, None, [], rec_noise), None

    payload = read_checkpoint(checkpoint_path)
    if payload["config"] != cfg.to_dict() or payload["seed"] != int(seed):
        what = "config" if payload["config"] != cfg.to_dict() else f"seed ({payload['seed']})"
        raise ValueError(
            f"{out_dir} holds a checkpoint of another run (another {what}); delete the folder "
            f"or choose another out_dir"
        )
    generator = _restore_generator(payload, checkpoint_path).to(
        device=device, dtype=precision.dtype
    )
    discriminator = _restore_discriminator(payload, checkpoint_path).to(
        device=device, dtype=precision.dtype
    )
    completed = int(payload["completed_scales"])
    state = _RunState(
        generator,
        discriminator,
        [float(a) for a in payload["noise_amplitudes"]],
        [z.to(device=device, dtype=precision.dtype) for z in payload["reconstruction_noise"]],
        completed_scales=completed,
        optimizer_states=payload["optimizers"],
        rng_states=payload["rng_states"],
    )
    keep = None
    history_path = out_dir / HISTORY_NAME
    if history_path.is_file():
        frame = pd.read_csv(history_path, sep="\t")
        keep = frame[frame["scale"] < completed].reset_index(drop=True)
    logger.info("resuming %s after scale %d", out_dir, completed - 1)
    return state, keep


# ---------------------------------------------------------------------------------------------
# Loading a trained model.


@dataclass
class TrainedModel:
    """A trained pyramid rebuilt from its checkpoint alone (eval mode, frozen, float32)."""

    config: Config
    generator: GeneratorPyramid
    noise_amplitudes: list[float]
    reconstruction_noise: list[torch.Tensor]
    scale_shapes: list[tuple[int, int, int]]
    scale_spacings_zyx_mm: list[tuple[float, float, float]]
    source: dict[str, Any]
    model_dir: Path
    seed: int = 0

    def reconstruct(self) -> torch.Tensor:
        """G(z_rec) at the finest scale, ``(1, 1, D, H, W)``."""
        with torch.no_grad():
            result = self.generator(self.reconstruction_noise)
        assert isinstance(result, torch.Tensor)
        return result


def find_checkpoint(model_dir: str | Path) -> Path:
    """``model_dir/checkpoint.pt``, or that of its single ``seed<k>/`` subfolder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} not found; train the model first")
    direct = model_dir / CHECKPOINT_NAME
    if direct.is_file():
        return direct
    seeds = sorted(p for p in model_dir.glob(f"seed*/{CHECKPOINT_NAME}") if p.is_file())
    if len(seeds) == 1:
        return seeds[0]
    if len(seeds) > 1:
        names = ", ".join(p.parent.name for p in seeds)
        raise ValueError(
            f"{model_dir} holds several seeds ({names}); pass one seed folder, e.g. "
            f"{seeds[0].parent}"
        )
    raise FileNotFoundError(
        f"{model_dir} is not a model folder: no {CHECKPOINT_NAME} in it or in a seed<k>/ "
        f"subfolder; pass models/<model>-<setting>/ or its seed folder"
    )


def load_trained(model_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a trained model from ``checkpoint.pt`` alone (no params.yaml needed)."""
    path = find_checkpoint(model_dir)
    payload = read_checkpoint(path)
    generator = _restore_generator(payload, path).float().to(device)
    generator.requires_grad_(False)
    generator.eval()
    completed = int(payload["completed_scales"])
    if completed < int(payload["num_scales"]):
        logger.warning(
            "%s holds %d of %d scales (training was interrupted); using the trained ones",
            path,
            completed,
            payload["num_scales"],
        )
    return TrainedModel(
        config=config_from_dict(payload["config"]),
        generator=generator,
        noise_amplitudes=[float(a) for a in payload["noise_amplitudes"]],
        reconstruction_noise=[
            z.float().to(device) for z in payload["reconstruction_noise"][:completed]
        ],
        scale_shapes=[tuple(int(v) for v in s) for s in payload["scale_shapes"][:completed]],  # type: ignore[misc]
        scale_spacings_zyx_mm=[
            tuple(float(v) for v in s)  # type: ignore[misc]
            for s in payload["scale_spacings_zyx_mm"][:completed]
        ],
        source=dict(payload["source"]),
        model_dir=path.parent,
        seed=int(payload["seed"]),
    )


def run_key(cfg: Config, seed: int) -> str:
    """A short hash of what determines a run: the resolved config, the seed and the training code
    (nets, losses, train). Two runs with the same key produce the same checkpoint."""
    code = b"".join(
        (Path(__file__).parent / name).read_bytes() for name in ("nets.py", "losses.py", "train.py")
    )
    text = json.dumps({"config": cfg.to_dict(), "seed": int(seed)}, sort_keys=True).encode()
    return hashlib.sha256(text + code).hexdigest()[:12]


def train_stage(
    cfg: Config,
    pyramid: PyramidLike,
    out_dir: str | Path,
    work_root: str | Path,
    segmenter: nn.Module | None = None,
    callbacks: Iterable[Callback] = (),
) -> dict[str, pd.DataFrame]:
    """Train every seed of ``cfg`` into ``out_dir/seed<k>/`` so that an interrupted stage resumes.

    DVC deletes a stage's outputs before rerunning it, so the checkpoints of a run in progress
    live in ``work_root/<setting>-seed<k>-<run_key>/`` (outside the outputs); a rerun of the same
    config, seed and code resumes there after the last finished scale, and a finished seed is
    moved into ``out_dir``. Work folders of another config or code version are discarded.
    """
    out_dir, work_root = ensure_writable_dir(out_dir), ensure_writable_dir(work_root)
    histories = {}
    for k, seed_dir in iterate_seed_dirs(out_dir, cfg.train.seeds):
        work = work_root / f"{cfg.setting}-seed{k}-{run_key(cfg, k)}"
        for stale in work_root.glob(f"{cfg.setting}-seed{k}-*"):
            if stale != work:
                logger.info("discarding %s (another config or code version)", stale)
                shutil.rmtree(stale)
        histories[f"seed{k}"] = train_model(cfg, pyramid, work, k, segmenter, callbacks)
        if seed_dir.exists():
            shutil.rmtree(seed_dir)
        os.replace(work, seed_dir)
    return histories


def iterate_seed_dirs(out_dir: str | Path, seeds: int) -> Iterator[tuple[int, Path]]:
    """``(k, out_dir/seed<k>)`` for k in 0 .. seeds-1 (the folders train_model writes into)."""
    for k in range(seeds):
        yield k, Path(out_dir) / f"seed{k}"


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
    state = _RunState(
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
