"""ctgan.metrics: the registry, MetricInputs and compute_metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_CHEST_SHAPE as SHAPE
from conftest import chest_phantom_hu

from ctgan import metrics
from ctgan.intensity import hu_to_network

SPACING = (2.0, 1.5, 1.5)


def lung_voxels(shape=SHAPE) -> int:
    return int((chest_phantom_hu(shape) < -400).sum() - (chest_phantom_hu(shape) <= -1000).sum())


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return np.asarray(hu_to_network(chest_phantom_hu()))


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
    assert set(results) == {*metrics.FAMILIES, metrics.PER_SAMPLE}
    flat = {
        f"{f}.{n}": v
        for f, values in results.items()
        if f != "per_sample"
        for n, v in values.items()
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert flat["reconstruction.psnr"] == pytest.approx(100.0)
    assert flat["realism.hu_wasserstein"] == pytest.approx(0.0, abs=1e-9)
    assert flat["realism.lung_fraction_difference"] == 0.0
    assert flat["diversity.diversity"] == pytest.approx(0.0, abs=1e-12)
    assert flat["memorisation.copies_of_training"] == 3
    assert flat["anatomy.chest_like"] == 1.0 and flat["anatomy.chest_like_real"] == 1.0
    assert flat["anatomy.tissue_l1"] == 0.0
    assert flat["anatomy.lung_fraction_of_body"] == flat["anatomy.lung_fraction_of_body_real"]
    # three chest-like copies: enough chest-like samples, but neither diverse nor original
    assert flat["verdict.chest_like_count"] == 3 and flat["verdict.chest_like_of"] == 3
    assert flat["verdict.enough_chest_like"] == 1.0
    assert flat["verdict.diverse"] == 0.0 and flat["verdict.not_copies"] == 0.0
    assert flat["verdict.passes"] == 0.0
    assert results["per_sample"]["chest_like"] == [1.0, 1.0, 1.0]
    assert all(len(values) == 3 for values in results["per_sample"].values())
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


def test_compute_metrics_without_segmenter_runs_all_but_the_frechet_distances(real):
    noisy = np.clip(real + np.random.default_rng(5).normal(0, 0.3, real.shape), -1, 1)
    inputs = metrics.MetricInputs(real, real, np.stack([real, noisy]), SPACING)
    results = metrics.compute_metrics(inputs)
    assert not any(name.startswith("frechet_") for name in results["realism"])
    assert results["per_sample"]["chest_like"] == [1.0, 0.0]
    assert results["verdict"]["chest_like_count"] == 1.0
    assert results["realism"]["hu_wasserstein"] == pytest.approx(
        np.mean(results["per_sample"]["body_hu_wasserstein"])
    )
    assert results["per_sample"]["body_hu_wasserstein"][0] == 0.0


def test_lung_mask_dice_is_opt_in_and_needs_a_segmenter_that_knows_its_crop_size(segmenter, real):
    from ctgan.segmenter import Segmenter, freeze

    torch.manual_seed(0)
    loaded = freeze(Segmenter(base_channels=4, levels=2))
    loaded.crop_size = (4, 16, 16)  # as ctgan.segmenter.load_segmenter sets it from the file
    noisy = np.clip(real + np.random.default_rng(5).normal(0, 0.3, real.shape), -1, 1)
    inputs = metrics.MetricInputs(real, real, np.stack([real, real, noisy]), SPACING, loaded)
    assert "lung_mask_dice" not in metrics.available_metrics(inputs)  # asked for by name only
    results = metrics.compute_metrics(inputs, ["lung_mask_dice"])
    values = results["per_sample"]["lung_mask_dice"]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert values[0] == values[1] == results["realism"]["lung_mask_dice_real"]  # copies of real
    assert results["realism"]["lung_mask_dice"] == pytest.approx(np.mean(values))
    assert results["realism"]["lung_mask_dice_min"] == min(values)
    with pytest.raises(ValueError, match=r"does not know the crop size it was trained on"):
        metrics.compute_metrics(
            metrics.MetricInputs(real, real, inputs.samples, SPACING, segmenter),
            ["lung_mask_dice"],
        )
    with pytest.raises(ValueError, match=r"metric lung_mask_dice needs the frozen segmenter"):
        metrics.compute_metrics(
            metrics.MetricInputs(real, real, inputs.samples, SPACING), ["lung_mask_dice"]
        )
