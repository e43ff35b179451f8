"""Random samples that start above scale 0 (``train.sample_start_scale``, SinGAN's
gen_start_scale): the config check, the sampling path, and the training pyramid in checkpoints."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_sample import make_model, smooth_volume
from test_train import run, synthetic_pyramid, tiny_config

from ctgan import sample, sample_start
from ctgan.checkpoint import load_trained
from ctgan.config import load_config, resolve_config

REPO = Path(__file__).resolve().parents[1]


def with_start(model: types.SimpleNamespace, start: int, real: bool = True):
    """``model`` (a test stand-in) configured to start at ``start``, holding a training pyramid."""
    train = dataclasses.replace(model.config.train, sample_start_scale=start)
    copy = types.SimpleNamespace(**vars(model))
    copy.config = dataclasses.replace(model.config, train=train)
    copy.real_volumes = (
        [smooth_volume(tuple(s), seed=level) for level, s in enumerate(model.scale_shapes)]
        if real
        else None
    )
    return copy


def test_start_one_begins_from_the_real_coarse_volume():
    model = with_start(make_model("3d-B", identity=True), 1)
    samples = sample.sample_volumes(model, 2, seed=0, progress=False, precision="float32")
    coarse = torch.as_tensor(model.real_volumes[0])[None, None]
    expected = F.interpolate(
        coarse, size=model.scale_shapes[1], mode="trilinear", align_corners=True
    )
    # identity scales add nothing to their input: the sample is the upsampled real volume
    np.testing.assert_allclose(samples[0], expected[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(samples[1], samples[0], atol=1e-6)


def test_model_default_equals_explicit_start_and_differs_from_zero():
    model = with_start(make_model("3d-B"), 1)
    default = sample.sample_volumes(model, 2, seed=3, progress=False, precision="float32")
    explicit = sample.sample_volumes(
        model, 2, seed=3, progress=False, precision="float32", start_scale=1
    )
    zero = sample.sample_volumes(
        model, 2, seed=3, progress=False, precision="float32", start_scale=0
    )
    np.testing.assert_array_equal(default, explicit)
    assert not np.allclose(default, zero)
    # the same as injecting the real coarse volume at scale 1 with the same seed
    injected = sample.inject(
        model, model.real_volumes[0], 1, n=2, seed=3, progress=False, precision="float32"
    )
    np.testing.assert_allclose(default, injected, atol=1e-6)


def test_start_scale_errors():
    model = with_start(make_model("3d-B"), 0)
    with pytest.raises(ValueError, match=r"start scale must be an integer between 0 and 1"):
        sample.sample_volumes(model, 1, progress=False, start_scale=2)
    with pytest.raises(ValueError, match=r"start scale must be an integer"):
        sample.sample_volumes(model, 1, progress=False, start_scale=-1)
    old = with_start(make_model("3d-B"), 0, real=False)
    with pytest.raises(ValueError, match=r"trained before checkpoints held the training pyramid"):
        sample.sample_volumes(old, 1, progress=False, start_scale=1)
    with pytest.raises(ValueError, match=r"samples of another size .* start from pure noise"):
        sample.sample_volumes(model, 1, progress=False, start_scale=1, scale=(1.5, 1, 1))
    two_d = with_start(make_model("2d-B"), 0)
    with pytest.raises(ValueError, match=r"2D models sample from scale 0 only"):
        sample.sample_volumes(two_d, 1, progress=False, start_scale=1)


def test_other_sizes_fall_back_to_scale_zero_under_the_default():
    model = with_start(make_model("3d-B"), 1)
    larger = sample.sample_volumes(
        model, 1, seed=0, scale=(1.5, 1, 1), progress=False, precision="float32"
    )
    zero = sample.sample_volumes(
        model, 1, seed=0, scale=(1.5, 1, 1), progress=False, precision="float32", start_scale=0
    )
    np.testing.assert_array_equal(larger, zero)


def test_config_rejects_bad_start_scales():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["train"]["sample_start_scale"] = -1
    with pytest.raises(ValueError, match=r"sample_start_scale must be >= 0"):
        resolve_config(raw, setting="3d-B")
    raw["train"]["sample_start_scale"] = 2  # smoke has 2 scales
    with pytest.raises(ValueError, match=r"must be below the number of scales \(2"):
        resolve_config(raw, setting="3d-B")
    raw["train"]["sample_start_scale"] = 1
    assert resolve_config(raw, setting="3d-B").train.sample_start_scale == 1
    raw["settings"]["2d-B"] = {"terms": ["adversarial", "reconstruction", "projection"]}
    with pytest.raises(ValueError, match=r"must be 0 for the 2D settings \(2d-B\)"):
        resolve_config(raw, setting="2d-B")


def test_the_repository_params_resolve_for_every_setting_and_profile():
    for profile in ("smoke", "cpu", "paper"):
        for setting in ("3d-A", "3d-B", "3d-C", "3d-D", "2d-A", "2d-B", "2d-C", "2d-D"):
            cfg = load_config(REPO / "params.yaml", setting=setting, profile=profile)
            if cfg.model == "2d" or profile == "paper":
                assert cfg.train.sample_start_scale == 0  # the seed's procedure


def test_checkpoint_holds_the_training_pyramid(tmp_path):
    cfg = tiny_config("3d-B", iterations_per_scale=1, sample_start_scale=1)
    run(cfg, tmp_path)
    model = load_trained(tmp_path)
    pyramid = synthetic_pyramid([tuple(s) for s in model.scale_shapes])
    assert model.real_volumes is not None
    for saved, real in zip(model.real_volumes, pyramid.volumes, strict=True):
        np.testing.assert_array_equal(saved, real)
    samples = sample.sample_volumes(model, 2, seed=0, progress=False, precision="float32")
    assert samples.shape == (2, *model.scale_shapes[-1])
    assert np.isfinite(samples).all()


def test_adversarial_start_follows_the_switch_and_the_scale():
    from ctgan.scale_trainer import adversarial_start

    reals = [torch.full((1, 1, 2, 4, 4), float(level)) for level in range(3)]
    cfg = tiny_config("3d-B", sample_start_scale=1)
    assert adversarial_start(cfg, 2, reals) == (0, None)  # off: pure noise, the seed
    on = tiny_config("3d-B", sample_start_scale=1, adversarial_from_sample_start=True)
    assert adversarial_start(on, 0, reals) == (0, None)  # below the start: unchanged
    for scale in (1, 2):
        start, volume = adversarial_start(on, scale, reals)
        assert start == 1 and volume is reals[0]
    at_zero = tiny_config("3d-B", sample_start_scale=0, adversarial_from_sample_start=True)
    assert adversarial_start(at_zero, 2, reals) == (0, None)


def test_adversarial_start_changes_only_the_scales_it_covers(tmp_path):
    seed_run = run(tiny_config("3d-B", sample_start_scale=1), tmp_path / "seed")
    switched = run(
        tiny_config("3d-B", sample_start_scale=1, adversarial_from_sample_start=True),
        tmp_path / "switched",
    )
    a = torch.load(tmp_path / "seed" / "checkpoint.pt", weights_only=True)["generator"]
    b = torch.load(tmp_path / "switched" / "checkpoint.pt", weights_only=True)["generator"]
    for key in a:
        if key.startswith("scales.0."):
            assert torch.equal(a[key], b[key]), key  # scale 0 trains as in the seed
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("scales.1."))
    scale1 = [seed_run[seed_run.scale == 1], switched[switched.scale == 1]]
    assert np.isfinite(scale1[1][["d_loss", "g_adv", "rec_psnr"]]).all().all()
    assert not np.allclose(scale1[0]["g_adv"], scale1[1]["g_adv"])


def test_reconstruction_start_follows_its_own_switch():
    from ctgan.scale_trainer import adversarial_start, reconstruction_start

    reals = [torch.full((1, 1, 2, 4, 4), float(level)) for level in range(3)]
    adversarial = tiny_config("3d-B", sample_start_scale=1, adversarial_from_sample_start=True)
    assert reconstruction_start(adversarial, 2, reals) == (0, None)  # the other switch
    on = tiny_config("3d-B", sample_start_scale=1, reconstruction_from_sample_start=True)
    assert adversarial_start(on, 2, reals) == (0, None)
    assert reconstruction_start(on, 0, reals) == (0, None)  # below the start: z_rec
    for scale in (1, 2):
        start, volume = reconstruction_start(on, scale, reals)
        assert start == 1 and volume is reals[0]


@pytest.mark.parametrize("concurrent", [1, 2])
def test_reconstruction_from_start_refines_the_real_volume_below(tmp_path, concurrent):
    seed_cfg = tiny_config("3d-B", sample_start_scale=1, concurrent_scales=concurrent)
    run(seed_cfg, tmp_path / "seed")
    switched = dataclasses.replace(
        seed_cfg,
        train=dataclasses.replace(seed_cfg.train, reconstruction_from_sample_start=True),
    )
    history = run(switched, tmp_path / "switched")
    assert np.isfinite(history[["d_loss", "g_adv", "rec_psnr"]]).all().all()
    a, b = load_trained(tmp_path / "seed"), load_trained(tmp_path / "switched")
    assert b.real_volumes is not None
    assert a.noise_amplitudes[0] == b.noise_amplitudes[0]  # scale 0 trains as in the seed
    # scale 1's amplitude is the RMSE between the real volume below, upsampled, and its own
    coarse = torch.as_tensor(b.real_volumes[0])[None, None]
    up = F.interpolate(coarse, size=b.scale_shapes[1], mode="trilinear", align_corners=True)
    rmse = torch.sqrt(torch.mean((up[0, 0] - torch.as_tensor(b.real_volumes[1])) ** 2)).item()
    assert b.noise_amplitudes[1] == pytest.approx(rmse, rel=1e-5)
    assert a.noise_amplitudes[1] != pytest.approx(rmse, rel=1e-3)  # the seed: from G_0(z_rec)
    ga = torch.load(tmp_path / "seed" / "checkpoint.pt", weights_only=True)["generator"]
    gb = torch.load(tmp_path / "switched" / "checkpoint.pt", weights_only=True)["generator"]
    if concurrent == 1:
        for key in ga:
            if key.startswith("scales.0."):
                assert torch.equal(ga[key], gb[key]), key
    assert any(not torch.equal(ga[k], gb[k]) for k in ga if k.startswith("scales.1."))


def with_source(model: types.SimpleNamespace, source: str, noise_sd: float = 2.5):
    """``model`` with ``train.sample_start_source`` (and its layout noise) set."""
    train = dataclasses.replace(
        model.config.train, sample_start_source=source, sample_start_noise_sd=noise_sd
    )
    model.config = dataclasses.replace(model.config, train=train)
    return model


def upsampled(volume: torch.Tensor, shape) -> np.ndarray:
    return F.interpolate(volume, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def test_gpnn_source_starts_each_sample_from_its_own_layout():
    model = with_source(with_start(make_model("3d-B", identity=True), 1), "gpnn")
    samples = sample.sample_volumes(
        model, 3, seed=5, progress=False, precision="float32", batch_size=2
    )
    layouts = sample_start.gpnn_layouts(model, 1, 3, seed=5)
    assert layouts.shape == (3, 1, *model.scale_shapes[0])
    for i in range(3):  # identity scales add nothing: sample i is layout i upsampled
        expected = upsampled(layouts[i : i + 1], model.scale_shapes[1])
        np.testing.assert_allclose(samples[i], expected, atol=1e-5)
    assert not np.allclose(samples[0], samples[1], atol=0.05)  # new layouts, not one volume
    # sample i depends only on the seed and i, not on n or the batch size
    first = sample.sample_volumes(model, 1, seed=5, progress=False, precision="float32")
    np.testing.assert_allclose(first[0], samples[0], atol=1e-5)
    other = sample.sample_volumes(model, 1, seed=6, progress=False, precision="float32")
    assert not np.allclose(other[0], samples[0], atol=0.05)


def test_gpnn_layouts_are_the_real_volume_when_their_noise_vanishes():
    model = with_source(with_start(make_model("3d-B"), 1), "gpnn", noise_sd=1e-4)
    layouts = sample_start.gpnn_layouts(model, 1, 2, seed=0)
    real = torch.as_tensor(model.real_volumes[0])
    for layout in layouts:
        np.testing.assert_allclose(layout[0].numpy(), real.numpy(), atol=1e-3)
    real_start = sample_start.start_volumes(with_source(model, "real"), 1, 4, seed=0)
    assert real_start.shape == (1, 1, *model.scale_shapes[0])  # one volume, shared
    np.testing.assert_array_equal(real_start[0, 0].numpy(), real.numpy())


def test_layout_cache_gives_the_same_layouts_and_keys_what_decides_them(tmp_path, monkeypatch):
    model = with_source(with_start(make_model("3d-B"), 1), "gpnn")
    fresh = sample_start.gpnn_layouts(model, 1, 2, seed=3)
    kept = sample_start.gpnn_layouts(model, 1, 2, seed=3, layout_cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    calls = []
    real_generate = sample_start.generate_gpnn
    monkeypatch.setattr(
        sample_start, "generate_gpnn", lambda *a, **k: calls.append(k) or real_generate(*a, **k)
    )
    again = sample_start.gpnn_layouts(model, 1, 2, seed=3, layout_cache=tmp_path)
    assert calls == []  # read back, not computed
    assert torch.equal(fresh, kept) and torch.equal(kept, again)
    via_samples = sample.sample_volumes(
        model, 2, seed=3, progress=False, precision="float32", layout_cache=tmp_path
    )
    assert calls == []
    np.testing.assert_array_equal(
        via_samples, sample.sample_volumes(model, 2, seed=3, progress=False, precision="float32")
    )
    calls.clear()
    # another seed, count or start key is another entry, computed
    sample_start.gpnn_layouts(model, 1, 2, seed=4, layout_cache=tmp_path)
    sample_start.gpnn_layouts(model, 1, 3, seed=3, layout_cache=tmp_path)
    with_source(model, "gpnn", noise_sd=2.0)
    sample_start.gpnn_layouts(model, 1, 2, seed=3, layout_cache=tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npy"))) == 4
    # a damaged entry is computed again and replaced, not an error
    with_source(model, "gpnn", noise_sd=2.5)
    entry = next(p for p in tmp_path.glob("*.npy") if np.array_equal(np.load(p), kept[:, 0]))
    entry.write_bytes(b"not a numpy file")
    repaired = sample_start.gpnn_layouts(model, 1, 2, seed=3, layout_cache=tmp_path)
    assert len(calls) == 4 and torch.equal(repaired, fresh)
    np.testing.assert_array_equal(np.load(entry), fresh[:, 0].numpy())


def test_config_rejects_bad_start_sources():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["train"]["sample_start_source"] = "noise"
    with pytest.raises(ValueError, match=r"sample_start_source must be one of real, gpnn; got"):
        resolve_config(raw, setting="3d-B")
    raw["train"]["sample_start_source"] = "gpnn"
    raw["train"]["sample_start_noise_sd"] = 0
    with pytest.raises(ValueError, match=r"sample_start_noise_sd must be > 0"):
        resolve_config(raw, setting="3d-B")
    raw["train"]["sample_start_noise_sd"] = 3.0
    train = resolve_config(raw, setting="3d-B").train
    assert (train.sample_start_source, train.sample_start_noise_sd) == ("gpnn", 3.0)
    for key, value, match in (
        ("sample_start_zoom_sd", -0.1, r"sample_start_zoom_sd must be >= 0 and < 0.5"),
        ("sample_start_zoom_sd", 0.5, r"sample_start_zoom_sd must be >= 0 and < 0.5"),
        ("sample_start_shift_sd", -1, r"sample_start_shift_sd must be >= 0"),
        ("sample_start_max_correlation", 0, r"sample_start_max_correlation must be > 0 and <= 1"),
        (
            "sample_start_max_correlation",
            1.01,
            r"sample_start_max_correlation must be > 0 and <= 1",
        ),
    ):
        bad = {**raw, "train": {**raw["train"], key: value}}
        with pytest.raises(ValueError, match=match):
            resolve_config(bad, setting="3d-B")


def test_layouts_start_from_the_zoomed_and_shifted_volume(monkeypatch):
    model = with_source(with_start(make_model("3d-B"), 1), "gpnn")
    train = dataclasses.replace(
        model.config.train, sample_start_zoom_sd=0.06, sample_start_shift_sd=0.5
    )
    model.config = dataclasses.replace(model.config, train=train)
    seen = {}

    def fake(volumes, n, **kwargs):
        seen.update(kwargs)
        return np.zeros((n, *np.shape(volumes[-1])), dtype=np.float32)

    monkeypatch.setattr(sample_start, "generate_gpnn", fake)
    sample_start.gpnn_layouts(model, 1, 2, seed=0)
    assert (seen["zoom_sd"], seen["shift_sd"], seen["noise_sd"]) == (0.06, 0.5, 2.5)
    assert seen["max_correlation"] == 1.0  # every layout kept (GPNN's rule), the default
    assert "zoom sd 0.06 shift sd 0.5" in sample_start.sampling_recipe(model, 1)
    assert "corr <" not in sample_start.sampling_recipe(model, 1)
    train = dataclasses.replace(model.config.train, sample_start_max_correlation=0.98)
    model.config = dataclasses.replace(model.config, train=train)
    sample_start.gpnn_layouts(model, 1, 2, seed=0)
    assert seen["max_correlation"] == 0.98
    assert sample_start.sampling_recipe(model, 1).endswith("corr < 0.98, noise x1")


def test_sample_noise_factor_scales_the_amplitudes_above_the_start():
    model = with_start(make_model("3d-B"), 1)
    train = dataclasses.replace(model.config.train, sample_noise_factor=0.5)
    halved = types.SimpleNamespace(**vars(model))
    halved.config = dataclasses.replace(model.config, train=train)
    assert sample_start.sampling_amplitudes(halved, 1) == [1.0, 0.05]
    assert sample_start.sampling_amplitudes(halved, 0) == [1.0, 0.05]  # never scale 0's
    by_hand = types.SimpleNamespace(**vars(model))
    by_hand.noise_amplitudes = [1.0, 0.05]
    kwargs = {"seed": 2, "progress": False, "precision": "float32"}
    np.testing.assert_array_equal(
        sample.sample_volumes(halved, 2, **kwargs), sample.sample_volumes(by_hand, 2, **kwargs)
    )
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["train"]["sample_noise_factor"] = -0.5
    with pytest.raises(ValueError, match=r"sample_noise_factor must be >= 0 .*got -0.5"):
        resolve_config(raw, setting="3d-B")
    raw["train"]["sample_noise_factor"] = 0  # no noise above the start: allowed
    assert resolve_config(raw, setting="3d-B").train.sample_noise_factor == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpnn_layouts_refuse_cuda_without_a_gpu():
    model = with_source(with_start(make_model("3d-B"), 1), "gpnn")
    gpnn_cfg = dataclasses.replace(model.config.gpnn, device="cuda")
    model.config = dataclasses.replace(model.config, gpnn=gpnn_cfg)
    with pytest.raises(ValueError, match="no CUDA device is available; use .auto. or .cpu."):
        sample_start.gpnn_layouts(model, 1, 1, seed=0)
