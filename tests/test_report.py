"""ctgan.tables and ctgan.report: the realism tables (real row, verdicts, GPNN row), the
training procedure line, and a whole report built from fake models and metrics, with and
without metrics/gpnn.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import untrained_smoke_model
from test_evaluate import SPACINGS, fake_model_folder, fake_pyramid, smoke_shapes

from ctgan import evaluate, report, tables
from ctgan.io import write_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_result(tmp_path_factory) -> dict:
    """An evaluate_model result of an untrained smoke model (no segmenter), K = 3."""
    import ctgan.evaluate

    root = tmp_path_factory.mktemp("eval")
    model_dir = fake_model_folder(root, [0])
    original = ctgan.evaluate._load_trained
    ctgan.evaluate._load_trained = lambda folder, device: untrained_smoke_model(0)
    try:
        return evaluate.evaluate_model(model_dir, fake_pyramid(), None, 3, progress=False)
    finally:
        ctgan.evaluate._load_trained = original


def all_metrics(result: dict) -> dict[str, dict]:
    metrics = {}
    for name in tables.setting_names():
        values = copy.deepcopy(result)
        values["name"], values["model"], values["setting"] = name, name[:2], name[-1]
        metrics[name] = values
    return metrics


def gpnn_metrics(result: dict, **extra) -> dict:
    values = copy.deepcopy(result)
    values.update(name="gpnn", model="gpnn", timing={"seconds_per_sample": 1.25}, **extra)
    values["verdict"]["chest_like_count"] = {"mean": 7.0, "sd": 0.0, "per_seed": [7.0]}
    values["verdict"]["chest_like_of"] = {"mean": 8.0, "sd": 0.0, "per_seed": [8.0]}
    return values


def test_anatomy_table_has_the_real_row_first_and_the_gpnn_row_last(one_result):
    metrics = all_metrics(one_result)
    text = tables.anatomy_table(metrics, gpnn_metrics(one_result))
    lines = text.splitlines()
    assert len(lines) == 2 + 1 + 8 + 1
    assert lines[2].startswith("| *real (training volume)* | 1 of 1 (itself) |")
    real_lung = one_result["anatomy"]["lung_fraction_of_body_real"]["mean"]
    assert f"{real_lung:.3f}" in lines[2]
    assert lines[3].startswith("| 3d-A | ")
    assert lines[-1].startswith("| GPNN (no training) | 7 of 8 |")
    count = one_result["verdict"]["chest_like_count"]["mean"]
    assert f"| {count:g} of 3 |" in lines[3]
    assert "fails:" in lines[3] or "**passes**" in lines[3]
    without = tables.anatomy_table(metrics)
    assert "GPNN" not in without and len(without.splitlines()) == 2 + 1 + 8
    assert "GPNN" not in tables.tissue_table(metrics) and "GPNN" in tables.tissue_table(
        metrics, gpnn_metrics(one_result)
    )
    assert len(tables.realism_table(metrics, gpnn_metrics(one_result)).splitlines()) == 2 + 9


def test_verdict_and_chest_like_cells_read_old_files_as_n_a():
    assert tables.chest_like_cell({}) == "n/a" and tables.verdict_cell({}) == "n/a"
    verdict = {
        "passes": {"mean": 0.0},
        "enough_chest_like": {"mean": 0.0},
        "diverse": {"mean": 1.0},
        "not_copies": {"mean": 0.0},
        "chest_like_count": {"mean": 2.0, "sd": 0.0},
        "chest_like_of": {"mean": 8.0},
    }
    assert tables.verdict_cell({"verdict": verdict}) == "fails: too few chest-like, copies"
    assert tables.chest_like_cell({"verdict": verdict}) == "2 of 8"
    verdict["passes"] = {"mean": 1.0}
    assert tables.verdict_cell({"verdict": verdict}) == "**passes**"


def test_procedure_text_names_the_profile_and_any_realism_switch(one_result):
    metrics = all_metrics(one_result)
    names = [f"3d-{s}" for s in "ABCD"]
    assert tables.procedure_text(metrics, names) == (
        "Training procedure: profile `smoke`, the seed's training procedure (no realism switch)."
    )
    metrics["3d-B"]["config"]["train"]["noise_amplitude_scale"] = 0.1
    metrics["3d-B"]["config"]["realism"] = {"start_scale": 1}
    text = tables.procedure_text(metrics, names)
    assert "3d-B: profile `smoke`, realism switches `realism: {'start_scale': 1}`" in text
    assert "`train.noise_amplitude_scale: 0.1`" in text
    assert "3d-A, 3d-C, 3d-D: profile `smoke`, the seed's training procedure" in text
    metrics["3d-C"]["config"]["train"]["lr"] = 0.002  # the cpu profile's, not the seed's 5e-4
    assert "3d-C: profile `smoke`, realism switches `train.lr: 0.002`" in tables.procedure_text(
        metrics, names
    )
    metrics["3d-D"]["config"]["pyramid"]["anti_aliasing"] = False  # the seed's rule
    assert "3d-D: profile `smoke`, the seed's" in tables.procedure_text(metrics, ["3d-D", "3d-C"])
    metrics["3d-D"]["config"]["pyramid"]["anti_aliasing"] = True
    assert "3d-D: profile `smoke`, realism switches `pyramid.anti_aliasing: True`" in (
        tables.procedure_text(metrics, names)
    )
    del metrics["3d-A"]["config"]
    assert "(training config not recorded)" in tables.procedure_text(metrics, ["3d-A"])


def test_procedure_text_leaves_out_sampling_keys_that_change_nothing(one_result):
    metrics = all_metrics(one_result)
    recipe = {
        "sample_start_source": "gpnn",
        "sample_start_noise_sd": 2.25,
        "sample_noise_factor": 0.5,
        "adversarial_from_sample_start": True,
        "reconstruction_from_sample_start": True,
    }
    metrics["3d-D"]["config"]["train"].update(recipe, sample_start_scale=0)
    # from pure noise the start's keys do nothing; the noise factor still scales scales >= 1
    assert tables.procedure_text(metrics, ["3d-D"]) == (
        "Training procedure: profile `smoke`, realism switches `train.sample_noise_factor: 0.5`."
    )
    metrics["3d-D"]["config"]["setting"] = "2d-D"  # no noise above the coarsest scale
    assert "no realism switch" in tables.procedure_text(metrics, ["3d-D"])
    metrics["3d-B"]["config"]["train"].update(recipe, sample_start_scale=2)
    text = tables.procedure_text(metrics, ["3d-B"])
    for key, value in recipe.items():
        assert f"`train.{key}: {value}`" in text
    metrics["3d-B"]["config"]["train"]["sample_start_source"] = "real"
    assert "sample_start_noise_sd" not in tables.procedure_text(metrics, ["3d-B"])


def test_precision_text_says_what_auto_trained_in(one_result):
    def trained_in(precision):
        result = copy.deepcopy(one_result)
        result["config"]["train"]["precision"] = precision
        return result

    both = {"3d-A": trained_in("bf16"), "2d-A": trained_in("float32"), "x": {"name": "gpnn"}}
    assert report.precision_text("float32", both) == "`float32`"
    assert report.precision_text("auto", {"x": {}}) == "`auto`"
    assert report.precision_text("auto", {"3d-A": trained_in("bf16")}) == (
        "`auto` (the models trained in `bf16`)"
    )
    assert report.precision_text("auto", both) == (
        "`auto` (the models trained in `bf16` and `float32`)"
    )


def test_criteria_and_gpnn_texts_state_the_thresholds(one_result):
    criteria = tables.criteria_text()
    for needle in ("±30%", "2% of the body", "≤ 0.15", "≤ 50 HU", "75%", "≥ 0.2", "< 0.9"):
        assert needle in criteria, needle
    assert "absent" in tables.gpnn_text(None)
    text = tables.gpnn_text(gpnn_metrics(one_result))
    assert "GPNN (no training)" in text and "seconds_per_sample 1.25" in text


def test_every_setting_is_placed_against_gpnn_by_its_own_numbers(one_result):
    metrics = all_metrics(one_result)
    gpnn = gpnn_metrics(one_result)  # 7 of 8 chest-like
    gpnn["diversity"]["diversity"] = {"mean": 0.5, "sd": 0.0, "per_seed": [0.5]}
    for name, count, div in (("3d-B", 8.0, 0.9), ("3d-C", 7.0, 0.51), ("3d-D", 2.0, 0.1)):
        metrics[name]["verdict"]["chest_like_count"] = {"mean": count, "sd": 0.0}
        metrics[name]["verdict"]["chest_like_of"] = {"mean": 8.0, "sd": 0.0}
        metrics[name]["diversity"]["diversity"] = {"mean": div, "sd": 0.0}
    lines = {line[2:6]: line for line in tables.versus_gpnn_text(metrics, gpnn).splitlines()}
    # 8 vs 7 of 8: within one sample, level
    assert "realism level with" in lines["3d-B"] and "diversity ahead of" in lines["3d-B"]
    assert "realism level with" in lines["3d-C"] and "diversity level with" in lines["3d-C"]
    assert "realism behind" in lines["3d-D"] and "diversity behind" in lines["3d-D"]
    assert len([line for line in lines.values() if line.startswith("- ")]) == 8
    assert tables.versus_gpnn_text(metrics, None) == ""


def write_fake_repo(root: Path, result: dict) -> dict[str, Path]:
    """params (smoke), a saved pyramid, 8 model folders (fake checkpoints + histories), metrics."""
    from ctgan.preprocess import save_pyramid

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pyramid = fake_pyramid()
    pyramid.meta.update(
        scale_shapes=[list(s) for s in smoke_shapes()],
        scale_spacings_zyx_mm=[list(s) for s in SPACINGS],
    )
    save_pyramid(pyramid, root / "preprocessed")
    history = pd.DataFrame(
        {
            "scale": [0, 1],
            "iteration": [0, 0],
            "d_loss": [1.0, 0.5],
            "g_adv": [0.5, 0.4],
            "reconstruction": [0.2, 0.1],
            "rec_psnr": [15.0, 18.0],
        }
    )
    for name, values in all_metrics(result).items():
        seed = root / "models" / name / "seed0"
        seed.mkdir(parents=True)
        (seed / "checkpoint.pt").write_bytes(b"")
        history.to_csv(seed / "history.tsv", sep="\t", index=False)
        write_json(root / "metrics" / f"{name}.json", values)
    return {
        "params_path": root / "params.yaml",
        "models_dir": root / "models",
        "metrics_dir": root / "metrics",
        "pyramid_dir": root / "preprocessed",
        "report_path": root / "reports" / "ablation.md",
        "figures_dir": root / "reports" / "figures",
    }


@pytest.mark.slow
def test_build_report_with_and_without_gpnn(tmp_path, one_result, monkeypatch):
    import ctgan.train

    monkeypatch.setattr(ctgan.train, "load_trained", lambda folder, **_: untrained_smoke_model(0))
    paths = write_fake_repo(tmp_path, one_result)

    # without metrics/gpnn.json: no GPNN row, no failure
    markdown = report.build_report(**paths).read_text()
    assert "GPNN (no training) |" not in markdown and "`metrics/gpnn.json` absent" in markdown
    assert "| *real (training volume)* | 1 of 1 (itself) |" in markdown
    assert markdown.count("Training procedure: profile `smoke`") == 3  # 3D, 2D, realism
    figures_dir = paths["figures_dir"]
    for name in tables.setting_names():
        assert (figures_dir / f"gallery_{name}.png").is_file(), name
        assert f"](figures/gallery_{name}.png)" in markdown
    assert not (figures_dir / "gallery_gpnn.png").exists()

    # an evaluate stage's gallery named in its metrics file is copied, not drawn again
    drawn = tmp_path / "reports" / "evaluate" / "3d-C" / "gallery.png"
    drawn.parent.mkdir(parents=True)
    drawn.write_bytes(b"the evaluate stage's figure")
    with_gallery = json.loads((paths["metrics_dir"] / "3d-C.json").read_text())
    (paths["metrics_dir"] / "3d-C.json").write_text(
        json.dumps({**with_gallery, "gallery": str(drawn)})
    )
    report.build_report(**paths)
    assert (figures_dir / "gallery_3d-C.png").read_bytes() == drawn.read_bytes()
    assert (figures_dir / "gallery_3d-B.png").read_bytes() != drawn.read_bytes()

    # with metrics/gpnn.json and its gallery elsewhere: the row, its timing and its gallery
    elsewhere = tmp_path / "reports" / "gpnn" / "gallery.png"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes((figures_dir / "gallery_3d-B.png").read_bytes())
    gpnn = gpnn_metrics(one_result, gallery=str(elsewhere))
    (paths["metrics_dir"] / "gpnn.json").write_text(json.dumps(gpnn))
    markdown = report.build_report(**paths).read_text()
    assert "| GPNN (no training) | 7 of 8 |" in markdown
    assert "seconds_per_sample 1.25" in markdown
    assert (figures_dir / "gallery_gpnn.png").read_bytes() == elsewhere.read_bytes()
    assert "](figures/gallery_gpnn.png)" in markdown

    # a gallery already in the figures folder is used when gpnn.json names none
    del gpnn["gallery"]
    assert report.gpnn_gallery(gpnn, figures_dir) == figures_dir / "gallery_gpnn.png"
    (figures_dir / "gallery_gpnn.png").unlink()
    assert report.gpnn_gallery(gpnn, figures_dir) is None


def test_gallery_labels_match_the_metrics_per_sample_flags(one_result, monkeypatch, tmp_path):
    """The report's gallery draws the evaluation's own samples: same chest-like flags."""
    import ctgan.train
    from ctgan import anatomy
    from ctgan.intensity import network_to_hu

    monkeypatch.setattr(ctgan.train, "load_trained", lambda folder, **_: untrained_smoke_model(0))
    model_dir = fake_model_folder(tmp_path, [0])
    samples = report.gallery_samples_hu(model_dir, 3, one_result["sampling_seed"])
    flags = anatomy.chest_like_flags(network_to_hu(fake_pyramid().volumes[-1]), samples)
    assert [float(f) for f in flags] == one_result["per_sample"]["chest_like"][0]
    assert np.all(np.isfinite(samples))
