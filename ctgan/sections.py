"""The sections of params.yaml, each a checked dataclass.

Every section validates its own values when built (``__post_init__``) and says what was expected,
what was received and what to do. :mod:`ctgan.config` reads params.yaml, merges profile and
overrides, and builds these; the names of the valid choices (profiles, settings, loss terms, ...)
live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PROFILES = ("smoke", "cpu", "paper")
DATA_SOURCES = ("phantom", "luna16")
MODELS = ("3d", "2d")
SETTING_LETTERS = ("A", "B", "C", "D")
SETTINGS = tuple(f"{m}-{s}" for m in MODELS for s in SETTING_LETTERS)
LOSS_TERMS = ("adversarial", "reconstruction", "projection", "segmentation")
ADVERSARIAL_LOSSES = ("lsgan", "wgangp", "zerogp")
PROJECTION_MODES = ("mean", "edge")
PRECISIONS = ("auto", "float32", "bf16", "reference")
DEVICES = ("auto", "cpu", "cuda")
SAMPLE_START_SOURCES = ("real", "gpnn")
NEW_SCALE_INITS = ("copy", "identity")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def _at_least_one(section: str, obj: Any, names: tuple[str, ...]) -> None:
    """Every field ``names`` of ``obj`` (a counted quantity) is >= 1."""
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{section}.{name} must be >= 1; got {getattr(obj, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the scans come from. ``source`` picks the phantom or a LUNA16 folder."""

    source: str = "phantom"
    phantom_dir: str = "data/phantom"
    phantom_scans: int = 4
    phantom_seed: int = 0
    phantom_size: int = 256
    luna16_dir: str = "data/luna16"
    seriesuid: str = ""

    def __post_init__(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        if self.phantom_scans < 1:
            raise ValueError(f"data.phantom_scans must be >= 1; got {self.phantom_scans}")
        if self.phantom_size < 64:
            raise ValueError(f"data.phantom_size must be >= 64 voxels; got {self.phantom_size}")

    @property
    def root(self) -> Path:
        """The LUNA16-layout folder of the active source, as written in params.yaml."""
        return Path(self.phantom_dir if self.source == "phantom" else self.luna16_dir)

    def root_for(self, params_path: str | Path) -> Path:
        """:attr:`root` resolved against the folder of ``params_path`` (a relative path in
        params.yaml means relative to params.yaml, wherever the notebook runs)."""
        return Path(params_path).resolve().parent / self.root


@dataclass(frozen=True)
class PyramidConfig:
    """The scale pyramid: in-plane size S_s = int(min_size * scale_factor**s), depth int(S_s / depth_ratio).

    ``anti_aliasing`` (a departure, seed false): low-pass the scan's intensities before each
    downsampling (``ctgan.preprocess.anti_alias``) instead of sampling them trilinearly straight
    from full resolution (ctgan-facts §14)."""

    min_size: int = 28
    max_size: int = 140
    scale_factor: float = 1.5
    depth_ratio: float = 6.0
    anti_aliasing: bool = False

    def __post_init__(self) -> None:
        if self.min_size < 8:
            raise ValueError(f"pyramid.min_size must be >= 8 voxels; got {self.min_size}")
        if self.max_size < self.min_size:
            raise ValueError(
                f"pyramid.max_size ({self.max_size}) must be >= pyramid.min_size ({self.min_size})"
            )
        if not self.scale_factor > 1:
            raise ValueError(
                f"pyramid.scale_factor must be > 1 (each scale larger than the last); "
                f"got {self.scale_factor}"
            )
        _positive("pyramid.depth_ratio", self.depth_ratio)
        if int(self.min_size / self.depth_ratio) < 1:
            raise ValueError(
                f"pyramid.depth_ratio {self.depth_ratio} gives depth 0 at min_size "
                f"{self.min_size}; use depth_ratio <= {self.min_size}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Progressive GAN training (paper defaults in the `paper` profile, ctgan-facts §4)."""

    iterations_per_scale: int = 1000
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_fraction: float = 0.8
    lr_decay_factor: float = 0.1
    g_steps: int = 3
    d_steps: int = 3
    adversarial_loss: str = "lsgan"
    projection_mode: str = "mean"
    generator_channels: int = 32
    discriminator_channels: int = 16
    slice_generator_channels: int = 256
    precision: str = "float32"
    device: str = "auto"
    seeds: int = 1
    log_every: int = 10
    # Realism switch (not in the seed, which samples from scale 0): random samples start at this
    # scale from the real volume of the scale below (SinGAN's gen_start_scale); 0 = pure noise.
    sample_start_scale: int = 0
    # What samples starting at sample_start_scale k > 0 start from: "real" (the training volume of
    # scale k - 1) or "gpnn" (a GPNN sample of scales 0 .. k - 1, one per random sample, from noise
    # of sd sample_start_noise_sd: a new coarse layout of the scan's own patches; ctgan.sample_start).
    sample_start_source: str = "real"
    sample_start_noise_sd: float = 2.5
    # With gpnn: before the noise, the coarsest volume is scaled in-plane by 1 + N(0, zoom_sd) per
    # axis and shifted by N(0, shift_sd) voxels per axis, so that the layouts leave the scan's own
    # arrangement (docs/realism.md §10). 0 and 0: GPNN's start (the volume where it is).
    sample_start_zoom_sd: float = 0.0
    sample_start_shift_sd: float = 0.0
    # With gpnn: a layout whose Pearson correlation with the scan's own volume of its scale reaches
    # this gives the scan's arrangement back (a copy) and is drawn again (docs/realism.md §13).
    # 1.0: every first draw is kept (GPNN's rule).
    sample_start_max_correlation: float = 1.0
    # Random samples' noise amplitudes at the scales >= max(sample_start_scale, 1) times this (the
    # trained amplitudes: 1.0; less noise, more faithful intensities, less variation; 0: none).
    sample_noise_factor: float = 1.0
    # Realism switches of training (docs/realism.md). The noise amplitude of scale s >= 1 is this
    # factor x RMSE(up(rec_{s-1}), x_s): the seed 1.0, official SinGAN and ConSinGAN 0.1.
    noise_amplitude_factor: float = 1.0
    # The finest scale trains this factor x its iterations_per_scale * (s + 1) (the seed: 1).
    finest_iterations_factor: float = 1.0
    # true: the adversarial fakes of scales >= sample_start_scale are drawn during training as the
    # samples are drawn, from the real volume of the scale below sample_start_scale; false (the
    # seed): from pure noise at the coarsest scale, whatever the sampling start.
    adversarial_from_sample_start: bool = False
    # true: the reconstruction terms' G(z_rec) at scales >= sample_start_scale k > 0 runs from the
    # real volume of scale k - 1 (what the samples start on), not from G_{k-1}'s reconstruction;
    # false (the seed): from z_rec at the coarsest scale.
    reconstruction_from_sample_start: bool = False
    # ConSinGAN's concurrent training (Hinz et al. 2021): the newest N scales train together,
    # scale s - k at lr x concurrent_lr_scale ** k. The seed: 1 (only the newest scale trains);
    # ConSinGAN: 3 and 0.1.
    concurrent_scales: int = 1
    concurrent_lr_scale: float = 0.1
    # How a scale above the coarsest starts: "copy" (the seed, SinGAN) copies the previous scale's
    # weights; "identity" copies them too but zeroes the output conv, so the new scale starts as
    # the identity on its upsampled input and learns only the detail it adds.
    new_scale_init: str = "copy"
    # > 0: before each Adam step the generator's gradient (all scales it trains) is scaled down to
    # this total L2 norm when it is larger; 0 (the seed): never. Adam normalises each parameter's
    # step by its gradient history, so a gradient that jumps to many times its usual norm moves
    # every weight by several learning rates at once; clipping caps that (docs/realism.md §14).
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        _positive("train.noise_amplitude_factor", self.noise_amplitude_factor)
        if not self.max_grad_norm >= 0:
            raise ValueError(
                f"train.max_grad_norm must be >= 0 (0 = no clipping, the seed); got "
                f"{self.max_grad_norm}"
            )
        _positive("train.finest_iterations_factor", self.finest_iterations_factor)
        if self.sample_start_scale < 0:
            raise ValueError(
                f"train.sample_start_scale must be >= 0 (0 = random from pure noise at the "
                f"coarsest scale); got {self.sample_start_scale}"
            )
        _positive("train.concurrent_lr_scale", self.concurrent_lr_scale)
        _choice("train.sample_start_source", self.sample_start_source, SAMPLE_START_SOURCES)
        _choice("train.new_scale_init", self.new_scale_init, NEW_SCALE_INITS)
        _positive("train.sample_start_noise_sd", self.sample_start_noise_sd)
        if not 0 <= self.sample_start_zoom_sd < 0.5:
            raise ValueError(
                f"train.sample_start_zoom_sd must be >= 0 and < 0.5 (0 = no random zoom of the "
                f"layouts' start; 0.06 = about 6 %); got {self.sample_start_zoom_sd!r}"
            )
        if not self.sample_start_shift_sd >= 0:
            raise ValueError(
                f"train.sample_start_shift_sd must be >= 0 (0 = no random shift of the layouts' "
                f"start, in voxels of the coarsest scale); got {self.sample_start_shift_sd!r}"
            )
        if not 0 < self.sample_start_max_correlation <= 1:
            raise ValueError(
                f"train.sample_start_max_correlation must be > 0 and <= 1 (1 = keep every layout; "
                f"0.98 = draw again a layout that gives the scan's arrangement back); got "
                f"{self.sample_start_max_correlation!r}"
            )
        if not self.sample_noise_factor >= 0:
            raise ValueError(
                f"train.sample_noise_factor must be >= 0 (1.0 = the trained amplitudes, 0 = no "
                f"noise above the start scale); got {self.sample_noise_factor!r}"
            )
        if self.concurrent_scales > 1 and self.precision == "reference":
            raise ValueError(
                f"train.concurrent_scales must be 1 with precision 'reference' (the seed's "
                f"numerics train one scale at a time, and its BatchNorm keeps earlier scales in "
                f"eval mode); got {self.concurrent_scales}. Use precision float32 or bf16"
            )
        _at_least_one(
            "train",
            self,
            (
                "iterations_per_scale",
                "g_steps",
                "d_steps",
                "seeds",
                "log_every",
                "concurrent_scales",
                "generator_channels",
                "discriminator_channels",
                "slice_generator_channels",
            ),
        )
        _positive("train.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1); got {list(self.betas)}")
        if not 0 < self.lr_decay_fraction <= 1:
            raise ValueError(
                f"train.lr_decay_fraction must be in (0, 1]; got {self.lr_decay_fraction}"
            )
        _positive("train.lr_decay_factor", self.lr_decay_factor)
        _choice("train.adversarial_loss", self.adversarial_loss, ADVERSARIAL_LOSSES)
        _choice("train.projection_mode", self.projection_mode, PROJECTION_MODES)
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.device", self.device, DEVICES)


@dataclass(frozen=True)
class SegmenterConfig:
    """The frozen segmenter behind the segmentation term (a small 3D U-Net)."""

    crop_size: tuple[int, int, int] = (16, 96, 96)
    base_channels: int = 16
    iterations: int = 3000
    batch_size: int = 4
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if len(self.crop_size) != 3 or any(int(c) < 4 for c in self.crop_size):
            raise ValueError(
                f"segmenter.crop_size must be [D, H, W] with each >= 4; got {list(self.crop_size)}"
            )
        _at_least_one("segmenter", self, ("base_channels", "iterations", "batch_size"))
        _positive("segmenter.lr", self.lr)


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int = 16

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError(
                f"evaluate.num_samples must be >= 2 (diversity needs pairs); got {self.num_samples}"
            )


@dataclass(frozen=True)
class GpnnConfig:
    """The training-free GPNN baseline (``ctgan.gpnn``; Granot et al., CVPR 2022)."""

    patch_size: tuple[int, int, int] = (3, 7, 7)
    iterations: int = 10
    finest_iterations: int = 10
    alpha: float = 0.005
    noise_sd: float = 0.75
    start_scale: int = 0
    search_radius: tuple[int, int, int] = (1, 3, 3)
    exact_search: bool = False
    chunk_size: int = 4096
    device: str = "auto"

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ValueError(
                f"gpnn.patch_size must be [z, y, x] with each >= 1; got {list(self.patch_size)}"
            )
        if len(self.search_radius) != 3 or any(r < 0 for r in self.search_radius):
            raise ValueError(
                f"gpnn.search_radius must be [z, y, x] with each >= 0; got "
                f"{list(self.search_radius)}"
            )
        _at_least_one("gpnn", self, ("iterations", "finest_iterations", "chunk_size"))
        _positive("gpnn.alpha", self.alpha)
        if self.noise_sd < 0:
            raise ValueError(f"gpnn.noise_sd must be >= 0; got {self.noise_sd}")
        if self.start_scale < 0:
            raise ValueError(
                f"gpnn.start_scale must be >= 0 (0 = coarsest); got {self.start_scale}"
            )
        _choice("gpnn.device", self.device, DEVICES)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the non-adversarial terms and of the discriminator's penalty (GP or R1)."""

    reconstruction: float
    projection: float
    segmentation: float
    penalty: float

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"loss weight {f.name} must be >= 0; got {getattr(self, f.name)}")


DOWNSTREAM_MODELS = (*SETTINGS, "gpnn")
DOWNSTREAM_PRECISIONS = ("auto", "float32", "bf16")


@dataclass(frozen=True)
class DownstreamConfig:
    """The downstream check: a segmenter trained on each model's generated volumes. Read after
    training, never by it (``NOT_TRAINING_SECTIONS``)."""

    models: tuple[str, ...] = ("3d-B", "gpnn")
    num_volumes: int = 16
    seeds: int = 5
    iterations: int = 1000
    base_channels: int = 16
    batch_size: int = 4
    lr: float = 1e-3
    test_scans: int = 8
    precision: str = "float32"
    workers: int = 1

    def __post_init__(self) -> None:
        _choice("downstream.precision", self.precision, DOWNSTREAM_PRECISIONS)
        if not self.models:
            raise ValueError(
                f"downstream.models must be a non-empty list of {', '.join(DOWNSTREAM_MODELS)}; "
                f"got []"
            )
        for model in self.models:
            _choice("downstream.models", model, DOWNSTREAM_MODELS)
        _at_least_one(
            "downstream",
            self,
            (
                "num_volumes",
                "seeds",
                "iterations",
                "base_channels",
                "batch_size",
                "test_scans",
                "workers",
            ),
        )
        _positive("downstream.lr", self.lr)
