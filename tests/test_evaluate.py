"""ctgan.evaluate: seed folders, mean ± sd over seeds, and the metrics file of one model-setting."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import untrained_smoke_model

from ctgan import evaluate, figures, metrics
from ctgan.config import load_config, scale_shapes
from ctgan.intensity import hu_to_network, network_to_hu
from ctgan.preprocess import TrainingPyramid

REPO = Path(__file__).resolve().parents[1]
SPACINGS = [(4.0, 3.0, 3.0), (2.857, 2.0, 2.0)]


def smoke_shapes() -> list[tuple[int, int, int]]:
    return scale_shapes(load_config(REPO / "params.yaml", setting="3d-B", profile="smoke").pyramid)


def fake_pyramid() -> TrainingPyramid:
    """A smoke-sized pyramid of a tiny chest: air, an elliptic body (40 HU), two lungs."""
    volumes = []
    for depth, height, width in smoke_shapes():
        z, y, x = np.meshgrid(
            np.linspace(-1, 1, depth),
            np.linspace(-1, 1, height),
            np.linspace(-1, 1, width),
            indexing="ij",
        )
        hu = np.full((depth, height, width), -1000.0)
        hu[(y / 0.75) ** 2 + (x / 0.9) ** 2 < 1] = 40.0
        for centre in (-0.4, 0.4):
            hu[(y / 0.45) ** 2 + ((x - centre) / 0.3) ** 2 + (z / 1.4) ** 2 < 1] = -850.0
        volumes.append(np.asarray(hu_to_network(hu), dtype=np.float32))
    zeros = [np.zeros_like(v) for v in volumes]
    meta = {
        "seriesuid": "1.2.3",
        "source": "phantom",
        "origin_xyz_mm": [0.0, 0.0, 0.0],
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "spacing_xyz_mm": [0.7, 0.7, 2.5],
        "shape_zyx": [8, 64, 64],
    }
    return TrainingPyramid(
        volumes, [(v < -0.5).astype(np.float32) for v in volumes], zeros, SPACINGS, meta
    )


def fake_model(seed: int) -> types.SimpleNamespace:
    """A TrainedModel-like object with an untrained smoke-sized 3D pyramid."""
    model = untrained_smoke_model(seed)
    model.scale_spacings_zyx_mm = SPACINGS
    return model


def fake_model_folder(root: Path, seeds: list[int]) -> Path:
    model_dir = root / "models" / "3d-B"
    for k in seeds:
        (model_dir / f"seed{k}").mkdir(parents=True)
        (model_dir / f"seed{k}" / "checkpoint.pt").write_bytes(b"")
    return model_dir


@pytest.fixture
def fake_loader(monkeypatch):
    def load(folder: Path, device: str):
        return fake_model(int(folder.name.removeprefix("seed")))

    monkeypatch.setattr(evaluate, "_load_trained", load)


def test_seed_folders_are_sorted_by_number_and_need_a_checkpoint(tmp_path):
    model_dir = fake_model_folder(tmp_path, [10, 2, 0])
    (model_dir / "seed7").mkdir()  # no checkpoint: not a trained seed
    (model_dir / "notes").mkdir()
    assert [k for k, _ in evaluate.seed_folders(model_dir)] == [0, 2, 10]


def test_seed_folders_reject_missing_or_empty_model_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder .* not found"):
        evaluate.seed_folders(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"holds no seed<k>/checkpoint.pt"):
        evaluate.seed_folders(tmp_path)


def test_summarise_seeds_gives_mean_sample_sd_and_the_values():
    summary = evaluate.summarise_seeds([{"f": {"m": 1.0}}, {"f": {"m": 3.0}}])
    assert summary["f"]["m"] == {
        "mean": 2.0,
        "sd": pytest.approx(math.sqrt(2)),
        "per_seed": [1.0, 3.0],
    }
    assert evaluate.summarise_seeds([{"f": {"m": 5.0}}])["f"]["m"]["sd"] == 0.0
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate.summarise_seeds([])


def test_evaluate_trained_rejects_bad_sample_counts_and_shapes(segmenter):
    model, pyramid = fake_model(0), fake_pyramid()
    real = pyramid.volumes[-1]
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        evaluate.evaluate_trained(model, real, SPACINGS[-1], segmenter, 1)
    with pytest.raises(ValueError, match="differs from the training volume"):
        evaluate.evaluate_trained(model, pyramid.volumes[0], SPACINGS[0], segmenter, 2)


def test_evaluate_model_writes_every_family_finite_with_k_and_seeds(
    tmp_path, fake_loader, segmenter
):
    model_dir = fake_model_folder(tmp_path, [0, 1])
    result = evaluate.evaluate_model(
        model_dir, fake_pyramid(), segmenter, 3, seed=5, progress=False
    )
    path = evaluate.write_metrics(tmp_path / "metrics" / "3d-B.json", result)
    written = json.loads(path.read_text())
    assert written["num_samples"] == 3 and written["seeds"] == [0, 1]
    assert (written["name"], written["model"], written["setting"]) == ("3d-B", "3d", "B")
    for family in metrics.FAMILIES:
        assert written[family], family
        for name, entry in written[family].items():
            assert len(entry["per_seed"]) == 2, name
            assert math.isfinite(entry["mean"]) and math.isfinite(entry["sd"]), name
    assert set(written["realism"]) >= {f"frechet_{p}" for p in metrics.PLANES}
    assert {"max_ssim_to_training", "copies_of_training"} <= set(written["memorisation"])
    for name in ("mse", "psnr", "ssim"):
        assert written[name] == written["reconstruction"][name]["mean"]
    # two different untrained models: their reconstructions differ, so sd > 0
    assert written["reconstruction"]["mse"]["sd"] > 0
    assert written["notes"]["lung_method"] == "segmenter"
    # per-sample anatomy: one list of K values per seed; the verdict counts them
    chest_like = written["per_sample"]["chest_like"]
    assert [len(values) for values in chest_like] == [3, 3]
    assert written["verdict"]["chest_like_count"]["per_seed"] == [sum(v) for v in chest_like]
    assert written["verdict"]["chest_like_of"]["mean"] == 3
    assert written["anatomy"]["chest_like_real"]["mean"] == 1.0  # the tiny chest against itself
    assert written["config"]["profile"] == "smoke" and written["config"]["setting"] == "3d-B"
    assert "train" in written["config"] and "data" not in written["config"]
    assert written["notes"]["chest_like_criteria"]["tissue_l1_max"] == 0.15


def test_evaluate_model_without_segmenter_leaves_out_frechet_only(tmp_path, fake_loader):
    model_dir = fake_model_folder(tmp_path, [0])
    result = evaluate.evaluate_model(model_dir, fake_pyramid(), None, 2, progress=False)
    assert not any(name.startswith("frechet_") for name in result["realism"])
    assert "lung_fraction" in result["realism"] and result["notes"]["lung_method"] == "threshold"
    assert result["reconstruction"]["psnr"]["sd"] == 0.0


def test_evaluate_model_samples_returns_the_volumes_the_metrics_scored(tmp_path, fake_loader):
    from ctgan.sample import reconstruct, sample_volumes

    model_dir = fake_model_folder(tmp_path, [3, 1])
    result, samples, reconstruction = evaluate.evaluate_model_samples(
        model_dir, fake_pyramid(), None, 3, seed=5, progress=False
    )
    first = fake_model(1)  # the lowest seed folder
    drawn = sample_volumes(first, 3, seed=5, batch_size=1, progress=False, precision="float32")
    np.testing.assert_array_equal(samples, drawn)
    np.testing.assert_array_equal(reconstruction, reconstruct(first, precision="float32"))
    alone = evaluate.evaluate_model(model_dir, fake_pyramid(), None, 3, seed=5, progress=False)
    assert json.dumps(result, sort_keys=True) == json.dumps(alone, sort_keys=True)
    assert result["seeds"] == [1, 3]


def test_write_metrics_and_check_finite_reject_bad_results(tmp_path):
    with pytest.raises(ValueError, match="metrics result lacks num_samples"):
        evaluate.write_metrics(tmp_path / "m.json", {"seeds": [0]})
    broken = {family: {} for family in metrics.FAMILIES}
    broken["realism"] = {"hu_wasserstein": {"mean": math.nan, "sd": 0.0, "per_seed": [math.nan]}}
    with pytest.raises(ValueError, match="metric realism.hu_wasserstein is not finite"):
        evaluate.check_finite(broken)


@pytest.mark.slow
def test_evaluate_model_on_a_smoke_trained_model(tmp_path, segmenter):
    from ctgan.train import train_model

    config = load_config(REPO / "params.yaml", setting="3d-B", profile="smoke")
    pyramid = fake_pyramid()
    model_dir = tmp_path / "models" / "3d-B"
    train_model(config, pyramid, model_dir / "seed0", seed=0)
    result = evaluate.evaluate_model(model_dir, pyramid, segmenter, 2, progress=False)
    assert result["seeds"] == [0] and result["num_samples"] == 2
    assert result["profile"] == "smoke"
    for family in metrics.FAMILIES:
        assert all(math.isfinite(v["mean"]) for v in result[family].values())


# --- report figures (ctgan.figures, evaluation part) -----------------------------------------


def figure_inputs():
    real_hu = network_to_hu(fake_pyramid().volumes[-1])
    samples_hu = np.stack([np.roll(real_hu, shift, axis=2) for shift in (0, 2, 4)])
    return real_hu, samples_hu


def test_comparison_grid_has_a_row_per_volume_and_a_column_per_height():
    real_hu, samples_hu = figure_inputs()
    figure = figures.comparison_grid_figure(real_hu, {"3d-B": samples_hu[1], "3d-D": samples_hu[2]})
    assert len(figure.axes) == 3 * 3
    assert [figure.axes[i].get_ylabel() for i in (0, 3, 6)] == ["ground truth", "3d-B", "3d-D"]
    plt.close(figure)
    with pytest.raises(ValueError, match="must name at least one volume"):
        figures.comparison_grid_figure(real_hu, {})
    with pytest.raises(ValueError, match="expected the ground truth's"):
        figures.comparison_grid_figure(real_hu, {"3d-B": real_hu[:-1]})
    with pytest.raises(ValueError, match="heights must be fractions"):
        figures.comparison_grid_figure(real_hu, {"3d-B": real_hu}, heights=(0.5, 2.0))


def test_samples_grid_and_hu_comparison():
    real_hu, samples_hu = figure_inputs()
    figure = figures.samples_grid_figure(samples_hu, SPACINGS[-1], count=2)
    assert len(figure.axes) == 2 * 3
    plt.close(figure)
    figure = figures.hu_comparison_figure(real_hu, samples_hu)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels == ["each sample", "all 3 samples", "real"]
    plt.close(figure)
    with pytest.raises(ValueError, match=r"samples_hu must be \(K, D, H, W\) with K >= 1"):
        figures.samples_grid_figure(real_hu)
    with pytest.raises(ValueError, match="count must be >= 1"):
        figures.samples_grid_figure(samples_hu, count=0)
    with pytest.raises(ValueError, match=r"samples_hu must be \(K, D, H, W\) with \(D, H, W\)"):
        figures.hu_comparison_figure(real_hu, samples_hu[:, :-1])


def test_metric_bars_show_mean_and_sd_per_setting():
    results = {
        "3d-A": {"reconstruction": {"psnr": {"mean": 20.0, "sd": 1.0}}},
        "3d-B": {"reconstruction": {"psnr": {"mean": 25.0, "sd": 0.0}}},
    }
    figure = figures.metric_bars_figure(results, "reconstruction", "psnr", paper={"3d-A": 22.6})
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [20.0, 25.0]
    plt.close(figure)
    with pytest.raises(ValueError, match="at least one setting"):
        figures.metric_bars_figure({}, "reconstruction", "psnr")
    with pytest.raises(ValueError, match="3d-A has no realism.frechet_axial"):
        figures.metric_bars_figure(results, "realism", "frechet_axial")


def test_training_curves_read_history_files(tmp_path):
    frame = pd.DataFrame(
        {
            "scale": [0, 0, 1, 1],
            "iteration": [0, 1, 0, 1],
            "d_loss": [1.0, 0.5, 0.7, 0.4],
            "g_adv": [0.2] * 4,
            "reconstruction": [0.3, 0.2, 0.1, 0.05],
            "rec_psnr": [10, 12, 15, 18],
        }
    )
    path = tmp_path / "history.tsv"
    frame.to_csv(path, sep="\t", index=False)
    figure = figures.training_curves_figure({"3d-B": path, "3d-C": frame})
    assert len(figure.axes) == 4
    assert len(figure.axes[0].get_lines()) == 2 + 1  # two runs + one scale boundary
    plt.close(figure)
    with pytest.raises(ValueError, match="must name at least one run"):
        figures.training_curves_figure({})
    with pytest.raises(ValueError, match="lacks column"):
        figures.training_curves_figure({"3d-B": frame.drop(columns="rec_psnr")})


def test_metrics_table_has_one_row_per_metric():
    summary = evaluate.summarise_seeds([{"reconstruction": {"psnr": 20.0, "mse": 0.01}}])
    table = evaluate.metrics_table(summary)
    assert list(table["metric"]) == ["psnr", "mse"]
    assert list(table.columns) == ["family", "metric", "mean", "sd", "per_seed"]
    with pytest.raises(ValueError, match="holds none of the families"):
        evaluate.metrics_table({"seeds": [0]})


@pytest.mark.slow
def test_notebook_writes_the_metrics_file_and_figures(tmp_path, segmenter):
    import papermill
    import yaml

    from ctgan.preprocess import save_pyramid
    from ctgan.segmenter import save_segmenter
    from ctgan.train import train_model

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    config = load_config(params_path, setting="3d-B")
    pyramid = fake_pyramid()
    pyramid.meta.update(
        scale_shapes=[list(s) for s in smoke_shapes()],
        scale_spacings_zyx_mm=[list(s) for s in SPACINGS],
    )
    save_pyramid(pyramid, tmp_path / "preprocessed")
    save_segmenter(segmenter, tmp_path / "segmenter.pt", config.segmenter)
    train_model(config, pyramid, tmp_path / "models" / "3d-B" / "seed0", seed=0)
    metrics_path = tmp_path / "metrics" / "3d-B.json"
    figures_dir = tmp_path / "reports" / "evaluate" / "3d-B"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "04_evaluate.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "params_path": str(params_path),
            "setting": "3d-B",
            "model_dir": str(tmp_path / "models" / "3d-B"),
            "pyramid_dir": str(tmp_path / "preprocessed"),
            "segmenter_path": str(tmp_path / "segmenter.pt"),
            "metrics_path": str(metrics_path),
            "figures_dir": str(figures_dir),
        },
        kernel_name="python3",
        cwd=str(REPO),
    )
    written = json.loads(metrics_path.read_text())
    assert written["num_samples"] == config.evaluate.num_samples and written["seeds"] == [0]
    assert all(written[family] for family in metrics.FAMILIES)
    for name in ("reconstruction.png", "samples.png", "hu_histogram.png", "gallery.png"):
        assert (figures_dir / name).is_file(), name


def test_sample_gallery_shows_the_real_volume_and_labels_each_sample():
    real_hu, samples_hu = figure_inputs()
    blob = np.full_like(real_hu, -1000.0)
    blob[2:5, 10:20, 10:20] = 300.0
    figure = figures.sample_gallery(
        real_hu, np.stack([*samples_hu, blob]), SPACINGS[-1], "3d-B", count=4
    )
    assert len(figure.axes) == 5 * 3
    labels = [figure.axes[i].get_ylabel() for i in range(0, 15, 3)]
    assert labels[0] == "real (training volume)"
    assert labels[1] == "sample 0: chest-like" and labels[4] == "sample 3: not chest-like"
    image = figure.axes[1].get_images()[0]
    assert image.get_clim() == (-1350.0, 150.0)  # lung window W 1500 / L -600
    assert figure.axes[1].get_aspect() == pytest.approx(SPACINGS[-1][0] / SPACINGS[-1][2])
    plt.close(figure)
    given = figures.sample_gallery(real_hu, samples_hu, SPACINGS[-1], chest_like=[False] * 3)
    assert given.axes[3].get_ylabel() == "sample 0: not chest-like"
    plt.close(given)
    with pytest.raises(ValueError, match="that is the networks' range, not HU"):
        figures.sample_gallery(real_hu / 1000, samples_hu / 1000, SPACINGS[-1])
    with pytest.raises(ValueError, match=r"samples_hu must be \(K, D, H, W\) with K >= 1"):
        figures.sample_gallery(real_hu, samples_hu[:, :-1], SPACINGS[-1])
    with pytest.raises(ValueError, match="count must be >= 1"):
        figures.sample_gallery(real_hu, samples_hu, SPACINGS[-1], count=0)
    with pytest.raises(ValueError, match="one flag per sample shown"):
        figures.sample_gallery(real_hu, samples_hu, SPACINGS[-1], chest_like=[True])


def test_anatomy_summary_and_per_sample_table(tmp_path, fake_loader):
    model_dir = fake_model_folder(tmp_path, [0, 1])
    result = evaluate.evaluate_model(model_dir, fake_pyramid(), None, 3, progress=False)
    summary = evaluate.anatomy_summary(result)
    assert list(summary.columns) == ["samples", "sd over seeds", "real"]
    assert summary.loc["chest_like", "real"] == 1.0
    assert summary.loc["tissue_l1", "real"] == 0.0
    table = evaluate.per_sample_table(result, seed_index=1)
    assert len(table) == 3 and "chest_like" in table.columns
    assert list(table["chest_like"]) == result["per_sample"]["chest_like"][1]
    with pytest.raises(ValueError, match="seed_index must be in"):
        evaluate.per_sample_table(result, seed_index=2)
    with pytest.raises(ValueError, match="no per_sample values"):
        evaluate.per_sample_table({})
    with pytest.raises(ValueError, match="holds no anatomy family"):
        evaluate.anatomy_summary({})
