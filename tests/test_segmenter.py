"""The frozen segmenter: shapes, frozen-ness, save/load, bad inputs, training, real-scan agreement."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ctgan.config import SegmenterConfig, load_config
from ctgan.segmenter import (
    Segmenter,
    freeze,
    largest_lung_components,
    load_segmenter,
    predict_volume,
    prediction_figure,
    read_segmenter_file,
    save_segmenter,
)
from ctgan.segmenter_data import load_segmenter_data
from ctgan.segmenter_train import dice_score, train_segmenter

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL_REAL_SCAN = SHARED_DATA / "lidc-idri-0001-small" / "LIDC-IDRI-0001_128x128x133.mhd"
TINY_CFG = SegmenterConfig(crop_size=(8, 16, 16), base_channels=4, iterations=1, batch_size=2)


def tiny_segmenter(seed: int = 0, base_channels: int = 4) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter(in_channels=1, out_channels=2, base_channels=base_channels, levels=3)


def tiny_chest(seed: int, shape: tuple[int, int, int] = (12, 32, 32)):
    """A body (0.05) in air (-1), two dark lungs (-0.85) and a bright nodule in one lung."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 <= 1
    centre = rng.uniform(0.35, 0.45)
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lungs |= ((y / 0.5) ** 2 + ((x - side * centre) / 0.3) ** 2 + (z / 1.2) ** 2) <= 1
    nodule = ((y - 0.1) ** 2 + (x - centre) ** 2 + z**2 / 4) <= 0.12**2
    volume = np.where(body, 0.05, -1.0)
    volume = np.where(lungs, -0.85, volume)
    volume = np.where(nodule, 0.03, volume) + rng.normal(0, 0.02, shape)
    return volume.astype(np.float32), lungs.astype(np.float32), nodule.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The network.


def test_forward_gives_two_logit_channels_of_the_input_shape():
    model = tiny_segmenter()
    for shape in ((2, 1, 8, 16, 16), (1, 1, 5, 18, 21)):
        logits = model(torch.rand(shape) * 2 - 1)
        assert logits.shape == (shape[0], 2, *shape[2:])
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


def test_same_seed_same_network_and_output():
    x = torch.rand(1, 1, 8, 16, 16)
    assert torch.equal(tiny_segmenter(3)(x), tiny_segmenter(3)(x))
    assert not torch.equal(tiny_segmenter(3)(x), tiny_segmenter(4)(x))


def test_encoder_features_for_volumes_and_slices():
    model = tiny_segmenter()
    volumes = torch.rand(3, 1, 8, 16, 16)
    features = model.encoder_features(volumes)
    assert features.shape == (3, model.feature_channels) == (3, 16)
    slices = torch.rand(5, 1, 16, 16)
    slice_features = model.encoder_features(slices)
    assert slice_features.shape == (5, 16)
    # A slice is the thin volume made of 3 copies of itself.
    slab = slices.unsqueeze(2).expand(-1, -1, 3, -1, -1)
    assert torch.allclose(slice_features, model.encoder_features(slab))
    assert not torch.allclose(slice_features[0], slice_features[1])


def test_output_does_not_depend_on_train_or_eval_mode():
    model = tiny_segmenter()
    x = torch.rand(2, 1, 8, 16, 16)
    with torch.no_grad():
        train_output = model.train()(x)
        eval_output = model.eval()(x)
    assert torch.equal(train_output, eval_output)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 8, 16, 16), r"must be \(N, 1, D, H, W\); got shape \(1, 8, 16, 16\)"),
        ((1, 2, 8, 16, 16), r"must be \(N, 1, D, H, W\); got shape \(1, 2, 8, 16, 16\)"),
        ((1, 1, 8, 4, 16), r"\(8, 4, 16\) is smaller than the network's minimum \(1, 8, 8\)"),
    ],
)
def test_bad_input_shapes_are_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_segmenter()(torch.zeros(shape))


def test_slices_smaller_than_the_field_are_rejected():
    with pytest.raises(ValueError, match=r"smaller than the network's minimum"):
        tiny_segmenter().encoder_features(torch.zeros(2, 1, 4, 4))


def test_non_tensor_input_is_rejected():
    with pytest.raises(TypeError, match=r"must be a torch.Tensor; got ndarray"):
        tiny_segmenter()(np.zeros((1, 1, 8, 16, 16), dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_channels": 0}, r"base_channels must be an integer >= 1; got 0"),
        ({"in_channels": 1.5}, r"in_channels must be an integer >= 1; got 1.5"),
        ({"levels": 1}, r"levels must be an integer >= 2; got 1"),
    ],
)
def test_bad_architecture_ints_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Segmenter(**kwargs)


# ---------------------------------------------------------------------------------------------
# Frozen: gradient reaches the generator, the segmenter never changes.


def test_frozen_segmenter_passes_gradient_but_never_changes(tmp_path):
    from ctgan.losses import segmentation_loss

    save_segmenter(tiny_segmenter(), tmp_path / "segmenter.pt", TINY_CFG)
    segmenter = load_segmenter(tmp_path / "segmenter.pt")
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    assert not segmenter.training
    assert not any(p.requires_grad for p in segmenter.parameters())

    torch.manual_seed(1)
    generator = torch.nn.Conv3d(1, 1, kernel_size=3, padding=1)
    optimizer = torch.optim.Adam(generator.parameters(), lr=0.1)
    generator_before = generator.weight.detach().clone()
    noise, real = torch.randn(1, 1, 10, 32, 32), torch.rand(1, 1, 10, 32, 32) * 2 - 1
    loss = segmentation_loss(
        torch.tanh(generator(noise)), real, segmenter, TINY_CFG.crop_size, torch.Generator()
    )
    loss.backward()
    assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(generator.weight, generator_before)
    for name, value in segmenter.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in segmenter.parameters())


def test_backward_into_an_input_leaves_the_weights_bitwise_unchanged():
    segmenter = freeze(tiny_segmenter())
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    x = torch.rand(1, 1, 8, 16, 16, requires_grad=True)
    torch.sigmoid(segmenter(x)).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in segmenter.parameters())
    assert all(torch.equal(v, before[k]) for k, v in segmenter.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Saving and loading.


def test_save_load_round_trip(tmp_path):
    model = tiny_segmenter(base_channels=3)
    path = save_segmenter(model, tmp_path / "out" / "segmenter.pt", TINY_CFG, {"dice_lungs": 0.9})
    loaded = load_segmenter(path)
    x = torch.rand(2, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.architecture == {
        "in_channels": 1,
        "out_channels": 2,
        "base_channels": 3,
        "levels": 3,
    }
    payload = read_segmenter_file(path)
    assert payload["metrics"] == {"dice_lungs": 0.9}
    assert payload["config"]["crop_size"] == [8, 16, 16]
    assert sorted(p.name for p in path.parent.iterdir()) == ["segmenter.pt"]  # no temporary left


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"segmenter weights .*absent.pt not found; run"):
        load_segmenter(tmp_path / "absent.pt")


def test_load_truncated_file(tmp_path):
    path = save_segmenter(tiny_segmenter(), tmp_path / "segmenter.pt", TINY_CFG)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot be read \(truncated or not a torch file"):
        load_segmenter(path)


def test_load_weights_of_another_architecture(tmp_path):
    path = save_segmenter(tiny_segmenter(), tmp_path / "segmenter.pt", TINY_CFG)
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["base_channels"] = 8
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"do not fit the architecture it declares"):
        load_segmenter(path)


def test_load_a_file_that_is_not_a_segmenter(tmp_path):
    path = tmp_path / "generator.pt"
    torch.save(torch.nn.Conv3d(1, 1, 3).state_dict(), path)
    with pytest.raises(ValueError, match=r"is not a ctgan segmenter file"):
        load_segmenter(path)


def test_load_another_format_version(tmp_path):
    path = save_segmenter(tiny_segmenter(), tmp_path / "segmenter.pt", TINY_CFG)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"has format_version 99; this code reads version 1"):
        load_segmenter(path)


# ---------------------------------------------------------------------------------------------
# Dice, training, whole volumes.


def test_dice_score():
    a = np.zeros((4, 4, 4))
    a[:2] = 1
    b = np.zeros((4, 4, 4))
    b[1:3] = 1
    assert dice_score(a, a) == 1.0
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, 1 - a) == 0.0
    assert dice_score(np.zeros(3), np.zeros(3)) is None  # undefined: see test_reliability_scans
    with pytest.raises(ValueError, match=r"same shape; got \(3,\) and \(4,\)"):
        dice_score(np.zeros(3), np.zeros(4))


def test_training_on_a_tiny_set_improves_dice():
    chests = [tiny_chest(seed) for seed in range(3)]
    train = [[c[i] for c in chests[:2]] for i in range(3)]
    val = [[chests[2][i]] for i in range(3)]
    cfg = SegmenterConfig(
        crop_size=(6, 12, 12), base_channels=4, iterations=30, batch_size=3, lr=0.01
    )
    kwargs = {"seed": 0, "levels": 2, "validation_crops": 16, "progress": False}
    _, _, untrained = train_segmenter(
        *train, *val, dataclasses.replace(cfg, iterations=1), **kwargs
    )
    model, history, trained = train_segmenter(*train, *val, cfg, **kwargs)
    assert len(history) == 30
    assert np.mean([h["loss"] for h in history[-10:]]) < np.mean([h["loss"] for h in history[:10]])
    assert trained["dice_lungs"] > untrained["dice_lungs"] + 0.1
    assert trained["dice_lungs"] > 0.7
    assert trained["train_crops"] == 90
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_training_uses_every_zoom():
    chest = tiny_chest(0, shape=(12, 40, 40))
    cfg = dataclasses.replace(TINY_CFG, iterations=2)
    lists = [[array] for array in chest]
    _, _, metrics = train_segmenter(
        *lists, *lists, cfg, zooms=[(1, 1, 1), (0.5, 0.5, 0.5)], progress=False
    )
    assert metrics["resolutions"] == 2
    assert metrics["train_scans"] == 1 and metrics["base_channels"] == 4


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"volumes": []}, r"training: volumes, lungs and nodules must be non-empty lists"),
        ({"lungs": [np.zeros((12, 32, 31))]}, r"training scan 0: volume, lungs and nodules"),
        ({"nodules": [np.zeros((32, 31))]}, r"training nodules\[0\] must be a \(D, H, W\) array"),
        ({"cfg": dataclasses.replace(TINY_CFG, crop_size=(8, 4, 4))}, r"crop_size \[8, 4, 4\]"),
    ],
)
def test_training_rejects_bad_inputs(change, match):
    volume, lungs, nodules = tiny_chest(0)
    arguments = {
        "volumes": [volume],
        "lungs": [lungs],
        "nodules": [nodules],
        "val_volumes": [volume],
        "val_lungs": [lungs],
        "val_nodules": [nodules],
        "cfg": TINY_CFG,
        "progress": False,
    }
    with pytest.raises(ValueError, match=match):
        train_segmenter(**{**arguments, **change})


def test_predict_volume_covers_the_whole_volume():
    volume = tiny_chest(0, shape=(11, 37, 30))[0]
    probabilities = predict_volume(freeze(tiny_segmenter()), volume, (8, 16, 16))
    assert probabilities.shape == (2, 11, 37, 30)
    assert probabilities.dtype == np.float32
    assert 0 <= probabilities.min() and probabilities.max() <= 1
    finer = predict_volume(freeze(tiny_segmenter()), volume, (8, 16, 16), field_fraction=0.3)
    assert finer.shape == probabilities.shape
    with pytest.raises(ValueError, match=r"field_fraction must be in \[0.3, 1\].*got 0.1"):
        predict_volume(tiny_segmenter(), volume, (8, 16, 16), field_fraction=0.1)
    with pytest.raises(
        ValueError, match=r"volume must be a \(D, H, W\) array; got shape \(37, 30\)"
    ):
        predict_volume(tiny_segmenter(), volume[0], (8, 16, 16))


def test_largest_lung_components_keeps_the_two_lungs():
    probability = np.zeros((4, 20, 20))
    probability[:, 2:10, 2:8] = 0.9  # left lung
    probability[:, 2:10, 12:19] = 0.8  # right lung
    probability[0, 15:17, 15:17] = 0.7  # a speck
    mask = largest_lung_components(probability)
    assert mask.sum() == 4 * 8 * 6 + 4 * 8 * 7
    assert not mask[0, 15, 15]
    assert not largest_lung_components(np.zeros((3, 3, 3))).any()


def test_prediction_figure_shows_truth_and_prediction():
    volume, lungs, nodules = tiny_chest(0)
    figure = prediction_figure(volume, lungs, nodules, np.stack([lungs, nodules]), title="t")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 6
    assert figure.axes[0].get_title().startswith("ground truth")


def test_load_segmenter_data_splits_by_scan_or_by_slab(tmp_path):
    from ctgan.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "two", scans=2, seed=0, size=64)
    data = load_segmenter_data(tmp_path / "two", (10, 63, 63), (120, 64, 64))
    assert data.validation == "held-out scan"
    assert len(data.train_volumes) == len(data.val_volumes) == 1
    assert data.zooms[1] == pytest.approx((10 / 120, 63 / 64, 63 / 64))
    assert data.train_lungs[0].max() == 1 and data.train_lungs[0].dtype == np.float32
    assert [row["role"] for row in data.summary()] == ["train", "validation"]

    write_phantom_dataset(tmp_path / "one", scans=1, seed=0, size=64)
    one = load_segmenter_data(tmp_path / "one", (10, 63, 63), (120, 64, 64))
    assert one.validation == "held-out slab of the only scan"
    depth = sum(v.shape[0] for v in one.train_volumes + one.val_volumes)
    assert one.val_volumes[0].shape[0] == round(depth * 0.25)
    assert len(one.train_volumes) == 2

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no scan"):
        load_segmenter_data(tmp_path / "empty", (10, 63, 63), (120, 64, 64))
    with pytest.raises(ValueError, match=r"slab_fraction must be in \(0, 1\); got 1.5"):
        load_segmenter_data(tmp_path / "one", (10, 63, 63), (120, 64, 64), slab_fraction=1.5)


# ---------------------------------------------------------------------------------------------
# Real data: a segmenter trained on phantoms agrees with the classical lung mask.


@pytest.mark.slow
@pytest.mark.skipif(not SMALL_REAL_SCAN.is_file(), reason=f"real sample absent: {SMALL_REAL_SCAN}")
def test_phantom_trained_segmenter_agrees_with_classical_lung_mask_on_real_scan(tmp_path):
    from ctgan.intensity import hu_to_network
    from ctgan.luna16 import read_scan
    from ctgan.phantom import write_phantom_dataset
    from ctgan.preprocess import OUT_OF_FIELD_THRESHOLD_HU, compute_lung_mask

    torch.set_num_threads(2)
    write_phantom_dataset(tmp_path / "phantom", scans=3, seed=0, size=128)
    data = load_segmenter_data(tmp_path / "phantom", (10, 63, 63), (120, 128, 128))
    cfg = load_config(REPO / "params.yaml", profile="cpu").segmenter
    model, _, metrics = train_segmenter(
        data.train_volumes,
        data.train_lungs,
        data.train_nodules,
        data.val_volumes,
        data.val_lungs,
        data.val_nodules,
        cfg,
        zooms=data.zooms,
        progress=False,
    )
    assert metrics["dice_lungs"] > 0.85
    scan = read_scan(SMALL_REAL_SCAN)
    hu = scan.array.astype(np.float32)
    hu[hu < OUT_OF_FIELD_THRESHOLD_HU] = -1000.0
    classical = compute_lung_mask(hu, scan.spacing_xyz_mm)
    probabilities = predict_volume(model, hu_to_network(hu), cfg.crop_size)
    # Raw network: most of the disagreement is outside air and neck air (no such anatomy in the
    # phantom); the two largest components (the classical mask's own rule) agree.
    assert dice_score(probabilities[0], classical) >= 0.75
    assert dice_score(largest_lung_components(probabilities[0]), classical) >= 0.85


@pytest.mark.slow
def test_segmenter_notebook_writes_weights_config_metrics_and_figure(tmp_path):
    import papermill
    import yaml

    from ctgan.luna16 import Luna16Folder
    from ctgan.phantom import write_phantom_dataset
    from ctgan.preprocess import preprocess_scan, save_pyramid

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["profile"] = "smoke"
    params["data"]["phantom_dir"] = str(tmp_path / "phantom")
    params["data"]["phantom_scans"] = 2
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params), encoding="utf-8")
    cfg = load_config(params_path)
    write_phantom_dataset(tmp_path / "phantom", scans=2, seed=0, size=64)
    pyramid = preprocess_scan(Luna16Folder(tmp_path / "phantom"), None, cfg.pyramid)
    save_pyramid(pyramid, tmp_path / "preprocessed")
    out_dir, metrics_path = tmp_path / "models" / "segmenter", tmp_path / "metrics" / "seg.json"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "02_segmenter.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "params_path": str(params_path),
            "pyramid_dir": str(tmp_path / "preprocessed"),
            "out_dir": str(out_dir),
            "metrics_path": str(metrics_path),
        },
        kernel_name="python3",
        progress_bar=False,
    )
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert metrics["validation"] == "held-out scan"
    assert 0 <= metrics["dice_lungs"] <= 1 and 0 <= metrics["dice_nodules"] <= 1
    assert metrics["iterations"] == cfg.segmenter.iterations
    assert (out_dir / "predictions.png").stat().st_size > 0
    assert json.loads((out_dir / "config.json").read_text())["profile"] == "smoke"
    assert load_segmenter(out_dir / "segmenter.pt").architecture["base_channels"] == 4


def test_crops_at_the_training_zoom_follow_the_pyramids_anti_aliasing():
    """``anti_aliasing``: the volume is low-passed before it shrinks to a zoom (as the pyramid's
    was), the masks are not, and zoom 1 is untouched."""
    from ctgan.preprocess import resize_volume
    from ctgan.segmenter_data import prepare_scans

    checker = np.where(np.indices((8, 64, 64)).sum(axis=0) % 2 == 0, 0.5, -0.5)
    lungs = (np.indices((8, 64, 64))[2] < 32).astype(np.float32)
    zooms = [(1.0, 1.0, 1.0), (1.0, 0.25, 0.25)]
    plain = prepare_scans("t", [checker], [lungs], [np.zeros_like(lungs)], zooms)
    smooth = prepare_scans("t", [checker], [lungs], [np.zeros_like(lungs)], zooms, True)
    assert torch.equal(plain[0].stacked, smooth[0].stacked)  # zoom 1: as given
    torch.testing.assert_close(plain[1].stacked[1:], smooth[1].stacked[1:])  # masks: labels
    expected = resize_volume(checker.astype(np.float32), (8, 16, 16), anti_aliasing=True)
    np.testing.assert_allclose(smooth[1].stacked[0].numpy(), expected, atol=1e-6)
    assert smooth[1].stacked[0].std() < 0.5 * plain[1].stacked[0].std()
