"""Reliability (issue 11): bad inputs not covered by the per-module tests, divergence, atomic
checkpoints, kill-and-resume, and data safety. The full catalogue is docs/reliability.md."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml
from test_pipeline import pipeline_env, smoke_repo  # noqa: F401 (a fixture)
from test_train import synthetic_pyramid, tiny_config

import ctgan.losses
import ctgan.nets
from ctgan.cli import main
from ctgan.config import Config, PyramidConfig, load_config, scale_shapes
from ctgan.luna16 import Luna16Folder, read_scan
from ctgan.phantom import write_phantom_dataset
from ctgan.preprocess import preprocess_scan
from ctgan.train import (
    CHECKPOINT_NAME,
    TrainingDiverged,
    load_trained,
    read_checkpoint,
    read_history,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def phantom_copy(tiny_phantom: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's tiny phantom (the test may damage it)."""
    return Path(shutil.copytree(tiny_phantom, tmp_path / "luna16"))


def first_header(root: Path) -> Path:
    return sorted(root.glob("subset0/*.mhd"))[0]


def rewrite_scan(header: Path, array: np.ndarray) -> None:
    like = sitk.ReadImage(str(header))
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(header), useCompression=False)


def smoke_pyramid() -> PyramidConfig:
    return load_config(ROOT / "params.yaml", profile="smoke").pyramid


# ---------------------------------------------------------------------------------------------
# Bad scans and data folders.


def test_header_with_dimsize_larger_than_the_voxel_file(phantom_copy: Path) -> None:
    header = first_header(phantom_copy)
    lines = header.read_text().splitlines()
    lines = [
        f"DimSize = {' '.join(str(int(v) * 2) for v in line.split('=')[1].split())}"
        if line.startswith("DimSize")
        else line
        for line in lines
    ]
    header.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cannot read .*\.mhd: .*needs \d+ bytes, .*holds \d+"):
        read_scan(header)


def test_constant_scan_is_refused(phantom_copy: Path) -> None:
    header = first_header(phantom_copy)
    rewrite_scan(header, np.full(sitk.GetArrayFromImage(sitk.ReadImage(str(header))).shape, -7))
    with pytest.raises(ValueError, match=r"scan .*\.mhd is constant \(-7 everywhere\)"):
        preprocess_scan(Luna16Folder(phantom_copy), None, smoke_pyramid())


def test_float_scan_with_nan_is_refused(phantom_copy: Path) -> None:
    header = first_header(phantom_copy)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(header))).astype(np.float32)
    array[2, 3, 4] = np.nan
    array[5, 6, 7] = np.inf
    rewrite_scan(header, array)
    with pytest.raises(ValueError, match=r"scan .*\.mhd holds 2 NaN or infinite voxels"):
        preprocess_scan(Luna16Folder(phantom_copy), None, smoke_pyramid())


def test_luna16_source_without_luna16_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"LUNA16 folder .*absent not found.*data.source"):
        Luna16Folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty holds no scan .*data.luna16_dir.*data.source"):
        preprocess_scan(Luna16Folder(tmp_path / "empty"), None, smoke_pyramid())


def test_raw_scans_are_opened_read_only(phantom_copy: Path) -> None:
    """Reading and preprocessing leave every file of the data folder byte-identical."""
    before = hash_tree(phantom_copy)
    folder = Luna16Folder(phantom_copy)
    pyramid = preprocess_scan(folder, None, smoke_pyramid())
    folder.annotations()
    folder.candidates()
    assert pyramid.meta["lung_mask_source"] == "official"
    assert hash_tree(phantom_copy) == before


@pytest.mark.parametrize("command", ["info", "sample"])
def test_cli_on_a_truncated_trained_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    train_model(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), tmp_path / "seed0", seed=0)
    checkpoint = tmp_path / "seed0" / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    extra = ["--out", str(tmp_path / "out")] if command == "sample" else []
    capsys.readouterr()  # the training's progress bars
    assert main([command, str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"ctgan {command}: error: checkpoint {checkpoint} cannot be read" in err
    assert "delete it and retrain" in err


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    train_model(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), tmp_path, seed=0)
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    payload["generator_architecture"]["channels"] = 6  # the weights are 4 channels wide
    torch.save(payload, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"does not match the generator architecture it declares"):
        load_trained(tmp_path)


def test_resume_from_a_truncated_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    train_model(cfg, pyramid, tmp_path, seed=0)
    (tmp_path / CHECKPOINT_NAME).write_bytes((tmp_path / CHECKPOINT_NAME).read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.pt cannot be read .*retrain"):
        train_model(cfg, pyramid, tmp_path, seed=0)


def test_train_into_an_unwritable_output_folder(tmp_path: Path) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    with pytest.raises(PermissionError, match=r"cannot create output folder .*a_file/seed0"):
        train_model(cfg, pyramid, blocker / "seed0", seed=0)
    with pytest.raises(NotADirectoryError, match=r"output path .*a_file exists and is not a"):
        train_model(cfg, pyramid, blocker, seed=0)


# ---------------------------------------------------------------------------------------------
# Divergence.


def nan_after(scale: int, iteration: int) -> tuple[list[bool], Any]:
    """A flag that a callback raises after the logged row (scale, iteration), and the callback."""
    flag = [False]

    def callback(row: dict[str, float]) -> None:
        if row["scale"] == scale and row["iteration"] == iteration:
            flag[0] = True

    return flag, callback


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config("3d-B")
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    flag, callback = nan_after(scale=1, iteration=0)
    saved: list[bytes] = []
    real_loss = ctgan.losses.reconstruction_loss

    def loss(reconstruction: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if flag[0] and not saved:
            saved.append((tmp_path / CHECKPOINT_NAME).read_bytes())
        value = real_loss(reconstruction, real)
        return value * float("nan") if flag[0] else value

    monkeypatch.setattr(ctgan.losses, "reconstruction_loss", loss)
    with pytest.raises(TrainingDiverged, match=r"3d-B diverged at scale 1, iteration 1: ") as info:
        train_model(cfg, pyramid, tmp_path, seed=0, callbacks=[callback])
    assert isinstance(info.value, RuntimeError)
    assert "reconstruction=nan" in str(info.value) and "keeps scales 0..0" in str(info.value)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == saved[0]  # untouched since scale 0
    payload = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert payload["completed_scales"] == 1
    assert all(torch.isfinite(v).all() for v in payload["generator"].values())
    assert load_trained(tmp_path).scale_shapes == [(4, 12, 12)]
    assert not list(tmp_path.glob(".checkpoint*"))
    history = read_history(tmp_path)
    assert np.isnan(history["reconstruction"].iloc[-1])  # the diverged row is kept for diagnosis


def test_inf_in_the_generator_output_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config("2d-A")
    flag, callback = nan_after(scale=0, iteration=0)
    real_forward = ctgan.nets.GeneratorPyramid.forward_scale

    def forward_scale(self: Any, scale: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = real_forward(self, scale, *args, **kwargs)
        return output + float("inf") if flag[0] else output

    monkeypatch.setattr(ctgan.nets.GeneratorPyramid, "forward_scale", forward_scale)
    with pytest.raises(TrainingDiverged, match=r"2d-A diverged at scale 0, iteration 1: .*g_adv"):
        train_model(
            cfg,
            synthetic_pyramid(scale_shapes(cfg.pyramid)),
            tmp_path,
            seed=0,
            callbacks=[callback],
        )
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_unused_segmentation_column_is_not_divergence(tmp_path: Path) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    history = train_model(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), tmp_path, seed=0)
    assert history["segmentation"].isna().all()  # NaN by design when the term is off


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints.


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config("3d-A", iterations_per_scale=1)
    real_save = torch.save
    calls: list[Path] = []

    def save(payload: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(Path(path))
        if len(calls) == 1:
            real_save(payload, path, *args, **kwargs)
            return
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="disk full"):
        train_model(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), tmp_path, seed=0)
    assert all(p.parent == tmp_path and p.name != CHECKPOINT_NAME for p in calls)
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["completed_scales"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        CHECKPOINT_NAME,
        "config.json",
        "history.tsv",
    ]


# ---------------------------------------------------------------------------------------------
# Kill and resume (a real process, SIGKILL).


def kill_config() -> Config:
    """Smoke profile, three tiny scales (12, 18, 27 voxels in-plane), 3d-B."""
    cfg = tiny_config("3d-B", iterations_per_scale=8)
    pyramid = PyramidConfig(min_size=12, max_size=27, scale_factor=1.5, depth_ratio=3)
    return dataclasses.replace(cfg, pyramid=pyramid)


TRAIN_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_reliability import kill_config
from test_train import synthetic_pyramid
from ctgan.config import scale_shapes
from ctgan.train import train_model
cfg = kill_config()
train_model(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), sys.argv[1], seed=0)
"""


def start_training(out_dir: Path) -> subprocess.Popen[bytes]:
    script = TRAIN_SCRIPT.format(tests=str(TESTS))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(out_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def history_rows(out_dir: Path) -> int:
    path = out_dir / "history.tsv"
    return max(len(path.read_text().splitlines()) - 1, 0) if path.is_file() else 0


def assert_same(a: Any, b: Any, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    cfg = kill_config()
    iterations = [cfg.train.iterations_per_scale * (s + 1) for s in range(3)]
    reference = start_training(tmp_path / "reference")
    killed = start_training(tmp_path / "killed")
    rng = random.Random(11)
    # a random point of scales 1-2 (rows written since the first checkpoint), plus a random delay
    target_rows = iterations[0] + rng.randrange(0, iterations[1] + iterations[2] - 2)
    deadline = time.monotonic() + 120
    while (
        history_rows(tmp_path / "killed") < target_rows
        or not (tmp_path / "killed" / CHECKPOINT_NAME).is_file()
    ):
        assert killed.poll() is None, killed.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "training too slow to reach the kill point"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.02))
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert reference.wait(timeout=180) == 0, reference.stderr.read().decode()[-2000:]  # type: ignore[union-attr]

    # the checkpoint on disk is intact and holds every scale finished before the kill
    partial = read_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)
    final = read_checkpoint(tmp_path / "reference" / CHECKPOINT_NAME)
    completed = partial["completed_scales"]
    assert 1 <= completed < 3
    for key, value in partial["generator"].items():  # the finished scales, bitwise
        assert torch.equal(value, final["generator"][key]), key
    assert partial["noise_amplitudes"] == final["noise_amplitudes"][:completed]
    on_disk = read_history(tmp_path / "killed")
    done_rows = sum(iterations[:completed])
    pd.testing.assert_frame_equal(
        on_disk.iloc[:done_rows], read_history(tmp_path / "reference").iloc[:done_rows]
    )
    assert (on_disk["scale"] >= completed).sum() < iterations[completed]  # lost: current scale only

    resumed = start_training(tmp_path / "killed")
    assert resumed.wait(timeout=180) == 0, resumed.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    final_resumed = read_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)
    final.pop("torch_rng_state")
    final_resumed.pop("torch_rng_state")
    assert_same(final_resumed, final)
    pd.testing.assert_frame_equal(
        read_history(tmp_path / "killed"), read_history(tmp_path / "reference")
    )


# ---------------------------------------------------------------------------------------------
# The pipeline: a failing notebook stage, and a LUNA16 folder left byte-identical.


def hash_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    } | {str(p.relative_to(root)) + "/": "dir" for p in root.rglob("*") if p.is_dir()}


@pytest.mark.slow
def test_preprocess_notebook_fails_clearly_without_luna16(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["source"] = "luna16"
    params["data"]["luna16_dir"] = str(tmp_path / "my-luna16")
    (tmp_path / "my-luna16").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    executed = tmp_path / "01_preprocess.ipynb"
    result = subprocess.run(
        [
            str(VENV_BIN / "papermill"),
            str(ROOT / "notebooks" / "01_preprocess.ipynb"),
            str(executed),
            "-p",
            "params_path",
            str(tmp_path / "params.yaml"),
            "-p",
            "out_dir",
            str(tmp_path / "preprocessed"),
        ],
        cwd=ROOT,
        env=pipeline_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    text = executed.read_text()
    assert f"{tmp_path / 'my-luna16'} holds no scan" in text
    assert "data.source: phantom" in text
    assert not (tmp_path / "preprocessed" / "pyramid.npz").exists()


@pytest.mark.slow
def test_pipeline_leaves_the_luna16_folder_byte_identical(
    smoke_repo: Path,  # noqa: F811 (the fixture imported from test_pipeline)
    tmp_path: Path,
) -> None:
    luna = tmp_path / "luna16"
    write_phantom_dataset(tmp_path / "phantom", scans=2, seed=5, size=64)
    shutil.copytree(tmp_path / "phantom", luna, ignore=shutil.ignore_patterns("phantom.json"))
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["data"]["source"] = "luna16"
    params["data"]["luna16_dir"] = str(luna)
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = hash_tree(luna)
    stamps = {p: p.stat().st_mtime_ns for p in luna.rglob("*")}
    # every stage that reads the data folder (preprocess, segmenter) and one model end to end;
    # the full `dvc repro` (8 models + report) passes too but takes ~8 min on 2 shared cores
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), "repro", "evaluate@3d-D"],
        cwd=smoke_repo,
        env=pipeline_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    meta = (smoke_repo / "data" / "preprocessed" / "meta.json").read_text()
    assert str(luna) in meta and '"source": "luna16"' in meta  # the stages did read it
    assert (smoke_repo / "metrics" / "3d-D.json").is_file()
    assert hash_tree(luna) == before
    assert {p: p.stat().st_mtime_ns for p in luna.rglob("*")} == stamps
