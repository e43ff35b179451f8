"""One scale's adversarial training: the iteration, its losses and the per-scale context.

One scale s (ctgan-facts §4): a new generator G_s (initialised from G_{s-1}) and discriminator D_s
(a copy of D_{s-1}) train for ``iterations_for_scale(cfg.train, s, S)`` iterations of ``g_steps``
generator steps then ``d_steps`` discriminator steps, with fresh Adam optimisers and one lr decay.
Earlier scales are frozen (unless ``train.concurrent_scales`` > 1, below). Losses: the
adversarial one (lsgan | wgangp | zerogp) on a random sample, plus the enabled terms of the
setting on the reconstruction G(z_rec).

Departures from the seed, on purpose:
- The noise amplitude of scale s >= 1 is RMSE(up(rec_{s-1}), x_s), computed once per scale from
  the frozen chain and detached (the seed recomputed it every step and let the adversarial
  gradient leak through it, ctgan-facts §6.8). Since the earlier scales are frozen, it is the same
  number the seed would get before its first step. ``train.noise_amplitude_factor`` (a realism
  switch, seed 1.0) multiplies it; ``train.finest_iterations_factor`` lengthens the finest scale.
- The frozen reconstruction chain up to s-1 is computed once per scale; the random chain of the
  frozen scales runs without autograd.
- ``train.concurrent_scales`` N > 1 (a realism switch, seed 1): ConSinGAN's concurrent training.
  Scales s-N+1 .. s train together, scale s-k at lr x ``train.concurrent_lr_scale`` ** k, with
  autograd through them in both the reconstruction and the adversarial chain; the noise amplitude
  is still fixed when the scale starts.
- ``train.adversarial_from_sample_start`` (a realism switch, seed false) draws the adversarial
  fakes of scales >= ``train.sample_start_scale`` from the real volume of the scale below it, as
  the random samples are drawn, instead of from pure noise at scale 0.
- ``train.reconstruction_from_sample_start`` (a realism switch, seed false) does the same for the
  reconstruction terms: G_s(z_rec) at scales >= k runs the chain from the real volume of scale
  k - 1, so those scales learn to refine the volume their samples start on (not G_{k-1}'s
  reconstruction of it). The noise amplitudes follow from that chain.

The run around it (growing the networks, seeds, checkpoints, resuming) is ``ctgan.train``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ctgan import losses
from ctgan.checkpoint import RunState
from ctgan.config import Config, iterations_for_scale
from ctgan.history import Row
from ctgan.intensity import network_to_paper
from ctgan.layers import auto_precision, bf16_autocast
from ctgan.nets import GeneratorPyramid, make_noise, upsample

# ---------------------------------------------------------------------------------------------
# Precision and seeds (``ctgan.train`` uses them too: for the networks it grows and for z_rec).


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
    raise ValueError(
        f"train.precision must be float32, bf16 or reference (auto is resolved per device by "
        f"resolve_training_precision first); got {precision!r}"
    )


def resolve_training_precision(cfg: Config, device: torch.device) -> Config:
    """``cfg`` with ``train.precision: auto`` resolved for ``device``: bf16 where the device
    computes it natively (``ctgan.layers.native_bf16``: AVX512-BF16/AMX CPUs, bf16 GPUs), else
    float32; any other value unchanged. Training runs, and its checkpoint and ``config.json``
    record, the resolved value."""
    if cfg.train.precision != "auto":
        return cfg
    name = auto_precision(device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=name))


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from the run seed and a path of ints (scale, purpose)."""
    value = int(seed) & 0xFFFFFFFF
    for key in keys:
        value = (value * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return value


PURPOSE_WEIGHTS, PURPOSE_NOISE, PURPOSE_CROPS, PURPOSE_RECONSTRUCTION = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# One scale: its metric, losses, context and trainer.


def reconstruction_psnr(reconstruction: torch.Tensor, real: torch.Tensor) -> float:
    """PSNR in dB on the paper's [0, 1] scale (peak 1) between two network-range volumes."""
    mse = torch.mean(
        (network_to_paper(reconstruction.float()) - network_to_paper(real.float())) ** 2
    ).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


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
    generator: GeneratorPyramid,
    noises: Sequence[torch.Tensor],
    scale: int,
    start: int = 0,
    start_volume: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Output of scales ``start`` .. scale-1 (no autograd) on ``start_volume`` (the volume of
    scale ``start - 1``; None with ``start`` 0), or ``start_volume`` itself when ``start`` is
    ``scale``."""
    previous = start_volume
    with torch.no_grad():
        for s in range(start, scale):
            previous = generator.forward_scale(s, noises[s], previous)
    return previous


def _chain_start(
    cfg: Config, scale: int, reals: Sequence[torch.Tensor], from_sample_start: bool
) -> tuple[int, torch.Tensor | None]:
    """``(0, None)`` (the coarsest scale, the seed) or, when ``from_sample_start`` at a scale at
    or above ``train.sample_start_scale`` k > 0, ``(k, reals[k - 1])``: the samples' own start."""
    start = cfg.train.sample_start_scale
    if from_sample_start and 0 < start <= scale:
        return start, reals[start - 1]
    return 0, None


def adversarial_start(
    cfg: Config, scale: int, reals: Sequence[torch.Tensor]
) -> tuple[int, torch.Tensor | None]:
    """Where scale ``scale``'s adversarial fakes start (``train.adversarial_from_sample_start``):
    pure noise at the coarsest scale, or the samples' own start."""
    return _chain_start(cfg, scale, reals, cfg.train.adversarial_from_sample_start)


def reconstruction_start(
    cfg: Config, scale: int, reals: Sequence[torch.Tensor]
) -> tuple[int, torch.Tensor | None]:
    """Where scale ``scale``'s training reconstruction starts
    (``train.reconstruction_from_sample_start``): z_rec at the coarsest scale, or the samples'
    own start, so the scales >= k learn to refine the real coarse volume their samples start on."""
    return _chain_start(cfg, scale, reals, cfg.train.reconstruction_from_sample_start)


def _decay_lr(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], factor: float) -> None:
    """Every parameter group at its own base lr x ``factor``."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


def _trained_chain(
    generator: GeneratorPyramid,
    noises: Sequence[torch.Tensor],
    scale: int,
    first_trained: int,
    start: int = 0,
    start_volume: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Input of scale ``scale``: the chain from ``start`` (on ``start_volume``), without autograd
    below ``first_trained`` and with it from there (the concurrently trained scales)."""
    frozen_until = max(start, first_trained)
    previous = _frozen_chain(generator, noises, frozen_until, start, start_volume)
    for s in range(frozen_until, scale):
        previous = generator.forward_scale(s, noises[s], previous)
    return previous


@dataclass
class ScaleContext:
    cfg: Config
    scale: int
    device: torch.device
    precision: Precision
    real: torch.Tensor
    shapes: list[tuple[int, ...]]
    segmenter: nn.Module | None
    # ``adversarial_start``: the scale the adversarial fakes start at, and the real volume below it
    fake_start: int = 0
    fake_start_volume: torch.Tensor | None = None
    # ``reconstruction_start``: the same for the reconstruction terms' G(z_rec)
    rec_start: int = 0
    rec_start_volume: torch.Tensor | None = None

    @classmethod
    def at(
        cls,
        cfg: Config,
        scale: int,
        device: torch.device,
        precision: Precision,
        reals: Sequence[torch.Tensor],
        segmenter: nn.Module | None,
    ) -> ScaleContext:
        """Scale ``scale``'s context in a run on ``reals`` (``run_reals``)."""
        shapes = real_shapes(reals)
        fake = adversarial_start(cfg, scale, reals)
        rec = reconstruction_start(cfg, scale, reals)
        return cls(cfg, scale, device, precision, reals[scale], shapes, segmenter, *fake, *rec)


def run_reals(
    volumes: Sequence[np.ndarray],
    precision: Precision,
    device: torch.device,
    segmenter: nn.Module | None = None,
) -> list[torch.Tensor]:
    """The training pyramid's volumes as ``(1, 1, D, H, W)`` tensors of the run's dtype on
    ``device``; the segmenter, when given, is frozen there (eval mode, no gradients)."""
    if segmenter is not None:
        segmenter.requires_grad_(False)
        segmenter.eval()
        segmenter.to(device)
    return [
        torch.as_tensor(np.asarray(volume), dtype=precision.dtype).to(device)[None, None]
        for volume in volumes
    ]


def real_shapes(reals: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    """The ``(D, H, W)`` of each of ``run_reals``' ``(1, 1, D, H, W)`` volumes."""
    return [tuple(int(v) for v in real.shape[2:]) for real in reals]


class ScaleTrainer:
    """Training of one scale, one iteration at a time (``ctgan.train._train_scale`` loops it; the
    benchmark in ``benchmarks/bench_train.py`` times it).

    Construction does the once-per-scale work: the frozen reconstruction chain up to s-1, the
    noise amplitude, fresh Adam optimisers. ``iteration(i)`` runs ``g_steps`` generator steps then
    ``d_steps`` discriminator steps without any host sync; ``log_row(i)`` is the only place that
    reads values back to the host.
    """

    def __init__(self, context: ScaleContext, state: RunState, seed: int) -> None:
        self.context = context
        self.state = state
        cfg, s, device = context.cfg, context.scale, context.device
        self.dtype = context.precision.dtype
        self.autocast = context.precision.autocast_bf16
        assert state.discriminator is not None
        self.generator, self.discriminator = state.generator, state.discriminator
        self.d_loss_fn, self.g_loss_fn = _adversarial_losses(cfg.train.adversarial_loss)
        self.noise_generator = torch.Generator(device=device).manual_seed(
            derived_seed(seed, s, PURPOSE_NOISE)
        )
        self.crop_generator = torch.Generator(device="cpu").manual_seed(
            derived_seed(seed, s, PURPOSE_CROPS)
        )
        with bf16_autocast(device, self.autocast):
            rec_previous = _frozen_chain(
                self.generator,
                state.reconstruction_noise,
                s,
                context.rec_start,
                context.rec_start_volume,
            )
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
        # scales first_trained .. s train together (ConSinGAN); the seed: s alone
        self.first_trained = max(0, s - train_cfg.concurrent_scales + 1)
        groups = []
        for t in range(self.first_trained, s + 1):
            self.generator.scales[t].requires_grad_(True)
            lr = train_cfg.lr * train_cfg.concurrent_lr_scale ** (s - t)
            groups.append({"params": list(self.generator.scales[t].parameters()), "lr": lr})
        self.g_base_lrs = [group["lr"] for group in groups]
        self.g_params = [p for group in groups for p in group["params"]]  # what max_grad_norm clips
        # the reconstruction runs the trained scales from rec_from on the frozen chain's rec_base
        self.rec_from = max(self.first_trained, context.rec_start)
        if self.rec_from < s:
            with bf16_autocast(device, self.autocast):
                self.rec_base = _frozen_chain(
                    self.generator,
                    state.reconstruction_noise,
                    self.rec_from,
                    context.rec_start,
                    context.rec_start_volume,
                )
        self.opt_g = torch.optim.Adam(groups, betas=train_cfg.betas)
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
        """G_s(z_rec) on the frozen chain's reconstruction (with autograd unless disabled); with
        concurrent scales, the trained ones run again on their frozen input."""
        context = self.context
        s, noise = context.scale, self.state.reconstruction_noise
        with bf16_autocast(context.device, self.autocast):
            previous = self.rec_previous
            if self.rec_from < s:
                first = self.rec_from
                previous = _trained_chain(self.generator, noise, s, first, first, self.rec_base)
            return self.generator.forward_scale(s, noise[s], previous).to(self.dtype)

    def iteration(self, i: int) -> None:
        """Iteration ``i`` of the scale: lr decay at ``decay_at``, G steps, D steps."""
        context = self.context
        cfg, s, device = context.cfg, context.scale, context.device
        train_cfg, weights = cfg.train, cfg.loss_weights
        real, dtype, autocast = context.real, self.dtype, self.autocast
        generator, discriminator = self.generator, self.discriminator
        if i == self.decay_at:
            _decay_lr(self.opt_g, self.g_base_lrs, train_cfg.lr_decay_factor)
            _decay_lr(self.opt_d, [train_cfg.lr], train_cfg.lr_decay_factor)
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
                previous = _trained_chain(
                    generator,
                    noises,
                    s,
                    self.first_trained,
                    context.fake_start,
                    context.fake_start_volume,
                )
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
            if train_cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.g_params, train_cfg.max_grad_norm)
            self.opt_g.step()
        discriminator.requires_grad_(True)
        # ---- discriminator steps (on the last noise, as the seed)
        with torch.no_grad(), bf16_autocast(device, autocast):
            if previous is not None:
                previous = previous.detach()
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
