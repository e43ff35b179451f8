"""Metric functions and their registry: the paper's reconstruction metrics, and what it never measured.

Four families, every metric registered in :data:`METRICS` with its formula, range and good value:

- ``reconstruction``: the paper's numbers. The finest-scale reconstruction ``G(z_rec)`` against the
  real training volume, both on the paper's scale [0, 1] = (HU + 1000) / 2000
  (``ctgan.intensity.network_to_paper``): MSE, PSNR with peak 1, SSIM in 3D and per plane.
- ``realism``: K random samples against the real volume: HU distribution inside the body
  (Wasserstein-1), per-plane Fréchet distance on the frozen segmenter's encoder features, lung
  fraction and lung volume.
- ``diversity``: how different the K samples are from each other.
- ``memorisation``: how close each sample is to the training volume and to its own model's
  reconstruction (a model that copies its one training scan is not a generator).

The pure functions (``mse``, ``psnr``, ``ssim_3d``, ``frechet_distance``, ...) take numpy arrays
(or tensors) and return floats. Each registry entry's ``compute`` takes one :class:`MetricInputs`
(the real volume, the reconstruction, the samples, the voxel spacing and the segmenter) and returns
a float or a flat ``dict[str, float]``; :func:`compute_metrics` runs them all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from skimage.metrics import structural_similarity

from ctgan.intensity import network_to_hu, network_to_paper

FAMILIES = ("reconstruction", "realism", "diversity", "memorisation")
PLANES = ("axial", "coronal", "sagittal")

# PSNR of identical volumes: the MSE is floored at 1e-10, so PSNR is capped at 10 log10(1e10) = 100 dB.
PSNR_MSE_FLOOR = 1e-10
PSNR_CAP_DB = 10.0 * math.log10(1.0 / PSNR_MSE_FLOOR)
# SSIM window: scikit-image's default uniform 7-voxel window, shrunk to the largest odd size that
# fits the smallest dimension (a finest scale of depth 7-10 in the CPU profiles).
SSIM_MAX_WINDOW = 7
# Body: voxels above -500 HU, holes filled slice by slice (axial), largest connected component.
BODY_THRESHOLD_HU = -500.0
# Lungs without a segmenter: voxels inside the body below -400 HU.
LUNG_THRESHOLD_HU = -400.0
# Segmenter lungs: sigmoid(logit of the lung channel) > 0.5.
LUNG_PROBABILITY_THRESHOLD = 0.5
# A sample whose SSIM to the training volume (or to the reconstruction) reaches this is a copy.
MEMORISATION_SSIM_THRESHOLD = 0.95
# Slices fed to the segmenter's encoder: in-slice sizes below this are upsampled to it (the
# segmenter pools H and W; a coronal slice of a depth-7 volume is 7 voxels high).
SLICE_MIN_SIZE = 16
# Tolerance on the [0, 1] range check of the paper scale (float rounding).
_RANGE_TOLERANCE = 1e-5

Array = np.ndarray | torch.Tensor


class SegmenterLike(Protocol):
    """What the realism metrics need from ``ctgan.segmenter.Segmenter`` (frozen, eval mode)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N,1,D,H,W) in [-1,1] -> (N,2,D,H,W)
        ...

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:  # (M,1,a,b) slices -> (M, C)
        ...


# ---------------------------------------------------------------------------------------------
# Input checks.


def _as_array(name: str, x: Array, ndim: int) -> np.ndarray:
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


def _paper_scale(name: str, x: Array, ndim: int = 3) -> np.ndarray:
    array = _as_array(name, x, ndim)
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be on the paper's scale [0, 1]; got values in [{low:.3g}, {high:.3g}]. "
            f"Convert network outputs with ctgan.intensity.network_to_paper"
        )
    return array


def _same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {a.shape} and {b.shape}. "
            f"Compare volumes of the same scale"
        )


def _ssim_window(shape: tuple[int, ...]) -> int:
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
    r = _paper_scale("reconstruction", reconstruction)
    x = _paper_scale("real", real)
    _same_shape("reconstruction", r, "real", x)
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
    r = _paper_scale("reconstruction", reconstruction)
    x = _paper_scale("real", real)
    _same_shape("reconstruction", r, "real", x)
    return float(structural_similarity(r, x, data_range=1.0, win_size=_ssim_window(r.shape)))


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
    r = _paper_scale("reconstruction", reconstruction)
    x = _paper_scale("real", real)
    _same_shape("reconstruction", r, "real", x)
    slices_r, slices_x = plane_slices(r, plane), plane_slices(x, plane)
    window = _ssim_window(slices_r.shape[1:])
    values = [
        structural_similarity(a, b, data_range=1.0, win_size=window)
        for a, b in zip(slices_r, slices_x, strict=True)
    ]
    return float(np.mean(values))


# ---------------------------------------------------------------------------------------------
# Realism: HU distributions, Fréchet distance on segmenter features, lungs.


def body_mask(volume_hu: Array) -> np.ndarray:
    """Boolean body mask of a (D, H, W) HU volume.

    Voxels above BODY_THRESHOLD_HU (-500 HU), holes filled in every axial slice (so the lungs are
    inside), then the largest 3D connected component. Empty when no voxel is above the threshold.
    """
    hu = _as_array("volume_hu", volume_hu, 3)
    above = hu > BODY_THRESHOLD_HU
    filled = np.stack([ndimage.binary_fill_holes(axial) for axial in above])
    labels, count = ndimage.label(filled)
    if count <= 1:
        return filled
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def hu_wasserstein(samples_hu: Array, real_hu: Array) -> float:
    """Mean over samples of the Wasserstein-1 distance (HU) between body voxels of sample and real.

    W1(u, v) = integral |F_u(t) - F_v(t)| dt over the HU axis (``scipy.stats.wasserstein_distance``),
    each volume restricted to its own :func:`body_mask`; a sample without body (all air) uses all
    its voxels. Range [0, 2000] HU; 0 means the same HU distribution. Lower is better.
    """
    samples = _as_array("samples_hu", samples_hu, 4)
    real = _as_array("real_hu", real_hu, 3)
    real_body = body_mask(real)
    if not real_body.any():
        raise ValueError(
            f"real_hu has no body (no voxel above {BODY_THRESHOLD_HU} HU); pass a CT volume in HU "
            f"(ctgan.intensity.network_to_hu), not the network or paper scale"
        )
    real_values = real[real_body]
    distances = []
    for sample in samples:
        body = body_mask(sample)
        values = sample[body] if body.any() else sample.ravel()
        distances.append(stats.wasserstein_distance(real_values, values))
    return float(np.mean(distances))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features_a: Array, features_b: Array) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n, C) and (m, C).

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), computed with
    symmetric eigendecompositions (stable for the rank-deficient covariances of few slices).
    Range [0, inf); 0 for identical distributions. Lower is better.
    """
    a = _as_array("features_a", features_a, 2)
    b = _as_array("features_b", features_b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have the same feature size; got {a.shape[1]} and "
            f"{b.shape[1]}"
        )
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(
            f"each feature set needs >= 2 rows for a covariance; got {a.shape[0]} and {b.shape[0]}"
        )
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = float(
        np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    )
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b))
    return max(distance - 2.0 * trace_sqrt, 0.0)


def plane_slice_batch(volumes: torch.Tensor, plane: str) -> torch.Tensor:
    """Every slice of (N, D, H, W) volumes in one plane as a batch of 2D images (M, 1, a, b).

    M = N x (number of slices in the plane); slices ordered volume by volume. In-slice sizes below
    SLICE_MIN_SIZE are upsampled (bilinear) to it, so that the segmenter's poolings fit.
    """
    if volumes.ndim != 4:
        raise ValueError(f"volumes must be (N, D, H, W); got shape {tuple(volumes.shape)}")
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}")
    axis = {"axial": 1, "coronal": 2, "sagittal": 3}[plane]
    slices = volumes.movedim(axis, 1).flatten(0, 1).unsqueeze(1)  # (M, 1, a, b)
    size = tuple(max(s, SLICE_MIN_SIZE) for s in slices.shape[2:])
    if size == tuple(slices.shape[2:]):
        return slices
    return F.interpolate(slices, size=size, mode="bilinear", align_corners=False)


def slice_features(
    segmenter: SegmenterLike,
    volumes: Array,
    plane: str,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Encoder features (M, C) of every slice of (N, D, H, W) volumes in [-1, 1] in one plane.

    Slices go to ``segmenter.encoder_features`` as (M, 1, a, b) images (the segmenter feeds each
    as a thin slab of copies of itself).
    """
    array = _as_array("volumes", volumes, 4)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    slices = plane_slice_batch(torch.from_numpy(array).float(), plane)
    features = []
    with torch.no_grad():
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size].to(device)
            features.append(segmenter.encoder_features(batch).float().cpu())
    return torch.cat(features).numpy()


def frechet_plane(
    segmenter: SegmenterLike,
    samples: Array,
    real: Array,
    plane: str,
    device: str | torch.device = "cpu",
) -> float:
    """SIFID-style Fréchet distance between the real volume's slices and all samples' slices.

    Features: the frozen segmenter's encoder features (global-average-pooled bottleneck) of each
    slice of the plane (:func:`slice_features`); the real set is the D (or H, W) slices of the real
    volume, the generated set the slices of all K samples pooled. A CT-specific feature space:
    NOT comparable with Inception-based SIFID/FID numbers, only between runs that use the same
    segmenter. Range [0, inf); ~0 for samples identical to the real volume. Lower is better.
    """
    sample_array = _as_array("samples", samples, 4)
    real_array = _as_array("real", real, 3)
    _same_shape("samples[0]", sample_array[0], "real", real_array)
    real_features = slice_features(segmenter, real_array[None], plane, device)
    sample_features = slice_features(segmenter, sample_array, plane, device)
    return frechet_distance(real_features, sample_features)


def lung_masks_threshold(volumes_hu: Array) -> np.ndarray:
    """Boolean lung masks (N, D, H, W) without a segmenter: inside the body and below -400 HU."""
    volumes = _as_array("volumes_hu", volumes_hu, 4)
    return np.stack([body_mask(v) & (v < LUNG_THRESHOLD_HU) for v in volumes])


def lung_masks_segmenter(
    segmenter: SegmenterLike,
    volumes: Array,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Boolean lung masks (N, D, H, W): sigmoid(lung logit) > 0.5 of the frozen segmenter."""
    array = _as_array("volumes", volumes, 4)
    masks = []
    with torch.no_grad():
        for volume in array:
            x = torch.from_numpy(volume).float()[None, None].to(device)
            logits = segmenter(x)
            if logits.ndim != 5 or logits.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"the segmenter must return logits (N, 2, D, H, W) of the input's size "
                    f"{tuple(x.shape[2:])}; got {tuple(logits.shape)}"
                )
            masks.append((torch.sigmoid(logits[0, 0]) > LUNG_PROBABILITY_THRESHOLD).cpu().numpy())
    return np.stack(masks)


def lung_statistics(name: str, sample_values: np.ndarray, real_value: float) -> dict[str, float]:
    """A per-sample lung quantity summarised as ``{name: mean over samples, name_samples_sd,
    name_real: the real volume's value, name_difference: mean - real}``."""
    mean = float(np.mean(sample_values))
    return {
        name: mean,
        f"{name}_samples_sd": float(np.std(sample_values)),
        f"{name}_real": float(real_value),
        f"{name}_difference": mean - float(real_value),
    }


# ---------------------------------------------------------------------------------------------
# Diversity and memorisation.


def diversity(samples: Array) -> float:
    """Mean pairwise 1 - SSIM (3D, paper scale [0, 1]) over the K(K-1)/2 pairs of samples.

    Range [0, 2]; 0 when all samples are identical (mode collapse). Higher means more varied
    samples; compare with the real scan's variability, not "as high as possible".
    """
    array = _paper_scale("samples", samples, 4)
    if array.shape[0] < 2:
        raise ValueError(f"diversity needs >= 2 samples; got {array.shape[0]}")
    window = _ssim_window(array.shape[1:])
    values = [
        1.0 - structural_similarity(a, b, data_range=1.0, win_size=window)
        for a, b in itertools.combinations(array, 2)
    ]
    return float(np.mean(values))


def voxel_sd_hu(samples_hu: Array) -> float:
    """Mean over voxels of the standard deviation across samples, in HU.

    Range [0, 1000] HU; 0 for identical samples. Higher means more varied samples.
    """
    array = _as_array("samples_hu", samples_hu, 4)
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
    array = _paper_scale("samples", samples, 4)
    x = _paper_scale("real", real)
    r = _paper_scale("reconstruction", reconstruction)
    _same_shape("samples[0]", array[0], "real", x)
    _same_shape("reconstruction", r, "real", x)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    window = _ssim_window(x.shape)
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


# ---------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class MetricInputs:
    """Everything the registry's metrics read, for one trained model (one seed).

    ``real`` (D, H, W), ``reconstruction`` (D, H, W) and ``samples`` (K, D, H, W) are in the
    networks' range [-1, 1] (``ctgan.intensity``), numpy or torch (stored as float32 numpy); ``spacing_zyx_mm`` is the finest scale's voxel
    spacing. Without a segmenter the Fréchet metrics cannot be computed and lungs come from HU
    thresholds.
    """

    real: np.ndarray
    reconstruction: np.ndarray
    samples: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    segmenter: SegmenterLike | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        real = _as_array("real", self.real, 3)
        reconstruction = _as_array("reconstruction", self.reconstruction, 3)
        samples = _as_array("samples", self.samples, 4)
        _same_shape("reconstruction", reconstruction, "real", real)
        _same_shape("samples[0]", samples[0], "real", real)
        if samples.shape[0] < 2:
            raise ValueError(f"samples must hold K >= 2 volumes; got {samples.shape[0]}")
        if len(self.spacing_zyx_mm) != 3 or not all(s > 0 for s in self.spacing_zyx_mm):
            raise ValueError(
                f"spacing_zyx_mm must be three positive numbers (z, y, x) in mm; "
                f"got {self.spacing_zyx_mm}"
            )
        # Store float32 numpy whatever came in (tensors included); the instance stays frozen.
        object.__setattr__(self, "real", real.astype(np.float32))
        object.__setattr__(self, "reconstruction", reconstruction.astype(np.float32))
        object.__setattr__(self, "samples", samples.astype(np.float32))
        object.__setattr__(self, "spacing_zyx_mm", tuple(float(v) for v in self.spacing_zyx_mm))

    @property
    def lung_method(self) -> str:
        return "threshold" if self.segmenter is None else "segmenter"

    def paper(self, name: str) -> np.ndarray:
        return np.asarray(network_to_paper(getattr(self, name)), dtype=np.float64)

    def hu(self, name: str) -> np.ndarray:
        return np.asarray(network_to_hu(getattr(self, name)), dtype=np.float64)

    def require_segmenter(self, metric: str) -> SegmenterLike:
        if self.segmenter is None:
            raise ValueError(
                f"metric {metric} needs the frozen segmenter (its encoder features); pass "
                f"segmenter=ctgan.segmenter.load_segmenter(...) to MetricInputs"
            )
        return self.segmenter

    @cached_property
    def lung_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample masks (K, D, H, W), real mask (D, H, W)), both by the same method."""
        volumes = np.concatenate([self.samples, self.real[None]])
        if self.segmenter is None:
            masks = lung_masks_threshold(network_to_hu(volumes))
        else:
            masks = lung_masks_segmenter(self.segmenter, volumes, self.device)
        return masks[:-1], masks[-1]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx_mm)) / 1000.0


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric: its family, what it computes from :class:`MetricInputs`, its doc."""

    name: str
    family: str
    compute: Callable[[MetricInputs], float | dict[str, float]]
    description: str


def _reconstruction(function: Callable[[np.ndarray, np.ndarray], float]):
    return lambda inputs: function(inputs.paper("reconstruction"), inputs.paper("real"))


def _ssim_plane(plane: str):
    return lambda inputs: ssim_plane(inputs.paper("reconstruction"), inputs.paper("real"), plane)


def _frechet(plane: str):
    def compute(inputs: MetricInputs) -> float:
        segmenter = inputs.require_segmenter(f"frechet_{plane}")
        return frechet_plane(segmenter, inputs.samples, inputs.real, plane, inputs.device)

    return compute


def _lung_fraction(inputs: MetricInputs) -> dict[str, float]:
    samples, real = inputs.lung_masks
    return lung_statistics("lung_fraction", samples.mean(axis=(1, 2, 3)), float(real.mean()))


def _lung_volume_ml(inputs: MetricInputs) -> dict[str, float]:
    samples, real = inputs.lung_masks
    per_voxel = inputs.voxel_volume_ml
    volumes = samples.sum(axis=(1, 2, 3)) * per_voxel
    return lung_statistics("lung_volume_ml", volumes, float(real.sum()) * per_voxel)


def _spec(name: str, family: str, compute, documented: Callable, extra: str = "") -> MetricSpec:
    doc = " ".join((documented.__doc__ or "").split())
    return MetricSpec(name, family, compute, f"{doc} {extra}".strip())


_LUNG_NOTE = (
    "Lungs: the segmenter's lung channel (sigmoid > 0.5) on samples and real alike, or without a "
    "segmenter voxels inside the body below -400 HU. Returns the mean over samples under the "
    "metric's name, plus <name>_samples_sd, <name>_real and <name>_difference (mean - real); a "
    "good generator has a difference ~0."
)

METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        "mse": _spec("mse", "reconstruction", _reconstruction(mse), mse),
        "psnr": _spec("psnr", "reconstruction", _reconstruction(psnr), psnr),
        "ssim": _spec("ssim", "reconstruction", _reconstruction(ssim_3d), ssim_3d),
        **{
            f"ssim_{plane}": _spec(
                f"ssim_{plane}",
                "reconstruction",
                _ssim_plane(plane),
                ssim_plane,
                f"Plane: {plane}.",
            )
            for plane in PLANES
        },
        "hu_wasserstein": _spec(
            "hu_wasserstein",
            "realism",
            lambda inputs: hu_wasserstein(inputs.hu("samples"), inputs.hu("real")),
            hu_wasserstein,
        ),
        **{
            f"frechet_{plane}": _spec(
                f"frechet_{plane}", "realism", _frechet(plane), frechet_plane, f"Plane: {plane}."
            )
            for plane in PLANES
        },
        "lung_fraction": _spec(
            "lung_fraction",
            "realism",
            _lung_fraction,
            lung_statistics,
            f"Lung voxels / all voxels, range [0, 1]. {_LUNG_NOTE}",
        ),
        "lung_volume_ml": _spec(
            "lung_volume_ml",
            "realism",
            _lung_volume_ml,
            lung_statistics,
            f"Lung voxels x voxel volume (finest-scale spacing), in ml; range [0, volume of the "
            f"field of view]. {_LUNG_NOTE}",
        ),
        "diversity": _spec(
            "diversity", "diversity", lambda inputs: diversity(inputs.paper("samples")), diversity
        ),
        "voxel_sd_hu": _spec(
            "voxel_sd_hu",
            "diversity",
            lambda inputs: voxel_sd_hu(inputs.hu("samples")),
            voxel_sd_hu,
        ),
        "memorisation": _spec(
            "memorisation",
            "memorisation",
            lambda inputs: memorisation(
                inputs.paper("samples"), inputs.paper("real"), inputs.paper("reconstruction")
            ),
            memorisation,
        ),
    }
)


def compute_metrics(
    inputs: MetricInputs, names: list[str] | tuple[str, ...] | None = None
) -> dict[str, dict[str, float]]:
    """Run registered metrics (all by default) and nest their values by family.

    ``{family: {name: float}}``: the values of dict-valued metrics (lungs, memorisation) are
    merged into their family, e.g. ``{"memorisation": {"max_ssim_to_training": ..., ...}}``.
    """
    names = list(METRICS) if names is None else list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    results: dict[str, dict[str, float]] = {}
    for name in names:
        spec = METRICS[name]
        value = spec.compute(inputs)
        family = results.setdefault(spec.family, {})
        if isinstance(value, dict):
            family.update(value)
        else:
            family[name] = value
    return results


def reconstruction_metrics(reconstruction: Array, real: Array) -> dict[str, float]:
    """The reconstruction family on two (D, H, W) volumes already on the paper's scale [0, 1]."""
    values = {"mse": mse(reconstruction, real), "psnr": psnr(reconstruction, real)}
    values["ssim"] = ssim_3d(reconstruction, real)
    values.update({f"ssim_{plane}": ssim_plane(reconstruction, real, plane) for plane in PLANES})
    return values
