"""ctgan.features: Fréchet distance on segmenter features and segmenter lung masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CHEST_SHAPE as SHAPE
from conftest import chest_phantom_hu

from ctgan import features
from ctgan.intensity import hu_to_network

SPACING = (2.0, 1.5, 1.5)


def lung_voxels(shape=SHAPE) -> int:
    return int((chest_phantom_hu(shape) < -400).sum() - (chest_phantom_hu(shape) <= -1000).sum())


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return np.asarray(hu_to_network(chest_phantom_hu()))


def test_frechet_distance_of_gaussians_with_equal_covariance_is_the_squared_mean_offset():
    rows = np.random.default_rng(3).normal(size=(500, 3))
    offset = np.array([2.0, 0.0, 0.0])
    assert features.frechet_distance(rows, rows) == pytest.approx(0.0, abs=1e-8)
    assert features.frechet_distance(rows, rows + offset) == pytest.approx(4.0, rel=1e-6)


def test_frechet_distance_rejects_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="same feature size"):
        features.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=">= 2 rows"):
        features.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("plane", features.PLANES)
def test_frechet_plane_is_0_for_copies_and_larger_for_a_shifted_copy(segmenter, real, plane):
    copies = np.stack([real, real])
    shifted = np.stack([np.roll(real, (3, 4), axis=(1, 2))] * 2)  # in-plane for every plane
    same = features.frechet_plane(segmenter, copies, real, plane)
    moved = features.frechet_plane(segmenter, shifted, real, plane)
    assert same < 1e-6
    assert moved > 100 * max(same, 1e-9)


def test_plane_slice_batch_shapes_and_upsampling():
    volumes = torch.zeros((2, *SHAPE))
    assert features.plane_slice_batch(volumes, "axial").shape == (14, 1, 30, 30)
    assert features.plane_slice_batch(volumes, "coronal").shape == (60, 1, 16, 30)  # 7 -> 16
    assert features.plane_slice_batch(volumes, "sagittal").shape == (60, 1, 16, 30)
    with pytest.raises(ValueError, match=r"volumes must be \(N, D, H, W\)"):
        features.plane_slice_batch(volumes[0], "axial")
    with pytest.raises(ValueError, match="plane must be one of"):
        features.plane_slice_batch(volumes, "oblique")


def test_slice_features_are_one_row_per_slice(segmenter, real):
    values = features.slice_features(segmenter, np.stack([real] * 3), "axial", batch_size=4)
    assert values.shape == (3 * SHAPE[0], segmenter.feature_channels)
    assert np.isfinite(values).all()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        features.slice_features(segmenter, real[None], "axial", batch_size=0)


def test_segmenter_lung_masks_have_the_input_shape(segmenter, real):
    masks = features.lung_masks_segmenter(segmenter, np.stack([real, real]))
    assert masks.shape == (2, *SHAPE) and masks.dtype == bool


def test_segmenter_lung_masks_reject_wrong_logits(real):
    def shrinking(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 2, 2, 2, 2))

    with pytest.raises(ValueError, match=r"logits \(N, 2, D, H, W\) of the input's size"):
        features.lung_masks_segmenter(shrinking, real[None])  # type: ignore[arg-type]
