"""ctgan.similarity: the reconstruction metrics, diversity and memorisation: known values and every error path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_CHEST_SHAPE as SHAPE
from conftest import chest_phantom_hu

from ctgan import similarity
from ctgan.intensity import hu_to_network, network_to_paper

SPACING = (2.0, 1.5, 1.5)


def lung_voxels(shape=SHAPE) -> int:
    return int((chest_phantom_hu(shape) < -400).sum() - (chest_phantom_hu(shape) <= -1000).sum())


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return np.asarray(hu_to_network(chest_phantom_hu()))


def test_identical_volumes_give_mse_0_ssim_1_and_the_documented_psnr_cap(real):
    paper = network_to_paper(real)
    values = similarity.reconstruction_metrics(paper, paper)
    assert values["mse"] == 0.0
    assert values["psnr"] == similarity.PSNR_CAP_DB == pytest.approx(100.0)
    assert math.isfinite(values["psnr"])
    for name in ("ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal"):
        assert values[name] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_gaussian_noise_gives_the_psnr_the_formula_predicts(sigma):
    rng = np.random.default_rng(1)
    clean = np.full((16, 32, 32), 0.5)
    noisy = clean + rng.normal(0, sigma, clean.shape)  # sigma <= 0.1: no value leaves [0, 1]
    assert similarity.mse(noisy, clean) == pytest.approx(sigma**2, rel=0.03)
    assert similarity.psnr(noisy, clean) == pytest.approx(-20 * math.log10(sigma), abs=0.1)


def test_ssim_falls_with_noise_in_3d_and_every_plane(real):
    paper = network_to_paper(real)
    noisy = np.clip(paper + np.random.default_rng(2).normal(0, 0.1, paper.shape), 0, 1)
    values = similarity.reconstruction_metrics(noisy, paper)
    for name in ("ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal"):
        assert 0 < values[name] < 0.9


def test_ssim_window_fits_a_depth_of_3_and_tensors_are_accepted():
    volume = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert similarity.ssim_3d(volume, volume) == pytest.approx(1.0)
    assert similarity.ssim_window((3, 16, 16)) == 3
    assert similarity.ssim_window((10, 63, 63)) == 7
    assert similarity.ssim_window((4, 63, 63)) == 3


def test_ssim_rejects_a_dimension_below_3():
    volume = np.zeros((2, 16, 16))
    with pytest.raises(ValueError, match="SSIM needs every dimension >= 3"):
        similarity.ssim_3d(volume, volume)


def test_reconstruction_metrics_reject_bad_inputs(real):
    paper = network_to_paper(real)
    with pytest.raises(ValueError, match="paper's scale"):
        similarity.mse(real - 0.5, paper)  # network range has negative values
    with pytest.raises(ValueError, match="same shape"):
        similarity.psnr(paper[:-1], paper)
    with pytest.raises(ValueError, match=r"3-D array \(D, H, W\)"):
        similarity.ssim_3d(paper[None], paper[None])
    with pytest.raises(ValueError, match="finite"):
        similarity.mse(np.full(SHAPE, np.nan), paper)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        similarity.mse(paper.tolist(), paper)
    with pytest.raises(ValueError, match="plane must be one of"):
        similarity.ssim_plane(paper, paper, "oblique")


def test_diversity_of_identical_samples_is_0_and_positive_otherwise(real):
    paper = network_to_paper(real)
    assert similarity.diversity(np.stack([paper] * 4)) == pytest.approx(0.0, abs=1e-12)
    others = np.stack([np.roll(paper, shift, axis=2) for shift in (0, 3, 6)])
    assert similarity.diversity(others) > 0.1
    assert similarity.voxel_sd_hu(np.stack([chest_phantom_hu()] * 3)) == pytest.approx(
        0.0, abs=1e-9
    )
    with pytest.raises(ValueError, match="diversity needs >= 2 samples"):
        similarity.diversity(paper[None])
    with pytest.raises(ValueError, match="voxel_sd_hu needs >= 2 samples"):
        similarity.voxel_sd_hu(paper[None])


def test_memorisation_flags_copies_of_the_training_volume(real):
    paper = network_to_paper(real)
    rng = np.random.default_rng(4)
    fresh = [np.clip(paper + rng.normal(0, 0.2, paper.shape), 0, 1) for _ in range(2)]
    samples = np.stack([paper, paper, paper, *fresh])
    values = similarity.memorisation(samples, paper, fresh[0])
    assert values["copies_of_training"] == 3
    assert values["max_ssim_to_training"] == pytest.approx(1.0)
    assert values["copies_of_reconstruction"] == 1
    assert values["mean_ssim_to_training"] < 1
    none = similarity.memorisation(np.stack(fresh), paper, paper)
    assert none["copies_of_training"] == 0 and none["max_ssim_to_training"] < 0.95


def test_memorisation_rejects_a_bad_threshold(real):
    paper = network_to_paper(real)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        similarity.memorisation(np.stack([paper, paper]), paper, paper, threshold=1.5)
