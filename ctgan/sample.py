"""Use a trained pyramid as a tool: random samples (at the training size or others), injection,
reconstruction, and the output geometry (writing files: ``ctgan.export``).

Volumes here are numpy ``(D, H, W)`` = ``(z, y, x)`` float32 in the network range [-1, 1]; a batch
is ``(N, D, H, W)``. The generator itself sees ``(N, 1, D, H, W)``.

Sizes. A per-axis factor ``scale = (z, y, x)`` resizes the noise map of every level, so the
generator paints a larger (or smaller) grid at the *same* voxel spacing: a 1.5x deeper volume
covers 1.5x the training extent in z (SinGAN's arbitrary-size samples). Every level must stay at
least as large as the network needs: the 3D generator's receptive field (11 voxels per axis, or
the training size of that level where training itself was smaller), and for the 2D (slice-stack)
generator, whose slices are channels, the training depth exactly and an in-plane size its three
2x poolings accept.

Injection (SinGAN's "paint to image" / editing): the pyramid starts at level ``n`` from a given
volume resized to that level, so the coarse structure of the volume is kept and levels ``n`` and
finer add texture. ``n = num_scales - 1`` (the finest) keeps almost everything; ``n = 1`` keeps only
the coarse anatomy. Level 0 has no input (it is pure noise): use :func:`sample_volumes`.

Seeding. The noise of sample ``i`` is drawn from one CPU ``torch.Generator`` seeded with ``seed``,
sample after sample: the same seed gives identical volumes, and sample ``i`` does not depend on
``n``; across batch sizes it agrees up to float rounding (batched convolution kernels).

Precision. ``precision="float32"`` computes in float32; ``"bf16"`` runs each scale's network under
bfloat16 autocast (its activations are bf16; the weights, the residual sum and the upsampling
between scales stay float32), about 2x faster where the hardware computes bf16 natively;
``"auto"`` (the default) picks bf16 there (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16) and
float32 elsewhere. On this project's trained models bf16 changes a volume by a few HU on average
and the reconstruction PSNR by at most 0.012 dB (``benchmarks/bench_sample.py``,
``docs/performance.md``); the evaluation computes its metrics in float32 so that they do not
depend on the machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ctgan.layers import auto_precision, bf16_autocast
from ctgan.nets import make_noise
from ctgan.sample_start import (
    check_injection_scale,
    resolve_start_scale,
    sampling_amplitudes,
    start_volumes,
)

if TYPE_CHECKING:
    from ctgan.train import TrainedModel

log = logging.getLogger(__name__)

# 3D generator: five unpadded 3x3x3 convolutions, input zero-padded by 5 -> 11 voxels per axis.
RECEPTIVE_FIELD_3D = 11
# 2D generator: three 2x max-poolings between unpadded convolutions; below this in-plane size the
# encoder runs out of pixels.
MINIMUM_IN_PLANE_2D = 16

PRECISIONS = ("auto", "float32", "bf16")

Shape3 = tuple[int, int, int]


# --- sizes -----------------------------------------------------------------------------------


def _check_scale_factor(scale: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in scale)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"scale must be three positive factors (z, y, x), e.g. (1.5, 1, 1); got {list(scale)}"
        )
    return values  # type: ignore[return-value]


def minimum_level_shape(model: TrainedModel, level: int) -> Shape3:
    """The smallest ``(D, H, W)`` the generator accepts at ``level`` (see the module docstring)."""
    trained = model.scale_shapes[level]
    if model.config.model == "2d":
        in_plane = [min(MINIMUM_IN_PLANE_2D, size) for size in trained[1:]]
        return (trained[0], in_plane[0], in_plane[1])
    return tuple(min(RECEPTIVE_FIELD_3D, size) for size in trained)  # type: ignore[return-value]


def scaled_shapes(model: TrainedModel, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> list[Shape3]:
    """``(D, H, W)`` of every level for a per-axis size factor ``scale = (z, y, x)``, coarsest first.

    Raises ``ValueError`` when a level would be smaller than the network accepts, naming the
    level, its size and the smallest factor that works.
    """
    factors = _check_scale_factor(scale)
    shapes: list[Shape3] = []
    for level, trained in enumerate(model.scale_shapes):
        shape = tuple(max(1, round(size * f)) for size, f in zip(trained, factors, strict=True))
        minimum = minimum_level_shape(model, level)
        for axis, name in enumerate("zyx"):
            if model.config.model == "2d" and axis == 0 and shape[0] != trained[0]:
                raise ValueError(
                    f"scale factor z={factors[0]} changes the depth of level {level} from "
                    f"{trained[0]} to {shape[0]} slices, but the 2D generator treats slices as "
                    f"channels and needs exactly {trained[0]}; use a z factor of 1 for 2D models"
                )
            if shape[axis] < minimum[axis]:
                smallest = minimum[axis] / trained[axis]
                reason = "receptive field" if model.config.model == "3d" else "three 2x poolings"
                raise ValueError(
                    f"scale factor {name}={factors[axis]} makes level {level} {shape[axis]} voxels "
                    f"along {name} (trained: {trained[axis]}), fewer than the {minimum[axis]} the "
                    f"{model.config.model} generator needs (its {reason}); use a {name} factor "
                    f">= {smallest:.3f}"
                )
        shapes.append(shape)  # type: ignore[arg-type]
    return shapes


def output_shape(model: TrainedModel, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> Shape3:
    """``(D, H, W)`` of the volumes :func:`sample_volumes` returns for ``scale``."""
    return scaled_shapes(model, scale)[-1]


def output_spacing_zyx_mm(
    model: TrainedModel, scale: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm of sampled volumes: the finest training level's, for any scale.

    A size factor adds voxels at the same spacing (the generator paints more of the same texture),
    so a volume 1.5x deeper covers 1.5x the training extent in z.
    """
    _check_scale_factor(scale)
    return tuple(float(v) for v in model.scale_spacings_zyx_mm[-1])  # type: ignore[return-value]


def output_origin_xyz_mm(model: TrainedModel) -> tuple[float, float, float]:
    """World position (x, y, z) in mm of the first voxel of sampled volumes.

    The preprocessing resizes the whole scan, so voxel spacing becomes extent / shape: the
    training grid covers the scan's field of view with larger voxels. Its first voxel centre sits
    half a new voxel inside the field of view's corner, i.e. the source origin shifted by
    (new spacing - source spacing) / 2 along each image axis (rotated by the direction). The
    training volume then overlays the source scan; a larger sample extends from the same corner.
    Without the source spacing (``source['spacing_xyz_mm']``), the source origin as is.
    """
    source = model.source
    origin = np.asarray(source["origin_xyz_mm"], dtype=np.float64)
    if "spacing_xyz_mm" not in source:
        return tuple(float(v) for v in origin)  # type: ignore[return-value]
    direction = np.asarray(source["direction"], dtype=np.float64).reshape(3, 3)
    source_spacing = np.asarray(source["spacing_xyz_mm"], dtype=np.float64)
    out_spacing = np.asarray(model.scale_spacings_zyx_mm[-1], dtype=np.float64)[::-1]  # (x, y, z)
    shifted = origin + direction @ ((out_spacing - source_spacing) / 2)
    return tuple(float(v) for v in shifted)  # type: ignore[return-value]


# --- generation ------------------------------------------------------------------------------


def _generator_device_dtype(model: TrainedModel) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.generator.parameters())
    return parameter.device, parameter.dtype


def _resolve_device(model: TrainedModel, device: str | torch.device | None) -> torch.device:
    """The generator's device; a given ``device`` moves the generator there (in place)."""
    current, _ = _generator_device_dtype(model)
    if device is None:
        return current
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was requested but CUDA is not available; use 'cpu'"
        )
    if target != current:
        model.generator.to(target)
    return target


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``ctgan.layers.auto_precision`` (bf16 where computed natively, else float32); the others
    as given. Anything else is a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return auto_precision(device)
    return precision


def _per_sample_noise(
    model: TrainedModel,
    shapes: list[Shape3],
    n: int,
    seed: int,
    dtype: torch.dtype,
    amplitudes: Sequence[float] | None = None,
) -> list[list[torch.Tensor]]:
    """Noise maps for ``n`` samples, drawn one sample after the other from one seeded CPU
    generator: sample ``i`` depends only on ``seed`` and ``i`` (not on the batch size or device).
    ``amplitudes``: per level (default: the model's trained ones)."""
    amplitudes = model.noise_amplitudes if amplitudes is None else amplitudes
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return [
        make_noise(shapes, amplitudes, 1, generator, torch.device("cpu"), dtype) for _ in range(n)
    ]


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def _run_batches(
    model: TrainedModel,
    noises: list[list[torch.Tensor]],
    batch_size: int,
    device: torch.device,
    progress: bool,
    precision: str,
    start_scale: int = 0,
    start_volume: torch.Tensor | None = None,
) -> np.ndarray:
    n = len(noises)
    out: list[np.ndarray] = []
    starts = range(0, n, batch_size)
    with torch.inference_mode(), bf16_autocast(device, precision == "bf16"):
        for start in tqdm(
            starts, desc="sampling", unit="batch", disable=not progress or len(starts) < 2
        ):
            chunk = noises[start : start + batch_size]
            batch = [
                torch.cat([sample[level] for sample in chunk]).to(device)
                for level in range(len(chunk[0]))
            ]  # per level: (B, 1, D_s, H_s, W_s)
            kwargs: dict[str, Any] = {}
            if start_scale > 0:
                assert start_volume is not None
                volume = (
                    start_volume[start : start + len(chunk)]
                    if len(start_volume) > 1
                    else start_volume
                )
                kwargs = {
                    "start_scale": start_scale,
                    "start_volume": volume.to(device).expand(len(chunk), -1, -1, -1, -1),
                }
            volumes = model.generator(batch, **kwargs)  # (B, 1, D, H, W)
            out.append(volumes[:, 0].float().clamp(-1, 1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def sample_volumes(
    model: TrainedModel,
    n: int,
    seed: int = 0,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "auto",
    start_scale: int | None = None,
    layout_cache: str | Path | None = None,
) -> np.ndarray:
    """``n`` random volumes ``(n, D, H, W)`` float32 in [-1, 1], from fresh noise at every level.

    ``start_scale``: the level generation starts at (None: the model's
    ``train.sample_start_scale``). 0 is SinGAN's random sample from pure noise; ``k > 0`` starts
    from a volume of level ``k - 1`` and levels ``k`` and finer draw fresh noise (SinGAN's
    gen_start_scale): the real training volume of that level (saved in the checkpoint), or with
    ``train.sample_start_source: gpnn`` one GPNN layout per sample (``ctgan.sample_start``).

    ``scale`` = per-axis size factor (z, y, x) applied to the noise maps of every level (checked
    before any work, see :func:`scaled_shapes`). The same ``seed`` gives identical volumes, and
    volume ``i`` does not depend on ``batch_size`` or ``n``. ``device=None`` runs where the
    generator is. ``precision``: auto | float32 | bf16 (module docstring). ``layout_cache``: a
    folder that keeps GPNN layouts for reuse (``ctgan.sample_start.gpnn_layouts``).
    """
    _check_count("n", n)
    _check_count("batch_size", batch_size)
    shapes = scaled_shapes(model, scale)
    start = resolve_start_scale(model, start_scale, scale)
    device = _resolve_device(model, device)
    precision = resolve_precision(precision, device)
    _, dtype = _generator_device_dtype(model)
    noises = _per_sample_noise(model, shapes, n, seed, dtype, sampling_amplitudes(model, start))
    log.debug(
        "sampling %d volume(s) of shape %s (scale %s, seed %d, %s, start scale %d)",
        n,
        shapes[-1],
        scale,
        seed,
        precision,
        start,
    )
    if start == 0:
        return _run_batches(model, noises, batch_size, device, progress, precision)
    volume = start_volumes(model, start, n, seed, layout_cache).to(dtype=dtype)
    return _run_batches(model, noises, batch_size, device, progress, precision, start, volume)


def _check_network_volume(volume: np.ndarray | torch.Tensor, name: str = "volume") -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    if tensor.ndim != 3:
        raise ValueError(
            f"{name} must be a 3D (D, H, W) array; got {tensor.ndim}D with shape "
            f"{tuple(tensor.shape)}"
        )
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} holds NaN or infinite values; give a finite volume")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1.01 or high > 1.01:
        raise ValueError(
            f"{name} must be in the network range [-1, 1]; got values in [{low:.1f}, {high:.1f}]; "
            f"convert HU with ctgan.intensity.hu_to_network or read files with "
            f"read_injection_volume"
        )
    return tensor.clamp(-1, 1)


def inject(
    model: TrainedModel,
    volume: np.ndarray | torch.Tensor,
    scale_index: int,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> np.ndarray:
    """Start the pyramid at level ``scale_index`` from ``volume`` and return ``(n, D, H, W)``.

    ``volume``: ``(D, H, W)`` in the network range [-1, 1] (any size: it is resized to the level;
    HU files go through :func:`read_injection_volume`). ``scale_index`` in 1 .. num_scales - 1: the
    higher, the more of ``volume`` is kept. Output at the training size, float32 in [-1, 1].
    A model trained on an anti-aliased pyramid (``pyramid.anti_aliasing``) gets ``volume``
    low-passed before it shrinks to the level, as its training volume was.
    ``precision``: auto | float32 | bf16 (module docstring).
    """
    check_injection_scale(model, scale_index)
    start = _check_network_volume(volume)
    _check_count("n", n)
    _check_count("batch_size", batch_size)
    shapes = scaled_shapes(model)
    if model.config.pyramid.anti_aliasing:
        from ctgan.preprocess import anti_alias

        start = torch.from_numpy(anti_alias(start.numpy(), shapes[scale_index]))
    start = start[None, None]  # (1, 1, D, H, W)
    device = _resolve_device(model, device)
    precision = resolve_precision(precision, device)
    _, dtype = _generator_device_dtype(model)
    noises = _per_sample_noise(model, shapes, n, seed, dtype)
    return _run_batches(
        model, noises, batch_size, device, progress, precision, scale_index, start.to(dtype=dtype)
    )


def reconstruct(model: TrainedModel, precision: str = "auto") -> np.ndarray:
    """The reconstruction ``(D, H, W)``: the generator fed the saved fixed noise (z_rec).
    ``precision``: auto | float32 | bf16 (module docstring)."""
    device, dtype = _generator_device_dtype(model)
    precision = resolve_precision(precision, device)
    noise = [z.to(device=device, dtype=dtype) for z in model.reconstruction_noise]
    with torch.inference_mode(), bf16_autocast(device, precision == "bf16"):
        volume = model.generator(noise)  # (1, 1, D, H, W)
    return volume[0, 0].float().clamp(-1, 1).cpu().numpy()


# File export, injection files and ``ctgan info`` live in ctgan.export; re-exported here so that
# ``from ctgan.sample import export_volume`` keeps working.
from ctgan.export import (  # noqa: E402, F401
    EXPORT_SUFFIXES,
    GEOMETRY_SUFFIXES,
    describe_model,
    export_model_volume,
    export_volume,
    find_metrics_file,
    read_injection_volume,
)
