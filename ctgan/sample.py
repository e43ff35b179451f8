"""Use a trained pyramid as a tool: random samples (at the training size or others), injection,
reconstruction, and export to .mha / .nii.gz with the source scan's geometry.

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

Geometry of exported files (int16 HU): spacing = the finest training level's (for any size
factor); direction = the source scan's; origin = the source origin moved by half a voxel so that
the training grid covers the scan's field of view (:func:`output_origin_xyz_mm`).
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

from ctgan.intensity import hu_to_network, network_to_hu_int16
from ctgan.io import atomic_write
from ctgan.nets import bf16_autocast, make_noise

if TYPE_CHECKING:
    from ctgan.train import TrainedModel

log = logging.getLogger(__name__)

# 3D generator: five unpadded 3x3x3 convolutions, input zero-padded by 5 -> 11 voxels per axis.
RECEPTIVE_FIELD_3D = 11
# 2D generator: three 2x max-poolings between unpadded convolutions; below this in-plane size the
# encoder runs out of pixels.
MINIMUM_IN_PLANE_2D = 16

PRECISIONS = ("auto", "float32", "bf16")

EXPORT_SUFFIXES = (".nii.gz", ".mha")
# Formats that carry spacing, origin and direction (what an injection file must have).
GEOMETRY_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd")

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


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 autocast is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, torch >= 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16` holds, else ``"float32"``; the others
    as given. Anything else is a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "float32"
    return precision


def _per_sample_noise(
    model: TrainedModel, shapes: list[Shape3], n: int, seed: int, dtype: torch.dtype
) -> list[list[torch.Tensor]]:
    """Noise maps for ``n`` samples, drawn one sample after the other from one seeded CPU
    generator: sample ``i`` depends only on ``seed`` and ``i`` (not on the batch size or device)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return [
        make_noise(shapes, model.noise_amplitudes, 1, generator, torch.device("cpu"), dtype)
        for _ in range(n)
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
                kwargs = {
                    "start_scale": start_scale,
                    "start_volume": start_volume.to(device).expand(len(chunk), -1, -1, -1, -1),
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
) -> np.ndarray:
    """``n`` random volumes ``(n, D, H, W)`` float32 in [-1, 1], from fresh noise at every level.

    ``scale`` = per-axis size factor (z, y, x) applied to the noise maps of every level (checked
    before any work, see :func:`scaled_shapes`). The same ``seed`` gives identical volumes, and
    volume ``i`` does not depend on ``batch_size`` or ``n``. ``device=None`` runs where the
    generator is. ``precision``: auto | float32 | bf16 (module docstring).
    """
    _check_count("n", n)
    _check_count("batch_size", batch_size)
    shapes = scaled_shapes(model, scale)
    device = _resolve_device(model, device)
    precision = resolve_precision(precision, device)
    _, dtype = _generator_device_dtype(model)
    noises = _per_sample_noise(model, shapes, n, seed, dtype)
    log.debug(
        "sampling %d volume(s) of shape %s (scale %s, seed %d, %s)",
        n,
        shapes[-1],
        scale,
        seed,
        precision,
    )
    return _run_batches(model, noises, batch_size, device, progress, precision)


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
    ``precision``: auto | float32 | bf16 (module docstring).
    """
    check_injection_scale(model, scale_index)
    start = _check_network_volume(volume)[None, None]  # (1, 1, D, H, W)
    _check_count("n", n)
    _check_count("batch_size", batch_size)
    shapes = scaled_shapes(model)
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


# --- files -----------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted({*EXPORT_SUFFIXES, *GEOMETRY_SUFFIXES}, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return "".join(path.suffixes).lower() or "(none)"


def _check_geometry(
    spacing_zyx_mm: Sequence[float], origin_xyz_mm: Sequence[float], direction: Sequence[float]
) -> None:
    spacing = [float(v) for v in spacing_zyx_mm]
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(
            f"spacing_zyx_mm must be three positive numbers; got {list(spacing_zyx_mm)}"
        )
    if len(origin_xyz_mm) != 3 or not all(math.isfinite(float(v)) for v in origin_xyz_mm):
        raise ValueError(f"origin_xyz_mm must be three finite numbers; got {list(origin_xyz_mm)}")
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.size != 9 or not np.allclose(
        matrix.reshape(3, 3) @ matrix.reshape(3, 3).T, np.eye(3), atol=1e-4
    ):
        raise ValueError(
            f"direction must be 9 numbers forming an orthonormal 3x3 matrix (row-major, as "
            f"SimpleITK's GetDirection); got {list(direction)}"
        )


def export_volume(
    volume: np.ndarray,
    path: str | Path,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float],
    direction: Sequence[float],
) -> Path:
    """Write ``volume`` ``(D, H, W)`` in [-1, 1] as int16 HU to ``path`` (.nii.gz or .mha).

    Geometry in SimpleITK's conventions: spacing given as (z, y, x) is written as (x, y, z); origin
    (x, y, z) in mm and direction (9 floats) as the source scan's. The write is atomic: an
    interrupted export leaves no file under ``path``.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(
            f"cannot export to {path.name}: the extension must be one of "
            f"{', '.join(EXPORT_SUFFIXES)}; got {suffix}"
        )
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(
            f"volume must be 3D (D, H, W); got {volume.ndim}D with shape {volume.shape}"
        )
    _check_geometry(spacing_zyx_mm, origin_xyz_mm, direction)
    import SimpleITK as sitk  # here, not at the top: sampling and evaluation run without it

    image = sitk.GetImageFromArray(network_to_hu_int16(volume))  # (z, y, x) -> image (x, y, z)
    image.SetSpacing(tuple(float(v) for v in reversed(tuple(spacing_zyx_mm))))
    image.SetOrigin(tuple(float(v) for v in origin_xyz_mm))
    image.SetDirection(tuple(float(v) for v in direction))
    with atomic_write(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=suffix == ".nii.gz")
    log.debug("wrote %s %s", path, volume.shape)
    return path


def export_model_volume(
    model: TrainedModel,
    volume: np.ndarray,
    path: str | Path,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """:func:`export_volume` with ``model``'s output spacing and origin and its source direction."""
    source = model.source
    return export_volume(
        volume,
        path,
        output_spacing_zyx_mm(model, scale),
        output_origin_xyz_mm(model),
        source["direction"],
    )


def read_injection_volume(path: str | Path, model: TrainedModel | None = None) -> np.ndarray:
    """Read a 3D scan (.mhd/.mha/.nii/.nii.gz/.nrrd, in HU) as ``(D, H, W)`` in [-1, 1].

    The file must carry geometry (spacing, origin, direction) and be 3D with one component. With a
    ``model``, a physical extent far from the training volume's is logged as a warning (the volume
    is resized to the injection level whatever its extent).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"injection file {path} not found")
    suffix = _suffix(path)
    if suffix not in GEOMETRY_SUFFIXES:
        raise ValueError(
            f"injection file {path.name} has no geometry (spacing, origin, direction): expected "
            f"one of {', '.join(GEOMETRY_SUFFIXES)}; got {suffix}"
        )
    import SimpleITK as sitk  # here, not at the top: sampling and evaluation run without it

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(
            f"injection file {path} could not be read as an image: {str(err).strip().splitlines()[-1]}"
        ) from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"injection file {path.name} must be a 3D single-channel scan; got a "
            f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
            f"component(s) and size {image.GetSize()}"
        )
    volume = sitk.GetArrayFromImage(image)  # (z, y, x)
    if min(volume.shape) < 2:
        raise ValueError(
            f"injection file {path.name} must be a 3D volume with at least 2 voxels per axis; "
            f"got shape (z, y, x) {volume.shape}"
        )
    if model is not None:
        extent = np.asarray(volume.shape) * np.asarray(image.GetSpacing()[::-1])
        trained = np.asarray(model.scale_shapes[-1]) * np.asarray(model.scale_spacings_zyx_mm[-1])
        ratio = extent / trained
        if np.any(ratio < 0.5) or np.any(ratio > 2.0):
            log.warning(
                "injection file %s covers %s mm (z, y, x), the training volume %s mm; it is "
                "resized to the injection level anyway",
                path.name,
                np.round(extent, 1).tolist(),
                np.round(trained, 1).tolist(),
            )
    return hu_to_network(volume.astype(np.float32))


# --- description (``ctgan info``) ------------------------------------------------------------


def find_metrics_file(model: TrainedModel) -> Path | None:
    """The metrics of ``model``: ``<model_dir>/metrics.json`` if present, else the pipeline's
    ``metrics/<model>-<setting>.json`` of the repository holding ``models/<model>-<setting>/seed<k>``
    (three levels above the model folder); None when neither exists."""
    model_dir = Path(model.model_dir)
    own = model_dir / "metrics.json"
    if own.is_file():
        return own
    setting = model.config.setting
    if setting is None or len(model_dir.resolve().parents) < 3:
        return None
    repository = model_dir.resolve().parents[2]
    pipeline = repository / "metrics" / f"{setting}.json"
    return pipeline if pipeline.is_file() else None


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(values, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in values.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, values)]


def describe_model(model: TrainedModel) -> str:
    """A plain-text description: setting, scales (shape, spacing, extent, noise), data, metrics."""
    from ctgan.io import read_json

    config = model.config
    source = model.source
    lines = [
        f"model folder: {model.model_dir}",
        f"model:        {config.model} ({'3D volume' if config.model == '3d' else '2D slice-stack'} generator)",
        f"setting:      {config.setting} (loss terms: {', '.join(config.terms) or 'adversarial'})",
        f"profile:      {config.profile}",
        f"training:     iterations_per_scale {config.train.iterations_per_scale} (scale s: x (s + 1)), "
        f"{config.train.adversarial_loss}, precision {config.train.precision}",
        f"scales:       {len(model.scale_shapes)} (coarsest first)",
        "  scale  shape (z, y, x)      spacing (z, y, x) mm     extent (z, y, x) mm      noise",
    ]
    for level, (shape, spacing) in enumerate(
        zip(model.scale_shapes, model.scale_spacings_zyx_mm, strict=True)
    ):
        extent = [size * step for size, step in zip(shape, spacing, strict=True)]
        lines.append(
            f"  {level:>5}  {str(tuple(int(v) for v in shape)):<19}  "
            f"{', '.join(f'{v:.3f}' for v in spacing):<23}  "
            f"{', '.join(f'{v:.1f}' for v in extent):<23}  {model.noise_amplitudes[level]:.4f}"
        )
    lines += [
        "training data:",
        f"  source:     {source.get('source', config.data.source)}",
        f"  seriesuid:  {source.get('seriesuid', '(unknown)')}",
    ]
    if "scan_path" in source:
        lines.append(f"  scan:       {source['scan_path']}")
    if "spacing_xyz_mm" in source and "shape_zyx" in source:
        lines.append(
            f"  original:   shape (z, y, x) {tuple(source['shape_zyx'])}, spacing (x, y, z) "
            f"{', '.join(f'{float(v):.3f}' for v in source['spacing_xyz_mm'])} mm"
        )
    metrics_path = find_metrics_file(model)
    if metrics_path is None:
        lines.append("metrics:      none found (run the evaluate stage)")
    else:
        lines.append(f"metrics:      {metrics_path}")
        for key, value in _flatten(read_json(metrics_path)):
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {key}: {shown}")
    return "\n".join(lines)
