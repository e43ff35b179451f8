"""Reliability of the ``ctgan`` command, round two (issue 17): no subcommand, existing sample
files, a --scale beyond the machine's memory, ``ctgan check-params``.

Uses the untrained smoke pyramid of ``test_cli.fake_dir`` (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_cli
from test_cli import assert_one_line_error, run_cli

from ctgan import memory

ROOT = Path(__file__).resolve().parents[1]
fake_dir = test_cli.fake_dir  # fixtures
no_work = test_cli.no_work


def test_no_subcommand_prints_usage_on_stderr_and_exits_2(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: ctgan")
    assert (
        "ctgan: error: a command is required (one of sample, info, phantom, check-params, study)"
        in err
    )


def test_sample_refuses_to_replace_existing_files(capsys, fake_dir, tmp_path, no_work):
    out = tmp_path / "o"
    out.mkdir()
    (out / "sample_seed0_000.nii.gz").write_bytes(b"earlier result")
    code, _, err = run_cli(capsys, "sample", fake_dir, "--n", 2, "--out", out, "--seed", 0)
    assert_one_line_error(
        code,
        err,
        "sample",
        r"--out .* already holds sample_seed0_000\.nii\.gz; give another --out or --seed, "
        r"or --overwrite to replace",
    )
    assert (out / "sample_seed0_000.nii.gz").read_bytes() == b"earlier result"
    assert not (out / "sample_seed0_001.nii.gz").exists()


def test_sample_injection_refuses_to_replace_existing_files(capsys, fake_dir, tmp_path, no_work):
    out = tmp_path / "o"
    out.mkdir()
    (out / "inject1_seed0_000.mha").write_bytes(b"earlier result")
    volume = tmp_path / "scan.mha"
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 30, 30), np.int16)), str(volume))
    code, _, err = run_cli(
        capsys, "sample", fake_dir, "--out", out, "--format", "mha",
        "--inject-from", volume, "--inject-scale", 1,
    )  # fmt: skip
    assert_one_line_error(code, err, "sample", r"already holds inject1_seed0_000\.mha")


def test_sample_overwrite_replaces_existing_files(capsys, fake_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "sample_seed0_000.nii.gz").write_bytes(b"earlier result")
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / "sample_seed0_000.nii.gz").read_bytes() != b"earlier result"


def test_sample_scale_beyond_the_memory_is_refused_with_the_amount(
    capsys, fake_dir, tmp_path, no_work
):
    code, _, err = run_cli(
        capsys, "sample", fake_dir, "--out", tmp_path / "o", "--scale", 100, 100, 100
    )
    assert_one_line_error(
        code,
        err,
        "sample",
        r"--scale 100 100 100 with --n 1 gives volumes of \(z, y, x\) \(700, 3000, 3000\) "
        r"and needs about [\d.]+ GiB of memory; this machine has [\d.]+ GiB available "
        r"\(cpu\); lower --scale, --n or --batch-size",
    )
    assert not (tmp_path / "o").exists()


def test_sample_memory_check_uses_the_available_memory(capsys, fake_dir, tmp_path, monkeypatch):
    """The default request fits this machine; on one with 1 MiB available it is refused."""
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", tmp_path / "a")
    assert code == 0, err
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", tmp_path / "b")
    assert_one_line_error(code, err, "sample", r"needs about .* GiB .* has 0\.00 GiB available")


def test_sampling_estimate_grows_with_size_batch_and_channels():
    levels = [(4, 28, 28), (7, 42, 42), (10, 63, 63)]
    base = dict(levels=levels, channels=16, model="3d", n=1, batch_size=1, precision="float32")
    one = memory.sampling_bytes((10, 63, 63), device="cpu", **base)
    assert memory.sampling_bytes((20, 126, 126), device="cpu", **base) > 4 * one
    assert memory.sampling_bytes((10, 63, 63), device="cpu", **{**base, "channels": 32}) > one
    assert memory.sampling_bytes((10, 63, 63), device="cpu", **{**base, "n": 4}) > one
    with pytest.raises(ValueError, match=r"model must be 3d or 2d; got '4d'"):
        memory.sampling_bytes((10, 63, 63), device="cpu", **{**base, "model": "4d"})
