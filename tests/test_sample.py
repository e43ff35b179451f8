"""ctgan.sample: sizes, seeding, injection, reconstruction, export and reading, on tiny models.

Most tests use an untrained generator pyramid built by ctgan.nets at the smoke profile's sizes
(fast, no training); the tests marked ``slow`` use a model trained by ctgan.train.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctgan import layers, sample
from ctgan.config import load_config, scale_shapes
from ctgan.intensity import hu_to_network, network_to_hu_int16
from ctgan.io import write_json
from ctgan.nets import build_generator_pyramid, make_reconstruction_noise

REPO = Path(__file__).resolve().parents[1]
SPACINGS = [(4.0, 3.0, 3.0), (20 / 7, 2.0, 2.0)]  # a 20 x 60 x 60 mm field of view
ORIGIN = [-170.5, -160.25, -300.0]
DIRECTION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def make_model(setting: str = "3d-B", identity: bool = False, model_dir: Path | None = None):
    """A TrainedModel-like object with an untrained (or identity) pyramid at the smoke sizes.

    ``identity=True`` zeroes each scale's last conv, so scale s >= 1 returns its input unchanged
    (tanh(0) = 0 residual): injection then returns the resized start volume exactly.
    """
    torch.manual_seed(0)
    config = load_config(REPO / "params.yaml", setting=setting, profile="smoke")
    shapes = scale_shapes(config.pyramid)  # [(5, 20, 20), (7, 30, 30)]
    generator = build_generator_pyramid(config.model, 4, "instance", [s[0] for s in shapes])
    if identity:
        for scale in generator.scales:
            last = scale.body[-2] if config.model == "3d" else scale.last
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
    generator.eval().requires_grad_(False)
    return types.SimpleNamespace(
        config=config,
        generator=generator,
        noise_amplitudes=[1.0] + [0.1] * (len(shapes) - 1),
        reconstruction_noise=make_reconstruction_noise(shapes, torch.Generator().manual_seed(0)),
        scale_shapes=shapes,
        scale_spacings_zyx_mm=SPACINGS[: len(shapes)],
        source={
            "seriesuid": "1.2.3",
            "source": "phantom",
            "origin_xyz_mm": ORIGIN,
            "direction": DIRECTION,
            "spacing_xyz_mm": [1.0, 1.0, 2.0],
            "shape_zyx": [10, 60, 60],
        },
        model_dir=model_dir or Path("/nonexistent/models/3d-B/seed0"),
    )


@pytest.fixture(scope="module")
def model3d():
    return make_model("3d-B")


@pytest.fixture(scope="module")
def model2d():
    return make_model("2d-B")


def smooth_volume(shape=(7, 30, 30), seed: int = 0) -> np.ndarray:
    """A smooth random volume in [-1, 1] (coarse blobs upsampled), for injection tests."""
    coarse = torch.rand((1, 1, 3, 5, 5), generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse * 2 - 1, size=shape, mode="trilinear")
    return fine[0, 0].numpy().astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --- sizes -------------------------------------------------------------------------------------


def test_scaled_shapes_follow_factor_per_axis(model3d):
    assert sample.scaled_shapes(model3d) == [(5, 20, 20), (7, 30, 30)]
    assert sample.scaled_shapes(model3d, (1.5, 1, 2)) == [(8, 20, 40), (10, 30, 60)]
    assert sample.output_shape(model3d, (1.5, 1, 1)) == (10, 30, 30)


def test_output_spacing_is_finest_spacing_for_any_factor(model3d):
    assert sample.output_spacing_zyx_mm(model3d) == SPACINGS[-1]
    assert sample.output_spacing_zyx_mm(model3d, (1.5, 2, 2)) == SPACINGS[-1]


@pytest.mark.parametrize("scale", [(0, 1, 1), (1, -1, 1), (1, 1), (1, float("nan"), 1)])
def test_bad_scale_factor_is_rejected(model3d, scale):
    with pytest.raises(ValueError, match="three positive factors"):
        sample.scaled_shapes(model3d, scale)


def test_factor_below_receptive_field_is_rejected_before_work(model3d, monkeypatch):
    monkeypatch.setattr(sample, "_run_batches", lambda *a, **k: pytest.fail("work started"))
    # in-plane 20 * 0.5 = 10 < 11 (the receptive field) at the coarsest level
    with pytest.raises(
        ValueError, match=r"level 0 10 voxels along y .* needs \(its receptive field\)"
    ):
        sample.sample_volumes(model3d, 1, scale=(1, 0.5, 1))
    # depth 5 < 11 already in training: no shrinking below the trained depth
    with pytest.raises(ValueError, match=r"along z \(trained: 5\).*z factor >= 1.000"):
        sample.sample_volumes(model3d, 1, scale=(0.8, 1, 1))


def test_2d_model_keeps_depth_and_minimum_in_plane(model2d):
    with pytest.raises(ValueError, match="treats slices as channels"):
        sample.scaled_shapes(model2d, (1.5, 1, 1))
    with pytest.raises(
        ValueError, match=r"along x .* the 16 the 2d generator needs \(its three 2x"
    ):
        sample.scaled_shapes(model2d, (1, 1, 0.7))
    assert sample.sample_volumes(model2d, 1, scale=(1, 1.5, 1), progress=False).shape == (
        1,
        7,
        45,
        30,
    )


# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["3d-B", "2d-B"])
def test_sample_volumes_shape_range_and_seeding(setting):
    model = make_model(setting)
    volumes = sample.sample_volumes(model, 3, seed=5, progress=False)
    assert volumes.shape == (3, 7, 30, 30) and volumes.dtype == np.float32
    assert np.isfinite(volumes).all() and volumes.min() >= -1 and volumes.max() <= 1
    assert np.array_equal(volumes, sample.sample_volumes(model, 3, seed=5, progress=False))
    assert not np.allclose(volumes, sample.sample_volumes(model, 3, seed=6, progress=False))
    assert not np.allclose(volumes[0], volumes[1])  # different noise per sample


def test_sample_i_depends_only_on_seed_and_index(model3d):
    three = sample.sample_volumes(
        model3d, 3, seed=2, batch_size=3, progress=False, precision="float32"
    )
    one_by_one = sample.sample_volumes(
        model3d, 2, seed=2, batch_size=1, progress=False, precision="float32"
    )
    np.testing.assert_allclose(three[:2], one_by_one, atol=1e-4)  # batched kernels: rounding only


def test_larger_factor_gives_larger_volume(model3d):
    volume = sample.sample_volumes(model3d, 1, scale=(1.5, 1, 1), progress=False)
    assert volume.shape == (1, 10, 30, 30)


@pytest.mark.parametrize("name,value", [("n", 0), ("batch_size", 0), ("n", 1.5)])
def test_bad_counts_are_rejected(model3d, name, value):
    kwargs = {"n": 1, "batch_size": 1, name: value}
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        sample.sample_volumes(model3d, progress=False, **kwargs)


def test_cuda_without_cuda_is_rejected(model3d):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        sample.sample_volumes(model3d, 1, device="cuda")


def test_reconstruct_uses_the_fixed_noise(model3d):
    first = sample.reconstruct(model3d, precision="float32")
    assert first.shape == (7, 30, 30)
    assert np.array_equal(first, sample.reconstruct(model3d, precision="float32"))
    expected = model3d.generator(model3d.reconstruction_noise)[0, 0].numpy()
    np.testing.assert_allclose(first, np.clip(expected, -1, 1), atol=1e-6)


# --- precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "float32")])
def test_auto_precision_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(layers, "native_bf16", lambda device: native)
    assert sample.resolve_precision("auto", "cpu") == expected
    assert sample.resolve_precision("float32", "cpu") == "float32"
    assert sample.resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_precision_is_rejected(model3d):
    with pytest.raises(
        ValueError, match=r"precision must be one of auto, float32, bf16; got 'fp16'"
    ):
        sample.sample_volumes(model3d, 1, progress=False, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        sample.reconstruct(model3d, precision="half")


def test_native_bf16_is_false_without_the_device():
    assert isinstance(layers.native_bf16("cpu"), bool)
    if not torch.cuda.is_available():
        assert layers.native_bf16("cuda") is False


@pytest.mark.parametrize("setting", ["3d-B", "2d-B"])
def test_bf16_sampling_stays_close_to_float32(setting):
    model = make_model(setting)
    kwargs = {"n": 2, "seed": 4, "progress": False}
    full = sample.sample_volumes(model, precision="float32", **kwargs)
    half = sample.sample_volumes(model, precision="bf16", **kwargs)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert np.array_equal(half, sample.sample_volumes(model, precision="bf16", **kwargs))
    assert not np.array_equal(half, full)  # it did run in bf16
    # rounding, not another volume (untrained nets amplify it; trained ones: benchmarks/)
    other_seed = sample.sample_volumes(model, 2, seed=5, progress=False, precision="float32")
    assert np.abs(half - full).mean() < 0.2 * np.abs(other_seed - full).mean()
    assert correlation(half, full) > 0.99
    rec_full = sample.reconstruct(model, precision="float32")
    rec_half = sample.reconstruct(model, precision="bf16")
    assert correlation(rec_half, rec_full) > 0.99


# --- injection ---------------------------------------------------------------------------------


def test_injection_scale_out_of_range_is_rejected(model3d):
    volume = smooth_volume()
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match=r"injection scale must be between 1 and 1"):
            sample.inject(model3d, volume, bad)
    with pytest.raises(ValueError, match="must be an integer"):
        sample.inject(model3d, volume, 1.0)


def test_injection_volume_must_be_3d_network_range(model3d):
    with pytest.raises(ValueError, match=r"must be a 3D \(D, H, W\) array; got 2D"):
        sample.inject(model3d, np.zeros((30, 30), np.float32), 1)
    with pytest.raises(ValueError, match=r"network range \[-1, 1\].*hu_to_network"):
        sample.inject(model3d, np.full((7, 30, 30), -1000.0, np.float32), 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        sample.inject(model3d, np.full((7, 30, 30), np.nan, np.float32), 1)


def test_injection_through_identity_scales_returns_the_resized_volume():
    model = make_model("3d-B", identity=True)
    volume = smooth_volume()
    out = sample.inject(model, volume, 1, n=2, seed=0, progress=False)
    assert out.shape == (2, 7, 30, 30)
    np.testing.assert_allclose(out[0], volume, atol=1e-5)
    # from a smaller volume: resized to the level (trilinear), so still highly correlated
    small = volume[::1, ::2, ::2]
    assert correlation(sample.inject(model, small, 1, progress=False)[0], volume) > 0.95


def test_injection_low_passes_for_a_model_trained_on_an_anti_aliased_pyramid():
    """A volume injected into a model trained with ``pyramid.anti_aliasing`` shrinks to the
    level as the training volume did: low-passed first (through identity scales, the result is
    ``resize_volume(..., anti_aliasing=True)``)."""
    from ctgan.preprocess import resize_volume

    model = make_model("3d-B", identity=True)
    big = np.where(np.indices((7, 60, 60)).sum(axis=0) % 2 == 0, 0.5, -0.5).astype(np.float32)
    plain = sample.inject(model, big, 1, progress=False)[0]
    np.testing.assert_allclose(plain, resize_volume(big, (7, 30, 30)), atol=1e-5)
    pyramid = dataclasses.replace(model.config.pyramid, anti_aliasing=True)
    model.config = dataclasses.replace(model.config, pyramid=pyramid)
    smooth = sample.inject(model, big, 1, progress=False)[0]
    np.testing.assert_allclose(
        smooth, resize_volume(big, (7, 30, 30), anti_aliasing=True), atol=1e-5
    )
    assert smooth.std() < 0.5 * plain.std()


def test_injection_is_seeded_and_keeps_coarse_structure(model3d):
    volume = smooth_volume()
    first = sample.inject(model3d, volume, 1, n=2, seed=3, progress=False)
    assert np.array_equal(first, sample.inject(model3d, volume, 1, n=2, seed=3, progress=False))
    assert not np.allclose(first[0], first[1])
    assert correlation(first[0], volume) > 0.5


# --- export and reading ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_export_reopens_with_geometry_and_int16_hu(tmp_path, suffix):
    volume = smooth_volume((5, 12, 9))
    path = sample.export_volume(
        volume, tmp_path / f"v{suffix}", (2.5, 0.75, 0.5), ORIGIN, DIRECTION
    )
    assert path == tmp_path / f"v{suffix}"
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (9, 12, 5)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.75, 2.5), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), network_to_hu_int16(volume))
    assert list(tmp_path.iterdir()) == [path]


def test_export_keeps_an_oblique_direction(tmp_path):
    angle = np.deg2rad(30)
    rotation = [np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1]
    path = sample.export_volume(
        smooth_volume((4, 6, 6)), tmp_path / "o.mha", (1, 1, 1), ORIGIN, rotation
    )
    np.testing.assert_allclose(sitk.ReadImage(str(path)).GetDirection(), rotation, atol=1e-6)


@pytest.mark.parametrize("name", ["v.npy", "v.nii", "v", "v.mhd"])
def test_export_rejects_other_extensions(tmp_path, name):
    with pytest.raises(ValueError, match=r"extension must be one of \.nii\.gz, \.mha"):
        sample.export_volume(
            smooth_volume((4, 6, 6)), tmp_path / name, (1, 1, 1), ORIGIN, DIRECTION
        )


@pytest.mark.parametrize(
    "spacing,origin,direction,match",
    [
        ((1, 0, 1), ORIGIN, DIRECTION, "spacing_zyx_mm must be three positive"),
        ((1, 1, 1), ORIGIN[:2], DIRECTION, "origin_xyz_mm must be three finite"),
        ((1, 1, 1), ORIGIN, [2.0] * 9, "orthonormal"),
    ],
)
def test_export_rejects_bad_geometry(tmp_path, spacing, origin, direction, match):
    with pytest.raises(ValueError, match=match):
        sample.export_volume(
            smooth_volume((4, 6, 6)), tmp_path / "v.mha", spacing, origin, direction
        )


def test_export_rejects_non_3d_volume(tmp_path):
    with pytest.raises(ValueError, match=r"volume must be 3D \(D, H, W\); got 4D"):
        sample.export_volume(
            np.zeros((1, 4, 6, 6)), tmp_path / "v.mha", (1, 1, 1), ORIGIN, DIRECTION
        )


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    def half_write(image, path, useCompression=False):  # noqa: N803 (SimpleITK's name)
        Path(path).write_bytes(b"half a header")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        sample.export_volume(
            smooth_volume((4, 6, 6)), tmp_path / "v.nii.gz", (1, 1, 1), ORIGIN, DIRECTION
        )
    assert list(tmp_path.iterdir()) == []


def field_of_view_corner(origin, direction, spacing_xyz) -> np.ndarray:
    """World position of the outer corner of voxel 0 (half a voxel before its centre)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    return np.asarray(origin) - matrix @ (np.asarray(spacing_xyz) / 2)


@pytest.mark.parametrize("angle_deg", [0, 30])
def test_output_origin_aligns_the_field_of_view_with_the_source(angle_deg):
    model = make_model("3d-B")
    angle = np.deg2rad(angle_deg)
    model.source["direction"] = [
        np.cos(angle),
        -np.sin(angle),
        0,
        np.sin(angle),
        np.cos(angle),
        0,
        0,
        0,
        1,
    ]
    origin = sample.output_origin_xyz_mm(model)
    out_spacing_xyz = sample.output_spacing_zyx_mm(model)[::-1]
    np.testing.assert_allclose(
        field_of_view_corner(origin, model.source["direction"], out_spacing_xyz),
        field_of_view_corner(ORIGIN, model.source["direction"], model.source["spacing_xyz_mm"]),
        atol=1e-9,
    )
    extent_out = np.asarray(sample.output_shape(model)) * sample.output_spacing_zyx_mm(model)
    extent_source = (
        np.asarray(model.source["shape_zyx"]) * np.asarray(model.source["spacing_xyz_mm"])[::-1]
    )
    np.testing.assert_allclose(extent_out, extent_source)
    del model.source["spacing_xyz_mm"]
    assert sample.output_origin_xyz_mm(model) == tuple(ORIGIN)


def test_export_model_volume_uses_source_geometry(tmp_path, model3d):
    volume = sample.sample_volumes(model3d, 1, scale=(1.5, 1, 1), progress=False)[0]
    path = sample.export_model_volume(model3d, volume, tmp_path / "s.nii.gz", (1.5, 1, 1))
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (30, 30, 10)
    np.testing.assert_allclose(image.GetSpacing(), SPACINGS[-1][::-1], atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), sample.output_origin_xyz_mm(model3d), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION)


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".mhd"])
def test_read_injection_volume_round_trips_export(tmp_path, model3d, suffix):
    volume = smooth_volume()
    hu = network_to_hu_int16(volume)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 2.857))
    sitk.WriteImage(image, str(tmp_path / f"in{suffix}"))
    read = sample.read_injection_volume(tmp_path / f"in{suffix}", model3d)
    assert read.shape == (7, 30, 30) and read.dtype == np.float32
    np.testing.assert_allclose(read, hu_to_network(hu), atol=1e-6)


def test_read_injection_volume_errors(tmp_path, model3d):
    with pytest.raises(FileNotFoundError, match="injection file .* not found"):
        sample.read_injection_volume(tmp_path / "missing.mha", model3d)
    np.save(tmp_path / "v.npy", smooth_volume())
    with pytest.raises(ValueError, match="has no geometry"):
        sample.read_injection_volume(tmp_path / "v.npy", model3d)
    sitk.WriteImage(sitk.Image(30, 30, sitk.sitkInt16), str(tmp_path / "slice.mha"))
    with pytest.raises(ValueError, match="must be a 3D single-channel scan; got a 2D"):
        sample.read_injection_volume(tmp_path / "slice.mha", model3d)
    sitk.WriteImage(sitk.Image(30, 30, 1, sitk.sitkInt16), str(tmp_path / "flat.mha"))
    with pytest.raises(ValueError, match="at least 2 voxels per axis"):
        sample.read_injection_volume(tmp_path / "flat.mha", model3d)
    (tmp_path / "broken.mha").write_text("not an image")
    with pytest.raises(ValueError, match="could not be read as an image"):
        sample.read_injection_volume(tmp_path / "broken.mha", model3d)


def test_read_injection_volume_warns_on_far_extent(tmp_path, model3d, caplog):
    image = sitk.GetImageFromArray(network_to_hu_int16(smooth_volume()))
    image.SetSpacing((20.0, 20.0, 20.0))
    sitk.WriteImage(image, str(tmp_path / "huge.mha"))
    sample.read_injection_volume(tmp_path / "huge.mha", model3d)
    assert "resized to the injection level anyway" in caplog.text


# --- description -------------------------------------------------------------------------------


def test_describe_model_lists_scales_data_and_metrics(tmp_path):
    model_dir = tmp_path / "models" / "3d-B" / "seed0"
    model_dir.mkdir(parents=True)
    model = make_model("3d-B", model_dir=model_dir)
    text = sample.describe_model(model)
    assert "setting:      3d-B" in text and "profile:      smoke" in text
    assert "(5, 20, 20)" in text and "2.857, 2.000, 2.000" in text and "20.0, 60.0, 60.0" in text
    assert "seriesuid:  1.2.3" in text and "metrics:      none found" in text
    write_json(tmp_path / "metrics" / "3d-B.json", {"reconstruction": {"psnr": 25.5}})
    assert sample.find_metrics_file(model) == (tmp_path / "metrics" / "3d-B.json").resolve()
    assert "reconstruction.psnr: 25.5000" in sample.describe_model(model)
    write_json(model_dir / "metrics.json", {"reconstruction": {"psnr": 30.0}})
    assert "reconstruction.psnr: 30.0000" in sample.describe_model(model)
