"""The ``ctgan`` command: --help, --version, ``ctgan sample`` and ``ctgan info``.

Fast tests swap ``ctgan.train.load_trained`` for an untrained pyramid (bad-input paths); the
``slow`` tests run the real pipeline on a tiny phantom (preprocess -> train -> sample).
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import untrained_smoke_model

from ctgan import __version__, cli
from ctgan import sample as sampling
from ctgan.config import resolve_config
from ctgan.intensity import hu_to_network, network_to_paper
from ctgan.train import load_trained

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, command: str, match: str) -> None:
    """Exit status 2 and exactly one ``ctgan <command>: error: ...`` line, no traceback."""
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ctgan {command}: error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in err


def fake_model(model_dir: Path) -> types.SimpleNamespace:
    """A TrainedModel-like object: untrained 3D pyramid at the smoke sizes (5,20,20), (7,30,30)."""
    return untrained_smoke_model(0, model_dir)


@pytest.fixture
def fake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder whose loading returns :func:`fake_model` (the checkpoint is a stub)."""
    import ctgan.train

    model_dir = tmp_path / "models" / "3d-B" / "seed0"
    model_dir.mkdir(parents=True)
    (model_dir / "checkpoint.pt").write_bytes(b"stub")
    monkeypatch.setattr(
        ctgan.train, "load_trained", lambda path, device="cpu": fake_model(model_dir)
    )
    return model_dir


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if generation starts (bad input must be caught before any work)."""

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("generation started before the input was checked")

    monkeypatch.setattr(sampling, "sample_volumes", fail)
    monkeypatch.setattr(sampling, "inject", fail)


# --- help and version --------------------------------------------------------------------------


def test_help_lists_sample_and_info(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "sample" in out and "info" in out


def test_version_from_the_installed_command():
    result = subprocess.run(
        [sys.executable, "-m", "ctgan.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"ctgan {__version__}"


def test_sample_help_shows_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--n",
        "--out",
        "--format",
        "--scale",
        "--inject-from",
        "--inject-scale",
        "--seed",
        "--device",
        "--precision",
    ):
        assert option in out


# --- sample and info on a stand-in model (fast) ------------------------------------------------


def test_sample_writes_files_with_stable_names(capsys, fake_dir, tmp_path):
    code, out, err = run_cli(
        capsys,
        "sample",
        fake_dir,
        "--n",
        2,
        "--out",
        tmp_path / "o",
        "--format",
        "mha",
        "--seed",
        7,
    )
    assert code == 0, err
    written = sorted((tmp_path / "o").iterdir())
    assert [p.name for p in written] == ["sample_seed7_000.mha", "sample_seed7_001.mha"]
    assert out.split() == [str(p) for p in written]
    image = sitk.ReadImage(str(written[0]))
    assert image.GetSize() == (30, 30, 7) and image.GetPixelID() == sitk.sitkInt16
    assert "wrote 2 volume(s) of shape (z, y, x) (7, 30, 30)" in err
    assert "(bf16 on cpu)" in err or "(float32 on cpu)" in err


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_sample_precision_is_used_and_reported(capsys, fake_dir, tmp_path, precision):
    code, _, err = run_cli(
        capsys, "sample", fake_dir, "--out", tmp_path / "o", "--precision", precision
    )
    assert code == 0, err
    assert f"({precision} on cpu)" in err
    assert sitk.ReadImage(str(tmp_path / "o" / "sample_seed0_000.nii.gz")).GetSize() == (30, 30, 7)


def test_sample_unknown_precision_is_a_usage_error(capsys, fake_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", str(fake_dir), "--out", str(tmp_path / "o"), "--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_info_prints_the_model(capsys, fake_dir):
    code, out, _ = run_cli(capsys, "info", fake_dir)
    assert code == 0
    assert "setting:      3d-B" in out and "(7, 30, 30)" in out and "seriesuid:  1.2.3" in out


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--scale", "1", "0.4", "1"], r"makes level 0 8 voxels along y .*receptive field"),
        (["--scale", "0", "1", "1"], "three positive factors"),
        (["--n", "0"], "--n must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--noise-factor", "-1"], r"train.sample_noise_factor must be >= 0 .*got -1.0"),
        (["--start-noise-sd", "-1"], r"train.sample_start_noise_sd must be > 0; got -1.0"),
    ],
)
def test_sample_bad_numbers(capsys, fake_dir, tmp_path, no_work, extra, match):
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", tmp_path / "o", *extra)
    assert_one_line_error(code, err, "sample", match)
    assert not (tmp_path / "o").exists()


def test_sample_injection_arguments_are_checked(capsys, fake_dir, tmp_path, no_work):
    volume = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.Image(30, 30, 7, sitk.sitkInt16), str(volume))
    out = tmp_path / "o"
    cases = [
        (["--inject-from", volume], "--inject-from and --inject-scale go together"),
        (["--inject-scale", "1"], "--inject-from and --inject-scale go together"),
        (
            ["--inject-from", volume, "--inject-scale", "2"],
            r"injection scale must be between 1 and 1 .*got 2",
        ),
        (
            ["--inject-from", volume, "--inject-scale", "0"],
            r"injection scale must be between 1 and 1",
        ),
        (
            ["--inject-from", volume, "--inject-scale", "1", "--scale", "2", "1", "1"],
            "--scale cannot be combined",
        ),
        (
            ["--inject-from", tmp_path / "missing.mha", "--inject-scale", "1"],
            "injection file .* not found",
        ),
    ]
    for extra, match in cases:
        code, _, err = run_cli(capsys, "sample", fake_dir, "--out", out, *extra)
        assert_one_line_error(code, err, "sample", match)
    assert not out.exists()


def test_sample_start_scale_is_checked(capsys, fake_dir, tmp_path, no_work):
    volume = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.Image(30, 30, 7, sitk.sitkInt16), str(volume))
    out = tmp_path / "o"
    cases = [
        (["--start-scale", "2"], r"start scale must be an integer between 0 and 1 .*got 2"),
        (["--start-scale", "-1"], r"start scale must be an integer between 0 and 1"),
        (
            ["--start-scale", "1"],
            r"trained before checkpoints held the training pyramid",
        ),
        (
            ["--start-scale", "1", "--inject-from", volume, "--inject-scale", "1"],
            "--start-scale cannot be combined with --inject-from",
        ),
        (
            ["--start-source", "gpnn", "--inject-from", volume, "--inject-scale", "1"],
            "--start-source, --start-noise-sd and --noise-factor are for random samples",
        ),
    ]
    for extra, match in cases:
        code, _, err = run_cli(capsys, "sample", fake_dir, "--out", out, *extra)
        assert_one_line_error(code, err, "sample", match)
    assert not out.exists()


def test_sample_injection_file_without_geometry_or_3d(capsys, fake_dir, tmp_path, no_work):
    np.save(tmp_path / "scan.npy", np.zeros((7, 30, 30), np.float32))
    sitk.WriteImage(sitk.Image(30, 30, sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    for name, match in (
        ("scan.npy", "has no geometry"),
        ("slice.nii.gz", "must be a 3D single-channel scan; got a 2D"),
    ):
        code, _, err = run_cli(
            capsys,
            "sample",
            fake_dir,
            "--out",
            tmp_path / "o",
            "--inject-from",
            tmp_path / name,
            "--inject-scale",
            "1",
        )
        assert_one_line_error(code, err, "sample", match)


def test_sample_unwritable_output(capsys, fake_dir, tmp_path, no_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", blocker / "sub")
    assert_one_line_error(code, err, "sample", r"cannot create output folder .*a_file/sub")
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", blocker)
    assert_one_line_error(code, err, "sample", r"--out .*a_file is a file, not a folder")


def test_sample_cuda_without_cuda(capsys, fake_dir, tmp_path, no_work):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli(capsys, "sample", fake_dir, "--out", tmp_path / "o", "--device", "cuda")
    assert_one_line_error(
        code, err, "sample", "--device cuda was requested but CUDA is not available"
    )


# --- model folders that are not models (real loader, fast) -------------------------------------


@pytest.mark.parametrize("command", ["sample", "info"])
def test_folder_that_is_not_a_model(capsys, tmp_path, command):
    extra = ["--out", tmp_path / "o"] if command == "sample" else []
    code, _, err = run_cli(capsys, command, tmp_path, *extra)
    assert_one_line_error(code, err, command, "is not a model folder: no checkpoint.pt")
    code, _, err = run_cli(capsys, command, tmp_path / "missing", *extra)
    assert_one_line_error(code, err, command, "model folder .*missing not found")


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"garbage bytes", "cannot be read"),
        ({"format_version": 99}, "format_version 99, this code reads 1"),
        ({"weights": 1}, "not a ctgan checkpoint"),
        ({"format_version": 1}, r"could not be loaded as a ctgan model \(KeyError"),
    ],
)
def test_checkpoint_from_another_version(capsys, tmp_path, payload, match):
    path = tmp_path / "checkpoint.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    code, _, err = run_cli(capsys, "info", tmp_path)
    assert_one_line_error(code, err, "info", match)


# --- the real pipeline on a tiny phantom (slow) ------------------------------------------------


def psnr_paper(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB on the paper's scale (HU + 1000) / 2000, peak 1."""
    mse = float(np.mean((network_to_paper(a) - network_to_paper(b)) ** 2))
    return 10 * np.log10(1 / mse)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def trained(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 3d-B model trained by the pipeline's functions on the tiny phantom: 3 scales
    (4,16,16), (6,24,24), (9,36,36), smoke settings with 6 iterations per scale unit."""
    from ctgan.luna16 import Luna16Folder
    from ctgan.preprocess import preprocess_scan
    from ctgan.train import train_model

    torch.set_num_threads(1)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pyramid"] = {"min_size": 16, "max_size": 36, "scale_factor": 1.5, "depth_ratio": 4}
    params["train"]["iterations_per_scale"] = 6
    config = resolve_config(params, setting="3d-B", profile="smoke")
    pyramid = preprocess_scan(Luna16Folder(tiny_phantom), None, config.pyramid)
    root = tmp_path_factory.mktemp("repo")
    model_dir = root / "models" / "3d-B" / "seed0"
    train_model(config, pyramid, model_dir, seed=0)
    return types.SimpleNamespace(model_dir=model_dir, pyramid=pyramid, root=root)


@pytest.mark.slow
def test_sample_files_reopen_with_geometry_and_hu(capsys, trained, tmp_path):
    code, out, err = run_cli(
        capsys,
        "sample",
        trained.model_dir,
        "--n",
        3,
        "--out",
        tmp_path,
        "--seed",
        1,
        "--device",
        "cpu",
    )
    assert code == 0, err
    files = sorted(tmp_path.glob("sample_seed1_*.nii.gz"))
    assert len(files) == 3 and out.split() == [str(p) for p in files]
    meta = trained.pyramid.meta
    spacing_zyx = trained.pyramid.spacings_zyx_mm[-1]
    for path in files:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        assert array.shape == (9, 36, 36) and array.dtype == np.int16
        np.testing.assert_allclose(image.GetSpacing(), spacing_zyx[::-1], rtol=1e-5)
        np.testing.assert_allclose(image.GetDirection(), meta["direction"], atol=1e-6)
        corner = np.asarray(image.GetOrigin()) - np.asarray(image.GetSpacing()) / 2
        source_corner = np.asarray(meta["origin_xyz_mm"]) - np.asarray(meta["spacing_xyz_mm"]) / 2
        np.testing.assert_allclose(corner, source_corner, atol=1e-3)  # same field of view
        assert -1000 <= array.min() < -500 and 0 < array.max() <= 1000  # air .. soft tissue/bone
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in files]
    assert not np.array_equal(arrays[0], arrays[1])


@pytest.mark.slow
def test_same_seed_gives_identical_files(capsys, trained, tmp_path):
    for name in ("a", "b"):
        assert (
            run_cli(
                capsys, "sample", trained.model_dir, "--n", 2, "--out", tmp_path / name, "--seed", 4
            )[0]
            == 0
        )
    for i in range(2):
        first = sitk.GetArrayFromImage(
            sitk.ReadImage(str(tmp_path / "a" / f"sample_seed4_{i:03d}.nii.gz"))
        )
        second = sitk.GetArrayFromImage(
            sitk.ReadImage(str(tmp_path / "b" / f"sample_seed4_{i:03d}.nii.gz"))
        )
        assert np.array_equal(first, second)
    run_cli(capsys, "sample", trained.model_dir, "--n", 1, "--out", tmp_path / "c", "--seed", 5)
    other = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "sample_seed5_000.nii.gz")))
    assert not np.array_equal(first, other)


@pytest.mark.slow
def test_scale_factor_gives_a_deeper_volume(capsys, trained, tmp_path):
    code, _, err = run_cli(
        capsys,
        "sample",
        trained.model_dir,
        "--out",
        tmp_path,
        "--scale",
        "1.5",
        "1",
        "1",
        "--format",
        "mha",
    )
    assert code == 0, err
    image = sitk.ReadImage(str(tmp_path / "sample_seed0_000.mha"))
    assert image.GetSize() == (36, 36, round(9 * 1.5))  # (x, y, z): 1.5x deeper
    np.testing.assert_allclose(
        image.GetSpacing()[2], trained.pyramid.spacings_zyx_mm[-1][0], rtol=1e-5
    )


@pytest.mark.slow
def test_injection_keeps_the_training_volume(capsys, trained, tmp_path):
    """Finest scale: reproduces the training volume; scale 1: keeps its coarse anatomy. Both far
    above what a random sample shares with it."""
    real = trained.pyramid.volumes[-1]
    model = load_trained(trained.model_dir)
    source = sampling.export_model_volume(model, real, tmp_path / "train.mha")
    outputs = {}
    for scale in (2, 1):
        out = tmp_path / f"inject{scale}"
        code, _, err = run_cli(
            capsys,
            "sample",
            trained.model_dir,
            "--out",
            out,
            "--inject-from",
            source,
            "--inject-scale",
            scale,
            "--n",
            2,
        )
        assert code == 0, err
        outputs[scale] = sitk.GetArrayFromImage(
            sitk.ReadImage(str(out / f"inject{scale}_seed0_000.nii.gz"))
        )
    random = sampling.sample_volumes(model, 1, seed=0, progress=False)[0]
    finest, coarse = hu_to_network(outputs[2]), hu_to_network(outputs[1])
    psnr_finest, psnr_random = psnr_paper(finest, real), psnr_paper(random, real)
    assert psnr_finest > 18.0 and psnr_finest > psnr_random + 5.0, (psnr_finest, psnr_random)
    corr_coarse, corr_random = correlation(coarse, real), correlation(random, real)
    assert corr_coarse > 0.7 and corr_coarse > corr_random + 0.3, (corr_coarse, corr_random)


@pytest.mark.slow
def test_info_on_a_trained_model(capsys, trained):
    code, out, _ = run_cli(capsys, "info", trained.model_dir)
    assert code == 0
    assert "setting:      3d-B" in out and "profile:      smoke" in out
    assert "(9, 36, 36)" in out and trained.pyramid.meta["seriesuid"] in out
    assert "metrics:      none found" in out
    metrics = trained.root / "metrics" / "3d-B.json"
    metrics.parent.mkdir(exist_ok=True)
    metrics.write_text('{"reconstruction": {"psnr": 21.5, "mse": 0.007}}')
    code, out, _ = run_cli(capsys, "info", trained.model_dir.parent)  # the setting folder works too
    assert f"metrics:      {metrics}" in out and "reconstruction.psnr: 21.5000" in out
