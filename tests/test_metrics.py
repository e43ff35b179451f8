"""ctgan.metrics: known values of every metric family, and every error path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctgan import metrics
from ctgan.intensity import hu_to_network, network_to_paper

SHAPE = (7, 30, 30)  # the smoke profile's finest scale
SPACING = (2.0, 1.5, 1.5)


def chest_phantom_hu(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A tiny chest in HU: air, an elliptic body (40 HU, textured), two lungs (-850 HU)."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth),
        np.linspace(-1, 1, height),
        np.linspace(-1, 1, width),
        indexing="ij",
    )
    volume = np.full(shape, -1000.0)
    body = (y / 0.75) ** 2 + (x / 0.9) ** 2 < 1
    volume[body] = 40.0 + rng.normal(0, 30, body.sum())
    for centre in (-0.4, 0.4):
        lung = ((y + 0.05) / 0.45) ** 2 + ((x - centre) / 0.3) ** 2 + (z / 1.4) ** 2 < 1
        volume[lung] = -850.0 + rng.normal(0, 20, lung.sum())
    return volume


def lung_voxels(shape=SHAPE) -> int:
    return int((chest_phantom_hu(shape) < -400).sum() - (chest_phantom_hu(shape) <= -1000).sum())


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return np.asarray(hu_to_network(chest_phantom_hu()))


# --- reconstruction --------------------------------------------------------------------------


def test_identical_volumes_give_mse_0_ssim_1_and_the_documented_psnr_cap(real):
    paper = network_to_paper(real)
    values = metrics.reconstruction_metrics(paper, paper)
    assert values["mse"] == 0.0
    assert values["psnr"] == metrics.PSNR_CAP_DB == pytest.approx(100.0)
    assert math.isfinite(values["psnr"])
    for name in ("ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal"):
        assert values[name] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_gaussian_noise_gives_the_psnr_the_formula_predicts(sigma):
    rng = np.random.default_rng(1)
    clean = np.full((16, 32, 32), 0.5)
    noisy = clean + rng.normal(0, sigma, clean.shape)  # sigma <= 0.1: no value leaves [0, 1]
    assert metrics.mse(noisy, clean) == pytest.approx(sigma**2, rel=0.03)
    assert metrics.psnr(noisy, clean) == pytest.approx(-20 * math.log10(sigma), abs=0.1)


def test_ssim_falls_with_noise_in_3d_and_every_plane(real):
    paper = network_to_paper(real)
    noisy = np.clip(paper + np.random.default_rng(2).normal(0, 0.1, paper.shape), 0, 1)
    values = metrics.reconstruction_metrics(noisy, paper)
    for name in ("ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal"):
        assert 0 < values[name] < 0.9


def test_ssim_window_fits_a_depth_of_3_and_tensors_are_accepted():
    volume = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert metrics.ssim_3d(volume, volume) == pytest.approx(1.0)
    assert metrics._ssim_window((3, 16, 16)) == 3
    assert metrics._ssim_window((10, 63, 63)) == 7
    assert metrics._ssim_window((4, 63, 63)) == 3


def test_ssim_rejects_a_dimension_below_3():
    volume = np.zeros((2, 16, 16))
    with pytest.raises(ValueError, match="SSIM needs every dimension >= 3"):
        metrics.ssim_3d(volume, volume)


def test_reconstruction_metrics_reject_bad_inputs(real):
    paper = network_to_paper(real)
    with pytest.raises(ValueError, match="paper's scale"):
        metrics.mse(real - 0.5, paper)  # network range has negative values
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(paper[:-1], paper)
    with pytest.raises(ValueError, match=r"3-D array \(D, H, W\)"):
        metrics.ssim_3d(paper[None], paper[None])
    with pytest.raises(ValueError, match="finite"):
        metrics.mse(np.full(SHAPE, np.nan), paper)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        metrics.mse(paper.tolist(), paper)
    with pytest.raises(ValueError, match="plane must be one of"):
        metrics.ssim_plane(paper, paper, "oblique")


# --- realism ---------------------------------------------------------------------------------


def test_body_mask_holds_the_lungs_and_drops_specks():
    hu = chest_phantom_hu()
    hu[0, 0, 0] = 500.0  # a bright speck in the air
    body = metrics.body_mask(hu)
    assert not body[0, 0, 0]
    lungs = (hu < -400) & (hu > -1000)
    assert lungs.sum() == lung_voxels() and body[lungs].all()  # lungs are inside the filled body
    assert not body[hu == -1000].any()


def test_hu_wasserstein_is_0_for_the_real_volume_and_the_shift_for_a_shifted_one():
    hu = chest_phantom_hu()
    assert metrics.hu_wasserstein(np.stack([hu, hu]), hu) == pytest.approx(0.0, abs=1e-9)
    # +100 HU everywhere: air stays below -500 HU, so the body is unchanged and W1 = 100 HU.
    assert metrics.hu_wasserstein(np.stack([hu + 100, hu + 100]), hu) == pytest.approx(100.0)


def test_hu_wasserstein_uses_all_voxels_of_a_sample_without_body():
    hu = chest_phantom_hu()
    air = np.full((1, *SHAPE), -1000.0)
    distance = metrics.hu_wasserstein(air, hu)
    assert math.isfinite(distance) and distance > 500


def test_hu_wasserstein_rejects_a_real_volume_without_body():
    with pytest.raises(ValueError, match="has no body"):
        metrics.hu_wasserstein(np.zeros((2, *SHAPE)), np.full(SHAPE, -1000.0))


def test_frechet_distance_of_gaussians_with_equal_covariance_is_the_squared_mean_offset():
    features = np.random.default_rng(3).normal(size=(500, 3))
    offset = np.array([2.0, 0.0, 0.0])
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    assert metrics.frechet_distance(features, features + offset) == pytest.approx(4.0, rel=1e-6)


def test_frechet_distance_rejects_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="same feature size"):
        metrics.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=">= 2 rows"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("plane", metrics.PLANES)
def test_frechet_plane_is_0_for_copies_and_larger_for_a_shifted_copy(segmenter, real, plane):
    copies = np.stack([real, real])
    shifted = np.stack([np.roll(real, (3, 4), axis=(1, 2))] * 2)  # in-plane for every plane
    same = metrics.frechet_plane(segmenter, copies, real, plane)
    moved = metrics.frechet_plane(segmenter, shifted, real, plane)
    assert same < 1e-6
    assert moved > 100 * max(same, 1e-9)


def test_plane_slice_batch_shapes_and_upsampling():
    volumes = torch.zeros((2, *SHAPE))
    assert metrics.plane_slice_batch(volumes, "axial").shape == (14, 1, 30, 30)
    assert metrics.plane_slice_batch(volumes, "coronal").shape == (60, 1, 16, 30)  # 7 -> 16
    assert metrics.plane_slice_batch(volumes, "sagittal").shape == (60, 1, 16, 30)
    with pytest.raises(ValueError, match=r"volumes must be \(N, D, H, W\)"):
        metrics.plane_slice_batch(volumes[0], "axial")
    with pytest.raises(ValueError, match="plane must be one of"):
        metrics.plane_slice_batch(volumes, "oblique")


def test_slice_features_are_one_row_per_slice(segmenter, real):
    features = metrics.slice_features(segmenter, np.stack([real] * 3), "axial", batch_size=4)
    assert features.shape == (3 * SHAPE[0], segmenter.feature_channels)
    assert np.isfinite(features).all()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        metrics.slice_features(segmenter, real[None], "axial", batch_size=0)


def test_threshold_lung_masks_find_the_phantom_lungs():
    masks = metrics.lung_masks_threshold(chest_phantom_hu()[None])
    assert masks.shape == (1, *SHAPE)
    assert masks.sum() == lung_voxels()


def test_segmenter_lung_masks_have_the_input_shape(segmenter, real):
    masks = metrics.lung_masks_segmenter(segmenter, np.stack([real, real]))
    assert masks.shape == (2, *SHAPE) and masks.dtype == bool


def test_segmenter_lung_masks_reject_wrong_logits(real):
    def shrinking(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 2, 2, 2, 2))

    with pytest.raises(ValueError, match=r"logits \(N, 2, D, H, W\) of the input's size"):
        metrics.lung_masks_segmenter(shrinking, real[None])  # type: ignore[arg-type]


# --- diversity and memorisation --------------------------------------------------------------


def test_diversity_of_identical_samples_is_0_and_positive_otherwise(real):
    paper = network_to_paper(real)
    assert metrics.diversity(np.stack([paper] * 4)) == pytest.approx(0.0, abs=1e-12)
    others = np.stack([np.roll(paper, shift, axis=2) for shift in (0, 3, 6)])
    assert metrics.diversity(others) > 0.1
    assert metrics.voxel_sd_hu(np.stack([chest_phantom_hu()] * 3)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="diversity needs >= 2 samples"):
        metrics.diversity(paper[None])
    with pytest.raises(ValueError, match="voxel_sd_hu needs >= 2 samples"):
        metrics.voxel_sd_hu(paper[None])


def test_memorisation_flags_copies_of_the_training_volume(real):
    paper = network_to_paper(real)
    rng = np.random.default_rng(4)
    fresh = [np.clip(paper + rng.normal(0, 0.2, paper.shape), 0, 1) for _ in range(2)]
    samples = np.stack([paper, paper, paper, *fresh])
    values = metrics.memorisation(samples, paper, fresh[0])
    assert values["copies_of_training"] == 3
    assert values["max_ssim_to_training"] == pytest.approx(1.0)
    assert values["copies_of_reconstruction"] == 1
    assert values["mean_ssim_to_training"] < 1
    none = metrics.memorisation(np.stack(fresh), paper, paper)
    assert none["copies_of_training"] == 0 and none["max_ssim_to_training"] < 0.95


def test_memorisation_rejects_a_bad_threshold(real):
    paper = network_to_paper(real)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        metrics.memorisation(np.stack([paper, paper]), paper, paper, threshold=1.5)


# --- registry --------------------------------------------------------------------------------


def test_registry_documents_every_metric_in_a_known_family():
    assert {spec.family for spec in metrics.METRICS.values()} == set(metrics.FAMILIES)
    for name, spec in metrics.METRICS.items():
        assert spec.name == name
        assert "range" in spec.description.lower(), name
    with pytest.raises(TypeError):
        metrics.METRICS["new"] = metrics.METRICS["mse"]  # type: ignore[index]


def test_compute_metrics_on_copies_of_the_real_volume(segmenter, real):
    inputs = metrics.MetricInputs(real, real, np.stack([real] * 3), SPACING, segmenter)
    results = metrics.compute_metrics(inputs)
    assert set(results) == set(metrics.FAMILIES)
    flat = {f"{f}.{n}": v for f, values in results.items() for n, v in values.items()}
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert flat["reconstruction.psnr"] == pytest.approx(100.0)
    assert flat["realism.hu_wasserstein"] == pytest.approx(0.0, abs=1e-9)
    assert flat["realism.lung_fraction_difference"] == 0.0
    assert flat["diversity.diversity"] == pytest.approx(0.0, abs=1e-12)
    assert flat["memorisation.copies_of_training"] == 3
    for plane in metrics.PLANES:
        assert flat[f"realism.frechet_{plane}"] < 1e-6


def test_threshold_lungs_give_the_phantom_lung_volume(real):
    inputs = metrics.MetricInputs(real, real, np.stack([real] * 2), SPACING)
    results = metrics.compute_metrics(inputs, ["lung_fraction", "lung_volume_ml"])
    expected_ml = lung_voxels() * np.prod(SPACING) / 1000
    assert results["realism"]["lung_volume_ml"] == pytest.approx(expected_ml)
    assert results["realism"]["lung_volume_ml_real"] == pytest.approx(expected_ml)
    assert results["realism"]["lung_fraction"] == pytest.approx(lung_voxels() / np.prod(SHAPE))


def test_compute_metrics_and_inputs_reject_bad_requests(real):
    inputs = metrics.MetricInputs(real, real, np.stack([real] * 2), SPACING)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute_metrics(inputs, ["fid"])
    with pytest.raises(ValueError, match="needs the frozen segmenter"):
        metrics.compute_metrics(inputs, ["frechet_axial"])
    with pytest.raises(ValueError, match="same shape"):
        metrics.MetricInputs(real, real[:-1], np.stack([real] * 2), SPACING)
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.MetricInputs(real, real, real[None], SPACING)
    with pytest.raises(ValueError, match="spacing_zyx_mm must be three positive"):
        metrics.MetricInputs(real, real, np.stack([real] * 2), (1.0, 0.0, 1.0))


def test_metric_inputs_accept_tensors_and_store_float32_arrays(real):
    tensor = torch.from_numpy(real)
    inputs = metrics.MetricInputs(tensor, tensor, torch.stack([tensor, tensor]), (2, 1, 1))
    assert isinstance(inputs.samples, np.ndarray) and inputs.samples.dtype == np.float32
    assert inputs.spacing_zyx_mm == (2.0, 1.0, 1.0)
    assert metrics.compute_metrics(inputs, ["psnr"])["reconstruction"]["psnr"] == pytest.approx(
        100.0
    )
