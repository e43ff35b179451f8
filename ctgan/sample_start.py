"""Where random samples start: the scale (SinGAN's gen_start_scale) and the volume below it.

A 3D model's random samples start at ``train.sample_start_scale`` k. At k = 0 they are SinGAN's
samples from pure noise. At k > 0 the generator's scales k and finer run on a volume of scale
k - 1 with fresh noise, and ``train.sample_start_source`` says which volume:

- ``real``: the training volume of scale k - 1 (saved in the checkpoint). Every sample has the
  scan's own coarse anatomy and differs from the others only by what scales k and finer add
  (README departure 15).
- ``gpnn``: one GPNN sample (``ctgan.gpnn``) of the training pyramid's scales 0 .. k - 1 per
  random sample, started from noise of sd ``train.sample_start_noise_sd``: a new coarse layout
  made of the scan's own patches, which the GAN's finer scales then refine (README departure 21,
  ``docs/realism.md`` §7). With ``train.sample_start_zoom_sd`` / ``sample_start_shift_sd`` > 0
  the coarsest volume is first scaled and shifted in-plane at random, so that the PNN steps do
  not fall back into the scan's own arrangement (README departure 25, ``docs/realism.md`` §10);
  with ``train.sample_start_max_correlation`` < 1 a layout that still does (its Pearson
  correlation with the scan's volume of that scale reaches the bound) is drawn again (README
  departure 27, ``docs/realism.md`` §13).
  The GPNN search uses the model's ``gpnn`` section (patch size, iterations, alpha, search
  radius). Layout *i* depends only on the sampling seed and *i*.

  A ``layout_cache`` folder (the pipeline's evaluate stages pass ``.cache/gpnn-layouts``) keeps
  each set of layouts it computes under a key of everything that decides them: the volumes, the
  count, the seed, every GPNN option, the source of this module and of ``ctgan.gpnn``, the torch
  version and the CPU's vector ISA. The 3D settings share one training pyramid and the
  cpu profile's start keys, so their evaluations draw the same K layouts; the first computes
  them, the others read them back (the same arrays, bit for bit).

``train.sample_noise_factor`` scales the noise amplitudes of the levels at and above the start
(at least level 1): the trained amplitudes at 1.0; less noise gives more faithful intensities and
less variation (``docs/realism.md`` §2, §7).

Injection (``ctgan.sample.inject``) starts from a volume the caller gives, at
:func:`check_injection_scale`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ctgan import gpnn
from ctgan.gpnn import generate_gpnn, gpnn_options
from ctgan.io import atomic_write

if TYPE_CHECKING:
    from ctgan.checkpoint import TrainedModel

log = logging.getLogger(__name__)


def resolve_start_scale(
    model: TrainedModel, start_scale: int | None, scale: Sequence[float] = (1.0, 1.0, 1.0)
) -> int:
    """The level random samples start at: ``start_scale``, or the model's configured one.

    Samples of another size (``scale`` not all 1) have no real volume of their size to start
    from: with the model's default they start at 0, and an explicit ``start_scale > 0`` is an error.
    """
    start = model.config.train.sample_start_scale if start_scale is None else start_scale
    last = len(model.scale_shapes) - 1
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= last:
        raise ValueError(
            f"start scale must be an integer between 0 and {last} (this model has {last + 1} "
            f"scales; 0 = pure noise); got {start!r}"
        )
    if start == 0:
        return 0
    if model.config.model == "2d":
        raise ValueError(
            f"2D models sample from scale 0 only (no noise above the coarsest scale: every sample "
            f"starting at scale {start} would be the same volume); got start scale {start}"
        )
    if getattr(model, "real_volumes", None) is None:
        raise ValueError(
            f"{model.model_dir} was trained before checkpoints held the training pyramid, so it "
            f"cannot start sampling at scale {start}; pass start_scale=0 (ctgan sample "
            f"--start-scale 0) or retrain the model"
        )
    if tuple(float(v) for v in scale) != (1.0, 1.0, 1.0):
        if (
            start_scale is None
        ):  # the model's default: other sizes have no real volume to start from
            log.info("samples of size factor %s start from pure noise (scale 0)", tuple(scale))
            return 0
        raise ValueError(
            f"samples of another size (scale {tuple(scale)}) start from pure noise: the real "
            f"volume a start scale of {start} begins with has the training size; pass "
            f"start_scale=0 (ctgan sample --start-scale 0) with --scale"
        )
    return start


def check_injection_scale(model: TrainedModel, scale_index: int) -> int:
    """Check ``scale_index`` is a level injection can start at: 1 .. num_scales - 1."""
    last = len(model.scale_shapes) - 1
    if isinstance(scale_index, bool) or not isinstance(scale_index, int):
        raise ValueError(f"injection scale must be an integer; got {scale_index!r}")
    if not 1 <= scale_index <= last:
        raise ValueError(
            f"injection scale must be between 1 and {last} (this model has {last + 1} scales, "
            f"0 = coarsest, which is pure noise and takes no input); got {scale_index}"
        )
    return scale_index


def with_sampling(
    model: TrainedModel,
    source: str | None = None,
    noise_sd: float | None = None,
    noise_factor: float | None = None,
) -> TrainedModel:
    """``model`` with its sampling keys replaced where given (``train.sample_start_source``,
    ``sample_start_noise_sd``, ``sample_noise_factor``; checked as params.yaml is): a trained
    model tried with another start, without retraining."""
    changes = {
        key: value
        for key, value in (
            ("sample_start_source", source),
            ("sample_start_noise_sd", noise_sd),
            ("sample_noise_factor", noise_factor),
        )
        if value is not None
    }
    if not changes:
        return model
    train = dataclasses.replace(model.config.train, **changes)
    return dataclasses.replace(model, config=dataclasses.replace(model.config, train=train))


def sampling_amplitudes(model: TrainedModel, start: int) -> list[float]:
    """The noise amplitudes random samples from ``start`` use: the trained ones, times
    ``train.sample_noise_factor`` at the levels >= max(``start``, 1)."""
    factor = model.config.train.sample_noise_factor
    first = max(start, 1)
    return [a * factor if s >= first else a for s, a in enumerate(model.noise_amplitudes)]


def sampling_recipe(model: TrainedModel, start: int) -> str:
    """How random samples from ``start`` are drawn, in words for a file's provenance: e.g.
    ``start 1 gpnn sd 2.25, noise x0.25`` or ``start 0, noise x1``."""
    train = model.config.train
    text = f"start {start}"
    if start > 0:
        text += f" {train.sample_start_source}"
        if train.sample_start_source == "gpnn":
            text += f" sd {train.sample_start_noise_sd:g}"
            if train.sample_start_zoom_sd or train.sample_start_shift_sd:
                text += (
                    f" zoom sd {train.sample_start_zoom_sd:g}"
                    f" shift sd {train.sample_start_shift_sd:g}"
                )
            if train.sample_start_max_correlation < 1.0:
                text += f" corr < {train.sample_start_max_correlation:g}"
    return f"{text}, noise x{train.sample_noise_factor:g}"


def gpnn_layouts(
    model: TrainedModel, start: int, n: int, seed: int, layout_cache: str | Path | None = None
) -> torch.Tensor:
    """``n`` GPNN samples of the training pyramid's scales 0 .. ``start`` - 1: float32
    ``(n, 1, D, H, W)`` at scale ``start - 1``, in [-1, 1] (module docstring), read from or kept
    in ``layout_cache`` when given."""
    assert model.real_volumes is not None and start >= 1
    options = gpnn_options(model.config.gpnn)
    # the layout's last scale is not the finest, and it starts at the pyramid's coarsest
    options.update(finest_iterations=options["iterations"], start_scale=0)
    train = model.config.train
    kwargs = {
        "seed": seed,
        "noise_sd": train.sample_start_noise_sd,
        "zoom_sd": train.sample_start_zoom_sd,
        "shift_sd": train.sample_start_shift_sd,
        "max_correlation": train.sample_start_max_correlation,
        **options,
    }
    volumes = model.real_volumes[:start]
    path = None
    if layout_cache is not None:
        path = Path(layout_cache) / f"{_layout_key(volumes, n, kwargs)}.npy"
        if path.is_file():
            try:
                layouts = np.load(path)
            except (OSError, ValueError) as err:  # damaged: compute them again, and replace it
                log.warning("ignoring the unreadable GPNN layout cache file %s (%s)", path, err)
            else:
                log.info("%d GPNN layout(s) read from %s", n, path)
                return torch.from_numpy(layouts)[:, None]
    layouts = generate_gpnn(volumes, n, **kwargs)
    if path is not None:
        try:
            with atomic_write(path) as tmp:
                np.save(tmp, layouts)
        except OSError as err:  # a cache that cannot be written costs time, not the result
            log.warning("could not keep the GPNN layouts in %s (%s); computed them", path, err)
    return torch.from_numpy(layouts)[:, None]


def _layout_key(volumes: Sequence[Any], n: int, kwargs: dict[str, Any]) -> str:
    """A digest of everything that decides a set of layouts (module docstring)."""
    digest = hashlib.sha256()
    for volume in volumes:
        array = np.ascontiguousarray(volume, dtype=np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    settings = {"n": n, **{k: str(v) for k, v in kwargs.items()}}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for module in (gpnn.__file__, __file__):
        digest.update(Path(module).read_bytes())
    digest.update(f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()}".encode())
    return digest.hexdigest()[:32]


def start_volumes(
    model: TrainedModel, start: int, n: int, seed: int, layout_cache: str | Path | None = None
) -> torch.Tensor:
    """The volumes ``n`` random samples from scale ``start`` >= 1 start from, float32: ``(1, 1,
    D, H, W)`` (the real volume, shared) or ``(n, 1, D, H, W)`` (one GPNN layout per sample,
    :func:`gpnn_layouts`)."""
    assert model.real_volumes is not None
    source = model.config.train.sample_start_source
    if source == "gpnn":
        log.debug("sampling from %d GPNN layout(s) of scales 0..%d", n, start - 1)
        return gpnn_layouts(model, start, n, seed, layout_cache)
    return torch.as_tensor(model.real_volumes[start - 1], dtype=torch.float32)[None, None]
