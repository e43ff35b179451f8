"""benchmarks/gpu_paper.py, the paper's schedule on a GPU, run on the CPU in the smoke profile.

The GPU machine has no SimpleITK and no matplotlib: the end-to-end run blocks both in its
subprocess (a sitecustomize that sets ``sys.modules[name] = None``, so any import of them fails).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ctgan.config import load_config
from ctgan.luna16 import Luna16Folder
from ctgan.preprocess import TrainingPyramid, preprocess_scan, save_pyramid

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_paper.py"
BLOCKED = ("SimpleITK", "matplotlib")


@pytest.fixture
def gpu_paper(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_paper")


@pytest.fixture
def smoke_pyramid_dir(tiny_phantom: Path, tmp_path: Path) -> Path:
    """The smoke profile's pyramid of the tiny phantom's first scan, as data/preprocessed."""
    cfg = load_config(ROOT / "params.yaml", profile="smoke")
    pyramid = preprocess_scan(Luna16Folder(tiny_phantom), None, cfg.pyramid)
    return save_pyramid(pyramid, tmp_path / "preprocessed")


def blocking_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import SimpleITK or matplotlib."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED),
        encoding="utf-8",
    )
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


def finite_numbers(value: object) -> list[float]:
    """Every int/float inside a JSON value (bools excluded)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


@pytest.mark.slow
def test_the_script_runs_end_to_end_without_simpleitk(
    smoke_pyramid_dir: Path, tmp_path: Path
) -> None:
    env = blocking_env(tmp_path)
    for name in BLOCKED:  # the block works
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, cwd=ROOT)
        assert probe.returncode != 0, name
    out = tmp_path / "out"
    args = ["--profile", "smoke", "--pyramid-dir", str(smoke_pyramid_dir), "--out", str(out)]
    args += ["--iterations", "1", "--extra-precisions", "--peak-size", "128"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    summary = json.loads((out / "gpu_paper.json").read_text(encoding="utf-8"))
    steps = ["timing", "segmenter", "train_3d-D", "evaluate_3d-D", "train_2d-D", "evaluate_2d-D"]
    assert list(summary["steps"]) == steps
    for name in steps:
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["wall_s"] > 0 and record["peak_memory_bytes"] > 0
        assert "resident" in record["peak_memory_kind"]  # the CPU's measure, said so
        assert record["device"]["device"] == "cpu" and record["torch"] == record["device"]["torch"]
        assert (out / f"{name}.log").stat().st_size > 0
    assert summary["device"]["device"] == "cpu" and summary["torch"] == summary["device"]["torch"]

    timing = summary["steps"]["timing"]
    assert timing["modes"] == ["float32", "reference"]  # the smoke profile's precision first
    assert set(timing["peak_gflops_measured"]) == {"bf16", "float32", "float64"}
    head = summary["headline"]
    seconds = head["seconds_per_iteration_per_scale_3d_d"]
    assert {k: len(v) for k, v in seconds.items()} == {"float32": 2, "reference": 2}
    assert set(head["projected_schedule_s_3d_d"]) == {"float32", "reference"}
    assert head["ratio_reference_over_default_finest_3d_d"] > 0
    for key in (
        "seconds_per_iteration_per_scale_3d_d",
        "share_of_measured_peak_per_scale_3d_d",
        "projected_schedule_s_3d_d",
        "ratio_reference_over_default_finest_3d_d",
        "train_wall_s_3d_d",
        "reconstruction_3d_d_beside_paper",
        "peak_memory_bytes_per_step",
    ):
        numbers = finite_numbers(head[key])
        assert numbers and all(math.isfinite(x) for x in numbers), key
    assert head["trained_scales_3d_d"] == [2, 2]
    assert head["reconstruction_3d_d_beside_paper"]["psnr"]["paper_3d_d"] == 27.925

    segmenter = summary["steps"]["segmenter"]
    assert segmenter["source"].startswith("trained here") and segmenter["metrics"]["train_seconds"]
    assert Path(segmenter["path"]).is_file()
    metrics = summary["steps"]["evaluate_3d-D"]["metrics"]
    for family in ("reconstruction", "realism", "diversity", "memorisation"):
        assert metrics[family], family  # every family of the registry, realism included
    train = summary["steps"]["train_3d-D"]
    assert train["stopped"] is None and train["completed_scales"] == 2
    assert all(t > 0 for t in train["seconds_per_iteration_per_scale"])


@pytest.mark.slow
def test_a_budget_stops_before_a_scale_that_would_not_fit_and_evaluates_the_rest(
    gpu_paper: ModuleType, smoke_pyramid_dir: Path, segmenter, tmp_path: Path
) -> None:
    from ctgan.preprocess import load_pyramid

    cfg = load_config(ROOT / "params.yaml", setting="3d-D", profile="smoke")
    pyramid = load_pyramid(smoke_pyramid_dir)
    record: dict = {}
    now = gpu_paper.time.perf_counter()
    gpu_paper.train_with_budget(
        cfg, pyramid, segmenter, tmp_path / "3d-D", now + 3600, [0.0, 1e9], record
    )
    assert record["stopped"].startswith("stopped before scale 1")
    assert record["completed_scales"] == 1 and record["num_scales"] == 2
    assert record["seconds_per_iteration_per_scale"][0] > 0

    evaluation: dict = {}
    gpu_paper.evaluate(
        tmp_path / "3d-D", pyramid, segmenter, 1, 2, gpu_paper.torch.device("cpu"), evaluation
    )
    assert evaluation["evaluated_scale"] == 0
    assert evaluation["metrics"]["scale_shape"] == list(pyramid.shapes[0])
    assert math.isfinite(evaluation["reconstruction_beside_paper"]["ssim"]["ours"])


def test_a_budget_spent_before_the_first_scale_leaves_no_scale(
    gpu_paper: ModuleType, smoke_pyramid_dir: Path, segmenter, tmp_path: Path
) -> None:
    from ctgan.preprocess import load_pyramid

    cfg = load_config(ROOT / "params.yaml", setting="3d-A", profile="smoke")
    record: dict = {}
    deadline = gpu_paper.time.perf_counter()  # already spent
    pyramid = load_pyramid(smoke_pyramid_dir)
    gpu_paper.train_with_budget(cfg, pyramid, None, tmp_path / "3d-A", deadline, None, record)
    assert record["stopped"].startswith("stopped before scale 0")
    assert record["completed_scales"] == 0


def test_the_segmenter_needs_slices_to_hold_out(gpu_paper: ModuleType, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "params.yaml", setting="3d-D", profile="smoke")
    volume = np.zeros((2, 24, 24), dtype=np.float32)
    pyramid = TrainingPyramid([volume], [volume], [volume], [(1.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="has 2 slices: too few to hold out a slab"):
        gpu_paper.segmenter_from_pyramid(pyramid, cfg, gpu_paper.torch.device("cpu"), tmp_path, {})


def test_the_profiles_precision_comes_first_and_the_reference_last(gpu_paper: ModuleType) -> None:
    assert gpu_paper.timing_modes("float32", ["bf16"]) == ["float32", "bf16", "reference"]
    assert gpu_paper.timing_modes("bf16", ["bf16", "reference"]) == ["bf16", "reference"]
    assert gpu_paper.timing_modes("float32", []) == ["float32", "reference"]
    keys = gpu_paper.peak_keys(gpu_paper.torch.device("cpu"))
    assert keys == {"bf16": "bf16", "float32": "float32", "reference": "float64"}


def test_the_training_and_evaluation_modules_import_without_simpleitk(tmp_path: Path) -> None:
    code = (
        "import ctgan.train, ctgan.evaluate, ctgan.segmenter, ctgan.preprocess, ctgan.sample; "
        "import bench_train, gpu_paper"
    )
    env = blocking_env(tmp_path)
    env["PYTHONPATH"] += f"{os.pathsep}{ROOT / 'benchmarks'}"
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c", "from ctgan.luna16 import read_scan; read_scan('x.mhd')"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert "import of SimpleITK halted" in probe.stderr  # only reading a scan needs it
