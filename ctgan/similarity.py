"""Volume-to-volume similarity on the paper's scale: the reconstruction metrics, diversity, memorisation.

Every function here takes volumes on the paper's scale [0, 1] = (HU + 1000) / 2000
(``ctgan.intensity.network_to_paper``), numpy arrays or tensors, and returns floats:

- the paper's numbers: the finest-scale reconstruction ``G(z_rec)`` against the real training
  volume: MSE, PSNR with peak 1, SSIM in 3D and per plane;
- ``diversity``: how different K random samples are from each other (mean pairwise 1 - SSIM);
- ``memorisation``: how close each sample is to the training volume and to its own model's
  reconstruction (a model that copies its one training scan is not a generator).

The registry that runs them on a trained model is :mod:`ctgan.metrics`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

PLANES = ("axial", "coronal", "sagittal")

# PSNR of identical volumes: the MSE is floored at 1e-10, so PSNR is capped at 10 log10(1e10) = 100 dB.
PSNR_MSE_FLOOR = 1e-10
PSNR_CAP_DB = 10.0 * math.log10(1.0 / PSNR_MSE_FLOOR)
# SSIM window: scikit-image's default uniform 7-voxel window, shrunk to the largest odd size that
# fits the smallest dimension (a finest scale of depth 7-10 in the CPU profiles).
SSIM_MAX_WINDOW = 7
# A sample whose SSIM to the training volume (or to the reconstruction) reaches this is a copy.
MEMORISATION_SSIM_THRESHOLD = 0.95
# Tolerance on the [0, 1] range check of the paper scale (float rounding).
_RANGE_TOLERANCE = 1e-5

Array = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Input checks (shared with ctgan.features and ctgan.metrics).


def as_array(name: str, x: Array, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor; got {type(x).__name__}")
    if x.ndim != ndim:
        layout = "(D, H, W)" if ndim == 3 else "(K, D, H, W)" if ndim == 4 else f"{ndim}-D"
        raise ValueError(
            f"{name} must be a {ndim}-D array {layout}; got shape {tuple(x.shape)}. "
            f"Drop the batch and channel axes of (N, 1, D, H, W) tensors first"
        )
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be non-empty and finite; got shape {x.shape} with NaN/inf")
    return np.asarray(x, dtype=np.float64)


def paper_scale(name: str, x: Array, ndim: int = 3) -> np.ndarray:
    array = as_array(name, x, ndim)
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be on the paper's scale [0, 1]; got values in [{low:.3g}, {high:.3g}]. "
            f"Convert network outputs with ctgan.intensity.network_to_paper"
        )
    return array


def same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {a.shape} and {b.shape}. "
            f"Compare volumes of the same scale"
        )


def ssim_window(shape: tuple[int, ...]) -> int:
    smallest = min(shape)
    window = min(SSIM_MAX_WINDOW, smallest if smallest % 2 == 1 else smallest - 1)
    if window < 3:
        raise ValueError(
            f"SSIM needs every dimension >= 3 voxels; got shape {shape}. Evaluate a larger scale"
        )
    return window


# ---------------------------------------------------------------------------------------------
# Reconstruction: the paper's metrics on [0, 1].


def mse(reconstruction: Array, real: Array) -> float:
    """Mean squared error on the paper's scale: mean((r - x)^2).

    Range [0, 1]; 0 is a perfect reconstruction. Paper: 3D 0.0017-0.0049, 2D 0.0001-0.0005.
    """
    r = paper_scale("reconstruction", reconstruction)
    x = paper_scale("real", real)
    same_shape("reconstruction", r, "real", x)
    return float(np.mean((r - x) ** 2))


def psnr(reconstruction: Array, real: Array) -> float:
    """Peak signal-to-noise ratio with peak 1: 10 log10(1 / max(MSE, 1e-10)) dB.

    Range [0, 100] dB (the MSE floor caps identical volumes at PSNR_CAP_DB = 100 dB); higher is
    better. Paper: 3D 23.1-27.9 dB, 2D 33.3-41.6 dB. Gaussian noise of sd sigma gives
    -20 log10(sigma).
    """
    return float(10.0 * math.log10(1.0 / max(mse(reconstruction, real), PSNR_MSE_FLOOR)))


def ssim_3d(reconstruction: Array, real: Array) -> float:
    """3D SSIM (scikit-image ``structural_similarity``, ``data_range=1``, uniform window).

    The window is 7 voxels, or the largest odd size <= the smallest dimension. Range [-1, 1];
    1 for identical volumes. The paper reports SSIM without saying how it was computed.
    """
    r = paper_scale("reconstruction", reconstruction)
    x = paper_scale("real", real)
    same_shape("reconstruction", r, "real", x)
    return float(structural_similarity(r, x, data_range=1.0, win_size=ssim_window(r.shape)))


def plane_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """The slices of a (D, H, W) volume in one plane, stacked first.

    axial: (D, H, W); coronal: (H, D, W); sagittal: (W, D, H).
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}")
    if plane == "axial":
        return volume
    if plane == "coronal":
        return np.transpose(volume, (1, 0, 2))
    return np.transpose(volume, (2, 0, 1))


def ssim_plane(reconstruction: Array, real: Array, plane: str) -> float:
    """Mean 2D SSIM over the slices of one plane (axial, coronal or sagittal), ``data_range=1``.

    Range [-1, 1]; 1 for identical volumes.
    """
    r = paper_scale("reconstruction", reconstruction)
    x = paper_scale("real", real)
    same_shape("reconstruction", r, "real", x)
    slices_r, slices_x = plane_slices(r, plane), plane_slices(x, plane)
    window = ssim_window(slices_r.shape[1:])
    values = [
        structural_similarity(a, b, data_range=1.0, win_size=window)
        for a, b in zip(slices_r, slices_x, strict=True)
    ]
    return float(np.mean(values))


# ---------------------------------------------------------------------------------------------
# Diversity and memorisation.


def diversity(samples: Array) -> float:
    """Mean pairwise 1 - SSIM (3D, paper scale [0, 1]) over the K(K-1)/2 pairs of samples.

    Range [0, 2]; 0 when all samples are identical (mode collapse). Higher means more varied
    samples; compare with the real scan's variability, not "as high as possible".
    """
    array = paper_scale("samples", samples, 4)
    if array.shape[0] < 2:
        raise ValueError(f"diversity needs >= 2 samples; got {array.shape[0]}")
    window = ssim_window(array.shape[1:])
    values = [
        1.0 - structural_similarity(a, b, data_range=1.0, win_size=window)
        for a, b in itertools.combinations(array, 2)
    ]
    return float(np.mean(values))


def voxel_sd_hu(samples_hu: Array) -> float:
    """Mean over voxels of the standard deviation across samples, in HU.

    Range [0, 1000] HU; 0 for identical samples. Higher means more varied samples.
    """
    array = as_array("samples_hu", samples_hu, 4)
    if array.shape[0] < 2:
        raise ValueError(f"voxel_sd_hu needs >= 2 samples; got {array.shape[0]}")
    return float(np.mean(np.std(array, axis=0)))


def memorisation(
    samples: Array,
    real: Array,
    reconstruction: Array,
    threshold: float = MEMORISATION_SSIM_THRESHOLD,
) -> dict[str, float]:
    """Each sample's SSIM (3D, paper scale) to the training volume and to its model's reconstruction.

    Returns the mean and max over samples of both (``mean_ssim_to_training``,
    ``max_ssim_to_training``, ``mean_ssim_to_reconstruction``, ``max_ssim_to_reconstruction``) and
    how many samples reach ``threshold`` (0.95): ``copies_of_training``,
    ``copies_of_reconstruction``. SSIM range [-1, 1]; a good generator
    stays clearly below 1 (no copies); counts of 0 are good.
    """
    array = paper_scale("samples", samples, 4)
    x = paper_scale("real", real)
    r = paper_scale("reconstruction", reconstruction)
    same_shape("samples[0]", array[0], "real", x)
    same_shape("reconstruction", r, "real", x)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    window = ssim_window(x.shape)
    to_real = np.array(
        [structural_similarity(s, x, data_range=1.0, win_size=window) for s in array]
    )
    to_rec = np.array([structural_similarity(s, r, data_range=1.0, win_size=window) for s in array])
    return {
        "mean_ssim_to_training": float(to_real.mean()),
        "max_ssim_to_training": float(to_real.max()),
        "mean_ssim_to_reconstruction": float(to_rec.mean()),
        "max_ssim_to_reconstruction": float(to_rec.max()),
        "copies_of_training": float(np.sum(to_real >= threshold)),
        "copies_of_reconstruction": float(np.sum(to_rec >= threshold)),
    }


def reconstruction_metrics(reconstruction: Array, real: Array) -> dict[str, float]:
    """The reconstruction family on two (D, H, W) volumes already on the paper's scale [0, 1]."""
    values = {"mse": mse(reconstruction, real), "psnr": psnr(reconstruction, real)}
    values["ssim"] = ssim_3d(reconstruction, real)
    values.update({f"ssim_{plane}": ssim_plane(reconstruction, real, plane) for plane in PLANES})
    return values
