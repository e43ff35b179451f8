"""ctgan.gpnn: the training-free patch-nearest-neighbour baseline, on tiny volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctgan import baseline, gpnn
from ctgan.config import GpnnConfig, load_config, resolve_config
from ctgan.intensity import hu_to_network

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(5, 12, 12), (7, 18, 18)]
SPACINGS = [(4.0, 3.0, 3.0), (2.857, 2.0, 2.0)]
FAST = {"patch_size": (3, 5, 5), "iterations": 2, "search_radius": (1, 1, 1)}


def tiny_pyramid() -> list[np.ndarray]:
    """A two-scale tiny chest: air, an elliptic body (40 HU), two lungs (-850 HU), a spine."""
    volumes = []
    for depth, height, width in SHAPES:
        z, y, x = np.meshgrid(
            np.linspace(-1, 1, depth),
            np.linspace(-1, 1, height),
            np.linspace(-1, 1, width),
            indexing="ij",
        )
        hu = np.full((depth, height, width), -1000.0)
        hu[(y / 0.75) ** 2 + (x / 0.9) ** 2 < 1] = 40.0
        for centre in (-0.45, 0.45):
            hu[(y / 0.45) ** 2 + ((x - centre) / 0.3) ** 2 + (z / 1.4) ** 2 < 1] = -850.0
        hu[(np.abs(x) < 0.12) & (y > 0.45) & (y < 0.7)] = 700.0
        volumes.append(np.asarray(hu_to_network(hu), dtype=np.float32))
    return volumes


def test_extract_and_fold_patches_invert_each_other():
    volume = torch.randn(5, 9, 11)
    patches = gpnn.extract_patches(volume, (3, 5, 4))
    assert patches.shape == (3 * 5 * 8, 3 * 5 * 4)
    assert torch.equal(patches[0].reshape(3, 5, 4), volume[:3, :5, :4])
    assert torch.allclose(gpnn.fold_patches(patches, (5, 9, 11), (3, 5, 4)), volume, atol=1e-6)


def test_exact_search_finds_each_query_itself_and_honours_the_normalised_score():
    keys = torch.randn(50, 8)
    assert torch.equal(gpnn.nearest_keys(keys, keys, 0.005, 7), torch.arange(50))
    # Two queries close to key 0, none near key 1: the normalised score sends the second query,
    # a little farther from key 0 than the first, to the unused key 1.
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    queries = torch.tensor([[0.0, 0.0], [0.45, 0.0]])
    assert gpnn.nearest_keys(queries, keys, 0.005, 1).tolist() == [0, 1]
    plain = torch.cdist(queries, keys).argmin(dim=1)
    assert plain.tolist() == [0, 0]


def test_generate_gives_k_float32_volumes_in_range_at_the_finest_shape():
    samples = gpnn.generate_gpnn(tiny_pyramid(), 3, seed=0, noise_sd=1.0, **FAST)
    assert samples.shape == (3, *SHAPES[-1]) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples)) and samples.min() >= -1 and samples.max() <= 1


def test_same_seed_same_samples_other_seed_other_samples():
    volumes = tiny_pyramid()
    first = gpnn.generate_gpnn(volumes, 2, seed=4, noise_sd=1.5, **FAST)
    again = gpnn.generate_gpnn(volumes, 2, seed=4, noise_sd=1.5, **FAST)
    other = gpnn.generate_gpnn(volumes, 2, seed=5, noise_sd=1.5, **FAST)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other, atol=1e-3)
    assert not np.allclose(first[0], first[1], atol=1e-3)  # samples differ from each other
    # sample i depends only on the seed and i
    assert np.array_equal(gpnn.generate_gpnn(volumes, 1, seed=4, noise_sd=1.5, **FAST), first[:1])


@pytest.mark.parametrize("search_radius", [(1, 1, 1), None])
def test_noise_free_output_is_the_real_volume(search_radius):
    volumes = tiny_pyramid()
    options = {**FAST, "search_radius": search_radius}
    noise_free = gpnn.reconstruct_gpnn(volumes, seed=0, **options)
    np.testing.assert_allclose(noise_free, volumes[-1], atol=1e-5)


@pytest.mark.parametrize("search_radius", [(1, 2, 2), None])
def test_chunking_does_not_change_the_result(search_radius):
    volumes = tiny_pyramid()
    options = {**FAST, "search_radius": search_radius, "noise_sd": 1.5}
    whole = gpnn.generate_gpnn(volumes, 2, seed=1, chunk_size=100_000, **options)
    chunked = gpnn.generate_gpnn(volumes, 2, seed=1, chunk_size=37, **options)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_every_output_voxel_lies_within_the_real_volumes_range():
    volumes = tiny_pyramid()
    samples = gpnn.generate_gpnn(volumes, 2, seed=2, noise_sd=3.0, **FAST)
    # each voxel is a mean of real patch values: never outside the real's range (noise included)
    assert samples.min() >= volumes[-1].min() - 1e-6
    assert samples.max() <= volumes[-1].max() + 1e-6


def test_start_scale_and_finest_iterations_are_honoured():
    volumes = tiny_pyramid()
    late = gpnn.generate_gpnn(volumes, 1, start_scale=1, noise_sd=1.0, **FAST)
    assert late.shape == (1, *SHAPES[-1])
    one = gpnn.generate_gpnn(volumes, 1, noise_sd=1.0, **{**FAST, "finest_iterations": 1})
    two = gpnn.generate_gpnn(volumes, 1, noise_sd=1.0, **{**FAST, "finest_iterations": 2})
    assert one.shape == two.shape == (1, *SHAPES[-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": (3, 5)}, "patch_size must be three positive sizes"),
        ({"patch_size": (0, 5, 5)}, "patch_size must be three positive sizes"),
        ({"search_radius": (1, -1, 1)}, "search_radius must be three sizes >= 0"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"iterations": 0}, "iterations must be an integer >= 1"),
        ({"finest_iterations": 1.5}, "finest_iterations must be an integer >= 1"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"noise_sd": -1.0}, "noise_sd must be >= 0"),
        ({"zoom_sd": -0.1}, "zoom_sd must be >= 0"),
        ({"zoom_sd": 0.5}, "zoom_sd must be >= 0 .* and < 0.5"),
        ({"shift_sd": -1.0}, "shift_sd must be >= 0"),
        ({"start_scale": 2}, "start_scale must index the pyramid's 2 scales"),
        ({"max_correlation": 1.5}, r"max_correlation must be in \(-1, 1\]"),
        ({"max_correlation": -1.0}, r"max_correlation must be in \(-1, 1\]"),
        ({"max_draws": 0}, "max_draws must be an integer >= 1"),
        ({"patch_size": (7, 5, 5)}, r"smaller than the patch \(7, 5, 5\)"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    arguments = {"num_samples": 1, **FAST, **kwargs}
    with pytest.raises(ValueError, match=match):
        gpnn.generate_gpnn(tiny_pyramid(), **arguments)


def test_generate_rejects_bad_volumes():
    with pytest.raises(ValueError, match="at least one"):
        gpnn.generate_gpnn([], 1)
    with pytest.raises(ValueError, match=r"must be a \(D, H, W\) volume; got shape \(12, 12\)"):
        gpnn.generate_gpnn([np.zeros((12, 12), np.float32)], 1)
    broken = tiny_pyramid()
    broken[1][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"pyramid_volumes\[1\] holds NaN"):
        gpnn.generate_gpnn(broken, 1, **FAST)


def test_resolve_device():
    assert gpnn.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="must be auto, cpu or cuda"):
        gpnn.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert gpnn.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            gpnn.resolve_device("cuda")


def test_gpnn_options_map_every_config_key_but_the_noise():
    config = GpnnConfig(patch_size=(1, 3, 3), exact_search=True, device="cpu", start_scale=1)
    options = gpnn.gpnn_options(config)
    assert options["search_radius"] is None  # exact search
    assert options["device"] == torch.device("cpu")
    assert options["patch_size"] == (1, 3, 3) and options["start_scale"] == 1
    windowed = gpnn.gpnn_options(GpnnConfig(search_radius=(0, 2, 2), device="cpu"))
    assert windowed["search_radius"] == (0, 2, 2)
    # every option is a keyword of generate_gpnn, and only the start (and the pyramid) is left:
    # the noise, and the zoom, shift and copy bound of the samples' layouts
    # (train.sample_start_*; the baseline keeps every draw, GPNN's rule)
    import inspect

    keywords = set(inspect.signature(gpnn.generate_gpnn).parameters)
    assert set(options) <= keywords
    start = {"noise_sd", "zoom_sd", "shift_sd", "max_correlation", "max_draws"}
    assert keywords - set(options) == {"pyramid_volumes", "num_samples", "seed", *start}


def test_evaluate_gpnn_has_the_evaluate_layout_and_timing(segmenter, tmp_path):
    from types import SimpleNamespace

    from ctgan.evaluate import write_metrics
    from ctgan.metrics import FAMILIES

    pyramid = SimpleNamespace(volumes=tiny_pyramid(), spacings_zyx_mm=SPACINGS)
    config = GpnnConfig(patch_size=(3, 5, 5), iterations=1, finest_iterations=1, device="cpu")
    result, samples, noise_free = baseline.evaluate_gpnn(pyramid, config, segmenter, 2, "smoke")
    assert (result["name"], result["model"], result["setting"]) == ("gpnn", "gpnn", "-")
    assert result["num_samples"] == 2 and result["seeds"] == [0] and result["profile"] == "smoke"
    assert all(result[family] for family in FAMILIES)
    assert result["psnr"] == result["reconstruction"]["psnr"]["mean"] > 60  # noise-free = real
    assert "frechet_axial" in result["realism"]
    assert result["timing"]["seconds_per_sample"] > 0 and result["timing"]["device"] == "cpu"
    assert samples.shape == (2, *SHAPES[-1]) and noise_free.shape == SHAPES[-1]
    written = json.loads(write_metrics(tmp_path / "gpnn.json", result).read_text())
    assert written["timing"] == result["timing"] and written["notes"]["gpnn"]["iterations"] == 1


def test_save_samples_writes_float32_arrays(tmp_path):
    samples = np.zeros((2, *SHAPES[-1]), np.float64)
    path = baseline.save_samples(
        tmp_path / "gpnn" / "samples.npz", samples, samples[0], SPACINGS[-1]
    )
    with np.load(path) as data:
        assert data["samples"].dtype == np.float32 and data["samples"].shape == samples.shape
        assert data["noise_free"].shape == SHAPES[-1]
        np.testing.assert_allclose(data["spacing_zyx_mm"], SPACINGS[-1], rtol=1e-6)
    with pytest.raises(ValueError, match=r"samples must be \(K, D, H, W\)"):
        baseline.save_samples(tmp_path / "bad.npz", samples[0], samples[0], SPACINGS[-1])


def test_config_reads_the_gpnn_section_of_every_profile_and_rejects_bad_keys():
    for profile in ("smoke", "cpu", "paper"):
        cfg = load_config(REPO / "params.yaml", profile=profile)
        assert len(cfg.gpnn.patch_size) == 3 and cfg.gpnn.noise_sd > 0
    params = yaml.safe_load((REPO / "params.yaml").read_text()) | {"gpnn": {"noise_sd": 2.0}}
    assert resolve_config(params).gpnn.noise_sd == 2.0
    with pytest.raises(ValueError, match="unknown key 'sigma' in gpnn"):
        resolve_config({**params, "gpnn": {"sigma": 1.0}})
    with pytest.raises(ValueError, match="gpnn.exact_search must be true or false"):
        resolve_config({**params, "gpnn": {"exact_search": 1}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": (3, 0, 7)}, "gpnn.patch_size must be"),
        ({"search_radius": (1, -1, 1)}, "gpnn.search_radius must be"),
        ({"iterations": 0}, "gpnn.iterations must be >= 1"),
        ({"finest_iterations": 0}, "gpnn.finest_iterations must be >= 1"),
        ({"chunk_size": 0}, "gpnn.chunk_size must be >= 1"),
        ({"alpha": 0.0}, "gpnn.alpha must be > 0"),
        ({"noise_sd": -0.5}, "gpnn.noise_sd must be >= 0"),
        ({"start_scale": -1}, "gpnn.start_scale must be >= 0"),
        ({"device": "tpu"}, "gpnn.device must be one of"),
    ],
)
def test_gpnn_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GpnnConfig(**kwargs)


@pytest.mark.slow
def test_notebook_writes_metrics_samples_and_figures(tmp_path, segmenter):
    import papermill

    from ctgan.metrics import FAMILIES
    from ctgan.preprocess import TrainingPyramid, save_pyramid
    from ctgan.segmenter import save_segmenter

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    config = load_config(params_path)
    volumes = tiny_pyramid()
    meta = {"scale_shapes": [list(s) for s in SHAPES], "scale_spacings_zyx_mm": SPACINGS}
    masks = [(v < -0.5).astype(np.float32) for v in volumes]
    zeros = [np.zeros_like(v) for v in volumes]
    save_pyramid(TrainingPyramid(volumes, masks, zeros, SPACINGS, meta), tmp_path / "pre")
    save_segmenter(segmenter, tmp_path / "segmenter.pt", config.segmenter)
    metrics_path = tmp_path / "metrics" / "gpnn.json"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "03_gpnn.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "params_path": str(params_path),
            "pyramid_dir": str(tmp_path / "pre"),
            "segmenter_path": str(tmp_path / "segmenter.pt"),
            "out_dir": str(tmp_path / "models" / "gpnn"),
            "metrics_path": str(metrics_path),
        },
        kernel_name="python3",
        cwd=str(REPO),
    )
    written = json.loads(metrics_path.read_text())
    assert written["name"] == "gpnn" and written["num_samples"] == config.evaluate.num_samples
    assert all(written[family] for family in FAMILIES)
    assert written["timing"]["seconds_per_sample"] > 0
    with np.load(tmp_path / "models" / "gpnn" / "samples.npz") as data:
        assert data["samples"].shape == (config.evaluate.num_samples, *SHAPES[-1])
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    images = [
        output
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 4  # real, samples, the report's gallery, HU histograms
    assert (tmp_path / "models" / "gpnn" / "gallery.png").is_file()
    assert written["gallery"].endswith("gallery.png")


def test_start_estimate_moves_the_volume_only_when_asked():
    real = torch.as_tensor(tiny_pyramid()[0])
    plain = gpnn.start_estimate(real, torch.Generator().manual_seed(3), 0.5)
    noise = torch.randn(tuple(real.shape), generator=torch.Generator().manual_seed(3)) * 0.5
    assert torch.equal(plain, real + noise)  # GPNN's start: the volume plus noise, as before
    first = gpnn.start_estimate(real, torch.Generator().manual_seed(3), 0.5, 0.1, 1.0)
    again = gpnn.start_estimate(real, torch.Generator().manual_seed(3), 0.5, 0.1, 1.0)
    assert torch.equal(first, again)
    moved = first - noise  # the same noise is drawn first; the zoom and shift come after it
    assert not torch.allclose(moved, real, atol=0.05)
    assert moved.min() >= real.min() - 1e-5 and moved.max() <= real.max() + 1e-5  # resampled
    # a vanishing shift and no zoom give the volume back
    shifted = gpnn.start_estimate(real, torch.Generator().manual_seed(3), 0.0, 0.0, 1e-9)
    torch.testing.assert_close(shifted, real)


def test_zoomed_starts_give_other_samples_and_keep_the_seed_rule():
    volumes = tiny_pyramid()
    plain = gpnn.generate_gpnn(volumes, 2, seed=4, noise_sd=0.5, **FAST)
    moved = gpnn.generate_gpnn(volumes, 2, seed=4, noise_sd=0.5, zoom_sd=0.2, shift_sd=2.0, **FAST)
    again = gpnn.generate_gpnn(volumes, 1, seed=4, noise_sd=0.5, zoom_sd=0.2, shift_sd=2.0, **FAST)
    assert not np.allclose(plain, moved, atol=0.05)
    assert np.array_equal(again[0], moved[0])  # sample i depends only on the seed and i


def test_correlation_is_pearsons():
    volume = torch.as_tensor(tiny_pyramid()[0])
    assert gpnn.correlation(volume, volume) == pytest.approx(1.0)
    assert gpnn.correlation(-3 * volume + 1, volume) == pytest.approx(-1.0)
    assert gpnn.correlation(torch.zeros_like(volume), volume) == 0.0  # constant: no correlation
    with pytest.raises(ValueError, match="same shape"):
        gpnn.correlation(volume, volume[:-1])


def test_samples_that_give_the_scan_back_are_drawn_again(caplog):
    """``max_correlation``: a sample at or over the bound is replaced by a later draw of its own
    generator; samples under it are the same as without the bound."""
    volumes = tiny_pyramid()
    options = {**FAST, "noise_sd": 0.6, "zoom_sd": 0.15, "shift_sd": 1.0}
    free = gpnn.generate_gpnn(volumes, 6, seed=2, **options)
    real = torch.as_tensor(volumes[-1])
    first = [gpnn.correlation(torch.as_tensor(v), real) for v in free]
    bound = float(np.median(first))  # about half of the first draws are "copies" at this bound
    guarded = gpnn.generate_gpnn(volumes, 6, seed=2, max_correlation=bound, **options)
    again = gpnn.generate_gpnn(volumes, 6, seed=2, max_correlation=bound, **options)
    assert np.array_equal(guarded, again)
    for k, correlation in enumerate(first):
        if correlation < bound:
            assert np.array_equal(guarded[k], free[k])  # kept as drawn
        else:
            assert not np.allclose(guarded[k], free[k], atol=1e-3)  # drawn again
            assert gpnn.correlation(torch.as_tensor(guarded[k]), real) < correlation
    # no noise and no move: every draw is the scan; the least correlated is kept, with a warning
    with caplog.at_level("WARNING", logger="ctgan.gpnn"):
        copy = gpnn.generate_gpnn(
            volumes, 1, seed=0, noise_sd=0.0, max_correlation=0.98, max_draws=3, **FAST
        )
    np.testing.assert_allclose(copy[0], volumes[-1], atol=1e-5)
    assert "all 3 draws correlate >= 0.98 with the scan" in caplog.text


def test_move_in_plane_zooms_about_the_centre_and_shifts_by_voxels():
    volume = torch.zeros(3, 9, 9)
    volume[:, 4, 4] = 1.0  # one bright column at the centre
    assert torch.equal(gpnn.move_in_plane(volume, 1.0, 1.0, 0.0, 0.0), volume)
    shifted = gpnn.move_in_plane(volume, 1.0, 1.0, 1.0, -2.0)  # +1 voxel in y, -2 in x
    assert torch.allclose(shifted[:, 5, 2], torch.ones(3), atol=1e-6)
    assert float(shifted.sum()) == pytest.approx(3.0, abs=1e-5)
    ramp = torch.linspace(0, 1, 9).expand(3, 9, 9).clone()  # rises along x
    zoomed = gpnn.move_in_plane(ramp, 1.0, 2.0, 0.0, 0.0)  # x enlarged twice about the centre
    assert torch.allclose(zoomed[:, :, 4], ramp[:, :, 4], atol=1e-6)
    assert torch.allclose(zoomed[:, :, 8], ramp[:, :, 6], atol=1e-6)
