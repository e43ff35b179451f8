"""benchmarks/independent_realism_check.py: the issue's criteria measured without ctgan, on a
synthetic chest whose answers are known, and against the package's own verdict on it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

from ctgan.anatomy import compare_anatomy

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (10, 63, 63)


@pytest.fixture
def check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("independent_realism_check")


def chest(lungs: tuple[bool, bool] = (True, True), shift: int = 0) -> np.ndarray:
    """A chest in HU: air around a body of soft tissue with a fat rim, a spine and two lungs."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    hu = np.full(SHAPE, -1000.0)
    outer = ((y - 31) / 22) ** 2 + ((x - 31 - shift) / 28) ** 2
    hu[outer <= 1.0] = -100.0  # fat rim
    hu[outer <= 0.8] = 40.0  # soft tissue
    for side, present in zip((-1, 1), lungs, strict=True):
        lung = ((y - 29) / 12) ** 2 + ((x - 31 - shift - side * 12) / 7) ** 2 <= 1.0
        if present:
            hu[lung] = -850.0
    hu[((y - 46) / 4) ** 2 + ((x - 31 - shift) / 4) ** 2 <= 1.0] = 700.0  # spine
    return hu


def test_a_two_lung_chest_is_measured_as_one(check: ModuleType) -> None:
    real = chest()
    measured = check.measure(real)
    assert 0.1 < measured["lung_fraction"] < 0.4
    assert measured["both_sides"]
    assert measured["fractions"].sum() == pytest.approx(1.0)
    assert not check.measure(chest(lungs=(True, False)))["both_sides"]
    assert not check.measure(np.full(SHAPE, -1000.0))["both_sides"]


def test_the_verdict_sees_copies_missing_lungs_and_empty_volumes(check: ModuleType) -> None:
    real = chest()
    copies = check.check([real, real.copy()], real)
    assert copies["chest_like"] == 2
    assert copies["max_ssim_to_training"] == pytest.approx(1.0)
    assert copies["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert not copies["passes"]  # copies, and no diversity
    broken = check.check([chest(lungs=(True, False)), np.full(SHAPE, -1000.0)], real)
    assert broken["chest_like"] == 0
    assert not broken["passes"]


def test_it_agrees_with_the_package_on_the_synthetic_chests(check: ModuleType) -> None:
    real = chest()
    samples = [chest(shift=2), chest(lungs=(True, False)), chest(shift=-2)]
    independent = [r["chest_like"] for r in check.check(samples, real)["samples"]]
    package = compare_anatomy(np.stack(samples), real).chest_like
    assert independent == [True, False, True]
    assert list(package) == independent


def test_main_reads_exported_files_and_the_pyramid(check: ModuleType, tmp_path: Path) -> None:
    np.savez(tmp_path / "pyramid.npz", volume_0=np.zeros((4, 28, 28)), volume_1=chest() / 1000.0)
    folder = tmp_path / "3d-X"
    folder.mkdir()
    for i, shift in enumerate((3, -3)):
        image = sitk.GetImageFromArray(chest(shift=shift).astype(np.int16))
        sitk.WriteImage(image, str(folder / f"sample_seed0_{i:03d}.nii.gz"))
    out = tmp_path / "check.json"
    assert (
        check.main([str(folder), "--pyramid", str(tmp_path / "pyramid.npz"), "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())["3d-X"]
    assert result["k"] == 2 and result["chest_like"] == 2
    with pytest.raises(SystemExit, match="no .nii.gz or .mha"):
        check.main([str(tmp_path), "--pyramid", str(tmp_path / "pyramid.npz")])
