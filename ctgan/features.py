"""Metrics on the frozen segmenter: per-plane Fréchet distance of slice features, segmenter lungs.

The segmenter of the pipeline (``ctgan.segmenter``, frozen) is the feature extractor: its encoder
features of every slice give a SIFID-style Fréchet distance between the real volume's slices
and the samples' slices, per plane, in a CT-specific feature space (NOT comparable with
Inception-based SIFID/FID numbers, only between runs that use the same segmenter), and its lung
channel gives lung masks. Volumes are in the networks' range [-1, 1], (N, D, H, W) or (D, H, W).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ctgan.similarity import PLANES, Array, as_array, same_shape

# Segmenter lungs: sigmoid(logit of the lung channel) > 0.5.
LUNG_PROBABILITY_THRESHOLD = 0.5
# Slices fed to the segmenter's encoder: in-slice sizes below this are upsampled to it (the
# segmenter pools H and W; a coronal slice of a depth-7 volume is 7 voxels high).
SLICE_MIN_SIZE = 16


class SegmenterLike(Protocol):
    """What the realism metrics need from ``ctgan.segmenter.Segmenter`` (frozen, eval mode)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N,1,D,H,W) in [-1,1] -> (N,2,D,H,W)
        ...

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:  # (M,1,a,b) slices -> (M, C)
        ...


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features_a: Array, features_b: Array) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n, C) and (m, C).

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), computed with
    symmetric eigendecompositions (stable for the rank-deficient covariances of few slices).
    Range [0, inf); 0 for identical distributions. Lower is better.
    """
    a = as_array("features_a", features_a, 2)
    b = as_array("features_b", features_b, 2)
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
    array = as_array("volumes", volumes, 4)
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
    sample_array = as_array("samples", samples, 4)
    real_array = as_array("real", real, 3)
    same_shape("samples[0]", sample_array[0], "real", real_array)
    real_features = slice_features(segmenter, real_array[None], plane, device)
    sample_features = slice_features(segmenter, sample_array, plane, device)
    return frechet_distance(real_features, sample_features)


def lung_masks_segmenter(
    segmenter: SegmenterLike,
    volumes: Array,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Boolean lung masks (N, D, H, W): sigmoid(lung logit) > 0.5 of the frozen segmenter."""
    array = as_array("volumes", volumes, 4)
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
