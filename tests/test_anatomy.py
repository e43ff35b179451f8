"""ctgan.anatomy: body, lungs, tissue classes, the chest-like verdict; synthetic and real chests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY_CHEST_SHAPE as SHAPE
from conftest import chest_phantom_hu, synthetic_chest_hu
from scipy import ndimage

from ctgan import anatomy


def lung_voxels(shape=SHAPE) -> int:
    return int((chest_phantom_hu(shape) < -400).sum() - (chest_phantom_hu(shape) <= -1000).sum())


def anatomy_of(lung_fraction: float, left: float = 0.1, right: float = 0.1, **tissue: float):
    fractions = dict.fromkeys(anatomy.TISSUE_NAMES, 0.0) | {"soft_tissue": 1.0} | tissue
    return anatomy.Anatomy(0.4, lung_fraction, left, right, fractions, np.zeros(10))


# --- body and lungs --------------------------------------------------------------------------


def test_body_mask_holds_the_lungs_and_drops_specks():
    hu = chest_phantom_hu()
    hu[0, 0, 0] = 500.0  # a bright speck in the air
    body = anatomy.body_mask(hu)
    assert not body[0, 0, 0]
    lungs = (hu < -400) & (hu > -1000)
    assert lungs.sum() == lung_voxels() and body[lungs].all()  # lungs are inside the filled body
    assert not body[hu == -1000].any()
    assert not anatomy.body_mask(np.full(SHAPE, -1000.0)).any()


def test_lung_mask_finds_the_phantom_lungs():
    hu = chest_phantom_hu()
    assert anatomy.lung_mask(hu).sum() == lung_voxels()


def test_lungs_are_only_enclosed_air_not_connected_to_the_outside():
    hu = synthetic_chest_hu()
    depth, height, width = hu.shape
    lungs = anatomy.lung_mask(hu)
    # Open the left lung to the outside air in one slice: a channel through the chest wall.
    z = depth // 2
    rows = np.nonzero(lungs[z, :, : width // 2].any(axis=1))[0]
    row = int(rows[len(rows) // 2])  # the middle row of the left lung in that slice
    opened = hu.copy()
    left = int(np.nonzero(lungs[z, row])[0].min())
    opened[z, row, :left] = -1000.0
    leaked = anatomy.lung_mask(opened)
    # The whole left lung (3D) now touches the outside air and is no lung; the right one stays.
    assert leaked[:, :, : width // 2].sum() == 0
    assert leaked[:, :, width // 2 :].sum() == lungs[:, :, width // 2 :].sum()
    # A dark region outside any body is not a lung.
    assert not anatomy.lung_mask(np.full(hu.shape, -1000.0)).any()
    with pytest.raises(ValueError, match="body must have the volume's shape"):
        anatomy.lung_mask(hu, body=np.ones((2, 2, 2), dtype=bool))


def test_lung_sides_split_the_body_at_its_centre_of_mass():
    hu = synthetic_chest_hu()
    body = anatomy.body_mask(hu)
    left, right = anatomy.lung_side_fractions(anatomy.lung_mask(hu, body), body)
    lung = anatomy.lung_mask(hu, body)
    assert left + right == pytest.approx(lung.sum() / body.sum())
    assert left == pytest.approx(right, rel=0.1)
    assert anatomy.lung_side_fractions(np.zeros_like(body), np.zeros_like(body)) == (0.0, 0.0)


# --- tissue classes --------------------------------------------------------------------------


def test_tissue_classes_are_half_open_and_cover_every_body_voxel():
    values = [-1000, -401, -400, -201, -200, -51, -50, 0, 149, 150, 299, 300, 1000]
    hu = np.array(values, dtype=float).reshape(1, 1, -1)
    fractions = anatomy.tissue_fractions(hu, np.ones(hu.shape, dtype=bool))
    n = len(values)
    assert fractions == pytest.approx(
        {
            "air_lung": 2 / n,  # -1000, -401
            "transition": 2 / n,  # -400, -201
            "fat": 2 / n,  # -200, -51
            "soft_tissue": 3 / n,  # -50, 0, 149
            "dense": 2 / n,  # 150, 299
            "bone": 2 / n,  # 300, 1000
        }
    )
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert anatomy.tissue_fractions(hu, np.zeros(hu.shape, dtype=bool)) == dict.fromkeys(
        anatomy.TISSUE_NAMES, 0.0
    )
    other = dict(fractions, air_lung=fractions["air_lung"] + 0.1, bone=fractions["bone"] - 0.1)
    assert anatomy.tissue_l1(other, fractions) == pytest.approx(0.2)


# --- HU distance -----------------------------------------------------------------------------


def test_hu_wasserstein_is_0_for_the_real_volume_and_the_shift_for_a_shifted_one():
    hu = chest_phantom_hu()
    assert anatomy.hu_wasserstein(np.stack([hu, hu]), hu) == pytest.approx(0.0, abs=1e-9)
    # +100 HU everywhere: air stays below -500 HU, so the body is unchanged and W1 = 100 HU.
    assert anatomy.hu_wasserstein(np.stack([hu + 100, hu + 100]), hu) == pytest.approx(100.0)


def test_hu_wasserstein_uses_all_voxels_of_a_sample_without_body():
    hu = chest_phantom_hu()
    air = np.full((1, *SHAPE), -1000.0)
    distance = anatomy.hu_wasserstein(air, hu)
    assert math.isfinite(distance) and distance > 500


def test_hu_wasserstein_rejects_a_real_volume_without_body():
    with pytest.raises(ValueError, match="has no body"):
        anatomy.hu_wasserstein(np.zeros((2, *SHAPE)), np.full(SHAPE, -1000.0))


# --- the chest-like verdict ------------------------------------------------------------------


def test_a_synthetic_chest_is_chest_like_a_blob_and_a_one_lung_chest_are_not():
    real = synthetic_chest_hu(seed=0)
    other_texture = synthetic_chest_hu(seed=1)
    one_lung = synthetic_chest_hu(seed=2, lungs=(-0.42,))
    rng = np.random.default_rng(3)
    blob = np.clip(ndimage.gaussian_filter(rng.normal(-300, 900, real.shape), 2) * 4, -1000, 1000)
    comparison = anatomy.compare_anatomy(np.stack([other_texture, one_lung, blob]), real)
    values = comparison.per_sample
    assert list(comparison.chest_like) == [True, False, False]
    assert values["lungs_both_sides"] == [1.0, 0.0, 0.0]
    assert values["lung_fraction_ok"][1] == 0.0  # one lung is half the lung fraction
    assert values["tissue_ok"][2] == 0.0 and values["body_w1_ok"][2] == 0.0
    assert comparison.real["chest_like"] == 1.0
    assert comparison.real["tissue_l1"] == 0.0 and comparison.real["body_hu_wasserstein"] == 0.0
    real_anatomy = anatomy.measure_anatomy(real)
    assert 0.1 < real_anatomy.lung_fraction_of_body < 0.3
    assert real_anatomy.tissue["fat"] > 0.1 and real_anatomy.tissue["bone"] > 0.005
    summary = comparison.summary()
    assert summary["chest_like"] == pytest.approx(1 / 3) and summary["chest_like_real"] == 1.0
    assert summary["lung_fraction_of_body_real"] == real_anatomy.lung_fraction_of_body
    assert list(anatomy.chest_like_flags(real, np.stack([real, blob]))) == [True, False]


def test_each_criterion_has_its_stated_threshold():
    real = anatomy_of(0.10)
    real = anatomy.Anatomy(0.4, 0.10, 0.05, 0.05, real.tissue, np.array([0.0, 10.0]))

    def checks(sample_fraction, left=0.05, right=0.05, shift=0.0, **tissue):
        sample = anatomy_of(sample_fraction, left, right, **tissue)
        sample = anatomy.Anatomy(
            0.4, sample_fraction, left, right, sample.tissue, real.values + shift
        )
        return anatomy.sample_checks(sample, real)

    assert checks(0.129)["lung_fraction_ok"] == 1.0 and checks(0.071)["lung_fraction_ok"] == 1.0
    assert checks(0.131)["lung_fraction_ok"] == 0.0 and checks(0.069)["lung_fraction_ok"] == 0.0
    assert checks(0.1, left=0.019)["lungs_both_sides"] == 0.0
    assert checks(0.1, left=0.02, right=0.02)["lungs_both_sides"] == 1.0
    assert checks(0.1, soft_tissue=0.925, fat=0.075)["tissue_ok"] == 1.0  # L1 0.15
    assert checks(0.1, soft_tissue=0.92, fat=0.08)["tissue_ok"] == 0.0  # L1 0.16
    assert checks(0.1, shift=50.0)["body_w1_ok"] == 1.0
    assert checks(0.1, shift=50.5)["body_w1_ok"] == 0.0
    assert checks(0.1)["chest_like"] == 1.0 and checks(0.1, shift=60.0)["chest_like"] == 0.0


def test_model_verdict_counts_chest_like_samples_and_checks_diversity_and_copies():
    flags = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    verdict = anatomy.model_verdict(flags, diversity=0.25, max_ssim_to_training=0.5)
    assert verdict == {
        "chest_like_count": 6.0,
        "chest_like_of": 8.0,
        "enough_chest_like": 1.0,
        "diverse": 1.0,
        "not_copies": 1.0,
        "passes": 1.0,
    }
    assert anatomy.model_verdict(flags[1:], 0.25, 0.5)["enough_chest_like"] == 0.0  # 5 of 7
    assert anatomy.model_verdict(flags, 0.19, 0.5)["passes"] == 0.0
    assert anatomy.model_verdict(flags, 0.25, 0.9)["not_copies"] == 0.0
    with pytest.raises(ValueError, match="non-empty 1-D array of flags"):
        anatomy.model_verdict(np.array([], dtype=bool), 0.25, 0.5)


def test_compare_anatomy_rejects_bad_inputs():
    real = synthetic_chest_hu()
    with pytest.raises(ValueError, match=r"samples_hu must be \(K, D, H, W\) with"):
        anatomy.compare_anatomy(real[None, :-1], real)
    with pytest.raises(ValueError, match="real_hu has no body"):
        anatomy.compare_anatomy(real[None], np.full(real.shape, -1000.0))
    with pytest.raises(ValueError, match=r"4-D array \(K, D, H, W\)"):
        anatomy.compare_anatomy(real, real)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        anatomy.measure_anatomy(real.tolist())


# --- real data: the training volume must be chest-like against itself --------------------------


def real_finest_hu(root, profile: str) -> np.ndarray:
    from pathlib import Path

    from ctgan.config import load_config
    from ctgan.intensity import network_to_hu
    from ctgan.luna16 import Luna16Folder
    from ctgan.preprocess import preprocess_scan

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    pyramid = preprocess_scan(
        Luna16Folder(root), None, load_config(params, profile=profile).pyramid
    )
    return network_to_hu(pyramid.volumes[-1])


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_phantom_training_volume_is_chest_like_against_itself(tiny_phantom, profile):
    hu = real_finest_hu(tiny_phantom, profile)
    comparison = anatomy.compare_anatomy(hu[None], hu)
    assert comparison.real["chest_like"] == 1.0, comparison.real
    assert 0.1 < comparison.real["lung_fraction_of_body"] < 0.3


@pytest.mark.slow
def test_the_real_scan_training_volume_is_chest_like_against_itself(real_sample_dir):
    hu = real_finest_hu(real_sample_dir / "luna16-sample", "cpu")
    comparison = anatomy.compare_anatomy(hu[None], hu)
    assert comparison.real["chest_like"] == 1.0, comparison.real
    # measured: lung fraction of the body 0.179, left 0.093, right 0.080 (cpu profile, 10x63x63)
    assert comparison.real["lung_fraction_of_body"] == pytest.approx(0.179, abs=0.01)
