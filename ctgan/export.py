"""Files of a trained pyramid's volumes: export to .mha / .nii.gz with the source scan's geometry
and a provenance header (``ctgan.provenance``), label maps of the same geometry (paired masks,
``ctgan.masks``), reading an injection volume from a scan file, and the plain-text description of
a model (``ctgan info``).

Geometry of exported files (int16 HU): spacing = the finest training level's (for any size
factor); direction = the source scan's; origin = the source origin moved by half a voxel so that
the training grid covers the scan's field of view (:func:`ctgan.sample.output_origin_xyz_mm`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctgan.intensity import hu_to_network, network_to_hu_int16
from ctgan.io import atomic_write
from ctgan.provenance import (
    NIFTI_INTENT_LABEL,
    Provenance,
    metaimage_fields,
    nifti_fields,
    stamp_nifti_intent,
)

if TYPE_CHECKING:
    from ctgan.train import TrainedModel

log = logging.getLogger(__name__)

EXPORT_SUFFIXES = (".nii.gz", ".mha")
# Formats that carry spacing, origin and direction (what an injection file must have).
GEOMETRY_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd")


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


def _write_image(
    array: np.ndarray,
    path: Path,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float],
    direction: Sequence[float],
    provenance: Provenance | None,
    label_map: bool = False,
) -> Path:
    """Write ``array`` (z, y, x) with the given geometry and provenance header, atomically."""
    suffix = _suffix(path)
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(
            f"cannot export to {path.name}: the extension must be one of "
            f"{', '.join(EXPORT_SUFFIXES)}; got {suffix}"
        )
    if array.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W); got {array.ndim}D with shape {array.shape}")
    _check_geometry(spacing_zyx_mm, origin_xyz_mm, direction)
    nifti = nifti_fields(provenance) if provenance is not None and suffix == ".nii.gz" else None
    import SimpleITK as sitk  # here, not at the top: sampling and evaluation run without it

    image = sitk.GetImageFromArray(array)  # (z, y, x) -> image (x, y, z)
    image.SetSpacing(tuple(float(v) for v in reversed(tuple(spacing_zyx_mm))))
    image.SetOrigin(tuple(float(v) for v in origin_xyz_mm))
    image.SetDirection(tuple(float(v) for v in direction))
    if provenance is not None and nifti is None:
        for key, value in metaimage_fields(provenance).items():
            image.SetMetaData(key, value)
    if nifti is not None:
        image.SetMetaData("ITK_FileNotes", nifti["descrip"])  # ITK's key for descrip
        image.SetMetaData("aux_file", nifti["aux_file"])
    with atomic_write(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=suffix == ".nii.gz")
        if nifti is not None:
            stamp_nifti_intent(tmp, nifti["intent_name"], NIFTI_INTENT_LABEL if label_map else 0)
    log.debug("wrote %s %s", path, array.shape)
    return path


def export_volume(
    volume: np.ndarray,
    path: str | Path,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float],
    direction: Sequence[float],
    provenance: Provenance | None = None,
) -> Path:
    """Write ``volume`` ``(D, H, W)`` in [-1, 1] as int16 HU to ``path`` (.nii.gz or .mha).

    Geometry in SimpleITK's conventions: spacing given as (z, y, x) is written as (x, y, z); origin
    (x, y, z) in mm and direction (9 floats) as the source scan's. ``provenance`` (a generated
    volume's; ``ctgan.provenance``) goes into the header. The write is atomic: an interrupted
    export leaves no file under ``path``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(
            f"volume must be 3D (D, H, W); got {volume.ndim}D with shape {volume.shape}"
        )
    return _write_image(
        network_to_hu_int16(volume),
        Path(path),
        spacing_zyx_mm,
        origin_xyz_mm,
        direction,
        provenance,
    )


def export_label_map(
    mask: np.ndarray,
    path: str | Path,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float],
    direction: Sequence[float],
    provenance: Provenance | None = None,
) -> Path:
    """Write a boolean ``(D, H, W)`` mask as a uint8 label map (0 background, 1 structure) with
    the given geometry (as :func:`export_volume`); NIfTI files get intent_code 1002 (label)."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (D, H, W); got {mask.ndim}D with shape {mask.shape}")
    return _write_image(
        mask.astype(bool).astype(np.uint8),
        Path(path),
        spacing_zyx_mm,
        origin_xyz_mm,
        direction,
        provenance,
        label_map=True,
    )


def model_geometry(
    model: TrainedModel, scale: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[tuple[float, float, float], tuple[float, float, float], list[float]]:
    """``(spacing_zyx_mm, origin_xyz_mm, direction)`` of ``model``'s samples of size ``scale``."""
    # here, not at the top: ctgan.sample re-exports this module (either can be imported first)
    from ctgan.sample import output_origin_xyz_mm, output_spacing_zyx_mm

    return (
        output_spacing_zyx_mm(model, scale),
        output_origin_xyz_mm(model),
        [float(v) for v in model.source["direction"]],
    )


def export_model_volume(
    model: TrainedModel,
    volume: np.ndarray,
    path: str | Path,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    provenance: Provenance | None = None,
) -> Path:
    """:func:`export_volume` with ``model``'s output spacing and origin and its source direction."""
    return export_volume(volume, path, *model_geometry(model, scale), provenance=provenance)


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
