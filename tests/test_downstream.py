"""The downstream test: its runs (ctgan.downstream), statistics and verdicts (downstream_stats),
and its section of the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ctgan.config import SegmenterConfig
from ctgan.downstream import (
    GPNN,
    LabelledSet,
    Run,
    generated_volumes,
    held_out_scans,
    run_all,
    train_and_test,
)
from ctgan.downstream_stats import (
    downstream_table,
    paired_difference,
    summarise,
    verdict_text,
)
from ctgan.phantom import write_phantom_dataset
from ctgan.report import downstream_section


def _runs(real: list[float], mixed: list[float], synthetic: list[float]) -> list[dict]:
    runs = []
    for seed, (a, b, c) in enumerate(zip(real, mixed, synthetic, strict=True)):
        for generator, arm, value in (("-", "real", a), ("3d-B", "real+synthetic", b)):
            runs.append(
                {
                    "generator": generator,
                    "arm": arm,
                    "seed": seed,
                    "dice_lungs": value,
                    "dice_nodules": None,
                }
            )
        runs.append(
            {
                "generator": "3d-B",
                "arm": "synthetic",
                "seed": seed,
                "dice_lungs": c,
                "dice_nodules": None,
            }
        )
    return runs


def _result(runs: list[dict]) -> dict:
    return {
        "runs": runs,
        "summary": summarise(runs, ["3d-B"]),
        "config": {
            "num_volumes": 8,
            "seeds": 3,
            "base_channels": 8,
            "iterations": 60,
            "segmenter_crop_size": [8, 32, 32],
        },
        "test_scans": ["a", "b"],
        "shape": [10, 63, 63],
        "paired_mask_trust": {"3d-B": {"mean": 0.9, "min": 0.8, "n": 24}},
    }


def test_paired_difference_is_students_t_on_the_per_seed_differences():
    base = {0: 0.70, 1: 0.72, 2: 0.68}
    other = {0: 0.80, 1: 0.79, 2: 0.81}
    diff = paired_difference(base, other)
    d = np.array([0.10, 0.07, 0.13])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(d.mean())
    assert diff["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert diff["verdict"] == "helped"


@pytest.mark.parametrize(
    ("other", "verdict"),
    [
        ({0: 0.60, 1: 0.61, 2: 0.59}, "hurt"),
        ({0: 0.80, 1: 0.60, 2: 0.71}, "no resolved difference"),
    ],
)
def test_paired_difference_verdicts(other, verdict):
    assert paired_difference({0: 0.70, 1: 0.72, 2: 0.68}, other)["verdict"] == verdict


def test_paired_difference_of_one_seed_has_no_interval():
    diff = paired_difference({0: 0.5}, {0: 0.9, 1: 0.1})
    assert diff["n"] == 1 and diff["ci95"] is None and diff["verdict"] == "no resolved difference"


def test_paired_difference_needs_a_common_seed():
    with pytest.raises(ValueError, match="no seed has a score in both arms"):
        paired_difference({0: 0.5}, {1: 0.6})


def test_summary_table_and_verdict_agree_with_the_numbers():
    result = _result(_runs([0.70, 0.72, 0.68], [0.80, 0.79, 0.81], [0.60, 0.61, 0.59]))
    entry = result["summary"]["3d-B"]
    assert entry["arms"]["real"]["lungs"]["mean"] == pytest.approx(0.70)
    assert entry["arms"]["real"]["nodules"] is None  # no held-out nodule: undefined, not 0
    assert entry["differences"]["real+synthetic"]["lungs"]["verdict"] == "helped"
    assert entry["differences"]["synthetic"]["lungs"]["verdict"] == "hurt"
    assert entry["differences"]["synthetic"]["nodules"] is None
    table = downstream_table(result)
    assert table.count("\n") == 2 + 3 - 1  # header, rule, three arms
    assert "0.800 ± 0.010" in table and "+0.100" in table and "helped" in table
    text = verdict_text(result)
    assert "adding 8 of its volumes to the real scan helped: lung Dice +0.100" in text
    assert "training on 8 of its volumes alone hurt: lung Dice -0.100" in text
    assert "Nodules" not in text  # no nodule score at all: nothing to say


def test_verdict_says_when_no_run_found_a_nodule():
    runs = _runs([0.70, 0.72, 0.68], [0.80, 0.79, 0.81], [0.60, 0.61, 0.59])
    for run in runs:
        run["dice_nodules"] = 0.0
    assert "every run's nodule Dice is 0" in verdict_text(_result(runs))
    runs[0]["dice_nodules"] = 0.2
    assert "every run's nodule Dice is 0" not in verdict_text(_result(runs))


def test_labelled_sets_add_up():
    one = LabelledSet(["a"], [np.zeros((2, 2, 2))], [np.zeros((2, 2, 2))], [np.zeros((2, 2, 2))])
    both = one + one
    assert len(both) == 2 and both.names == ["a", "a"]


def test_held_out_scans_leave_out_the_training_scan_and_resize(tmp_path):
    uids = write_phantom_dataset(tmp_path / "phantom", scans=2, seed=0, size=64)
    test = held_out_scans(tmp_path / "phantom", uids[0], (6, 20, 20), limit=5)
    assert test.names == [uids[1]]
    assert test.volumes[0].shape == test.lungs[0].shape == (6, 20, 20)
    assert test.volumes[0].min() >= -1 and test.lungs[0].max() <= 1 and test.lungs[0].any()


def test_held_out_scans_follow_the_pyramids_anti_aliasing(tmp_path):
    uids = write_phantom_dataset(tmp_path / "phantom", scans=2, seed=0, size=64)
    plain = held_out_scans(tmp_path / "phantom", uids[0], (6, 20, 20), limit=5)
    smooth = held_out_scans(tmp_path / "phantom", uids[0], (6, 20, 20), 5, anti_aliasing=True)
    np.testing.assert_array_equal(plain.lungs[0], smooth.lungs[0])  # masks are labels
    assert not np.array_equal(plain.volumes[0], smooth.volumes[0])
    assert (
        np.abs(np.diff(smooth.volumes[0], axis=2)).mean()
        < np.abs(np.diff(plain.volumes[0], axis=2)).mean()
    )


def test_held_out_scans_refuse_a_folder_with_only_the_training_scan(tmp_path):
    uids = write_phantom_dataset(tmp_path / "phantom", scans=1, seed=0, size=64)
    with pytest.raises(ValueError, match="holds no scan other than the training scan"):
        held_out_scans(tmp_path / "phantom", uids[0], (6, 20, 20), limit=5)


def _gpnn_samples(models: Path, count: int) -> np.ndarray:
    samples = np.stack([np.full((4, 8, 8), i / 10, dtype=np.float32) for i in range(count)])
    (models / GPNN).mkdir(parents=True)
    np.savez(models / GPNN / "samples.npz", samples=samples)
    return samples


def test_gpnn_volumes_are_a_seeded_subset_of_its_samples(tmp_path):
    samples = _gpnn_samples(tmp_path, 6)
    drawn = generated_volumes(GPNN, tmp_path, 3, seeds=[0, 1])
    first = drawn[0]
    assert first.shape == (3, 4, 8, 8)
    assert all(any(np.array_equal(v, s) for s in samples) for v in first)
    assert np.array_equal(first, generated_volumes(GPNN, tmp_path, 3, seeds=[0])[0])
    assert not np.array_equal(first, drawn[1])


def test_gpnn_volumes_need_enough_samples_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the gpnn stage"):
        generated_volumes(GPNN, tmp_path, 3, seeds=[0])
    _gpnn_samples(tmp_path, 2)
    with pytest.raises(ValueError, match="lower downstream.num_volumes"):
        generated_volumes(GPNN, tmp_path, 3, seeds=[0])


def _blob_set(count: int, seed: int) -> LabelledSet:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:8, :24, :24]
    volumes, lungs = [], []
    for _ in range(count):
        cy, cx = rng.integers(8, 16, size=2)
        lung = ((y - cy) ** 2 + (x - cx) ** 2 < 30).astype(np.float32)
        volumes.append(np.where(lung > 0, -0.8, 0.1).astype(np.float32))
        lungs.append(lung)
    return LabelledSet(
        [f"v{i}" for i in range(count)], volumes, lungs, [np.zeros_like(v) for v in lungs]
    )


def test_train_and_test_scores_every_held_out_scan():
    cfg = SegmenterConfig(crop_size=(4, 8, 8), base_channels=2, iterations=2, batch_size=2, lr=1e-3)
    row = train_and_test(_blob_set(2, 0), _blob_set(2, 1), cfg, seed=0)
    assert row["train_volumes"] == 2
    assert len(row["dice_lungs_per_scan"]) == 2
    assert 0 <= row["dice_lungs"] <= 1
    assert row["dice_nodules"] is None  # no nodule voxel in the held-out scans


def test_train_and_test_in_bf16_scores_every_held_out_scan():
    """bf16 autocast: the probabilities come out in bf16, and the Dice still reads them."""
    cfg = SegmenterConfig(crop_size=(4, 8, 8), base_channels=2, iterations=2, batch_size=2, lr=1e-3)
    row = train_and_test(_blob_set(2, 0), _blob_set(2, 1), cfg, seed=0, precision="bf16")
    assert len(row["dice_lungs_per_scan"]) == 2
    assert 0 <= row["dice_lungs"] <= 1


def _planned_runs() -> list[Run]:
    return [Run("-", "real", seed, _blob_set(2, seed)) for seed in range(3)]


@pytest.mark.slow  # two spawned processes import torch
def test_runs_in_worker_processes_equal_the_runs_in_this_one():
    """Workers change where a run happens, not its result: 2 processes x 1 thread give the rows
    of 1 thread here, in the planned order, and report every run as it ends."""
    import torch

    cfg = SegmenterConfig(crop_size=(4, 8, 8), base_channels=2, iterations=3, batch_size=2, lr=1e-3)
    test = _blob_set(2, 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = run_all(_planned_runs(), test, cfg, workers=1)
    finally:
        torch.set_num_threads(threads)
    seen: list[int] = []
    torch.set_num_threads(2)  # 2 workers: 1 thread each
    try:
        there = run_all(
            _planned_runs(), test, cfg, workers=2, done=lambda run, row: seen.append(run.seed)
        )
    finally:
        torch.set_num_threads(threads)
    assert sorted(seen) == [0, 1, 2]
    drop = ("seconds", "train_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in there] == [
        {k: v for k, v in r.items() if k not in drop} for r in here
    ]


def test_report_section_says_when_the_test_is_missing(tmp_path):
    lines = downstream_section(tmp_path, tmp_path, Path("figures"))
    assert any("Not measured" in line and "dvc repro downstream" in line for line in lines)


def test_report_section_carries_the_table_the_verdict_and_the_figure(tmp_path):
    result = _result(_runs([0.70, 0.72, 0.68], [0.80, 0.79, 0.81], [0.60, 0.61, 0.59]))
    result["verdict"] = verdict_text(result)
    figure = tmp_path / "made" / "downstream.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    result["figure"] = str(figure)
    (tmp_path / "downstream.json").write_text(json.dumps(result))
    figures = tmp_path / "figures"
    figures.mkdir()
    text = "\n".join(downstream_section(tmp_path, figures, Path("figures")))
    assert result["verdict"] in text
    assert downstream_table(result, {"gpnn": "GPNN (no training)"}) in text
    assert "![Dice per training set](figures/downstream.png)" in text
    assert (figures / "downstream.png").read_bytes() == b"png"
