"""Reliability of the input scans and the segmenter's metrics, round two (issue 17, items 2, 8,
10, 11): scans that cannot be a chest CT for this pipeline, a 2D image, a truncated .zraw, a
Dice on a scan without nodules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_segmenter import TINY_CFG, tiny_chest

from ctgan.config import load_config
from ctgan.luna16 import Luna16Folder, read_scan
from ctgan.preprocess import load_training_scan, preprocess_scan
from ctgan.segmenter_train import dice_score, train_segmenter

ROOT = Path(__file__).resolve().parents[1]
UID = "1.2.3"


def luna16_folder(root: Path, array: np.ndarray, spacing_xyz: tuple[float, ...], **kw) -> Path:
    """A LUNA16-layout folder holding one scan (no annotations, no official lung mask)."""
    (root / "subset0").mkdir(parents=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(
        image, str(root / "subset0" / f"{UID}.mhd"), useCompression=kw.get("zip", False)
    )
    (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    return root


def chest(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 400, size=shape).astype(np.int16)


def pyramid(profile: str = "smoke"):
    return load_config(ROOT / "params.yaml", profile=profile).pyramid


def test_an_8_voxel_scan_is_refused_with_its_numbers(tmp_path):
    root = luna16_folder(tmp_path / "l", chest((8, 8, 8)), (0.7, 0.7, 0.7))
    with pytest.raises(
        ValueError,
        match=r"scan .*1\.2\.3\.mhd cannot be a chest CT for this pipeline: 8 slices \(at least "
        r"16\); field of view 5\.6 x 5\.6 x 5\.6 mm \(z, y, x; at least 100 x 150 x 150\); "
        r"choose another data\.seriesuid or a complete scan",
    ):
        preprocess_scan(Luna16Folder(root), UID, pyramid())


def test_a_one_slice_scan_is_refused_before_the_segmenter(tmp_path):
    root = luna16_folder(tmp_path / "l", chest((1, 256, 256)), (1.4, 1.4, 2.5))
    with pytest.raises(ValueError, match=r"1 slices \(at least 16\); field of view 2\.5 x 358"):
        load_training_scan(Luna16Folder(root), UID)  # what the segmenter stage reads


def test_a_coarse_scan_that_would_be_upsampled_is_refused(tmp_path):
    # 200 mm in every direction, but only 10 voxels in-plane: the cpu profile's 63 would be 6.3x
    root = luna16_folder(tmp_path / "l", chest((40, 10, 10)), (20.0, 20.0, 5.0))
    with pytest.raises(
        ValueError,
        match=r"the pyramid.s finest scale \(10, 63, 63\) would upsample scan .*1\.2\.3\.mhd by 6\.3 x 6\.3 in-plane \(10 x 10 voxels to "
        r"63 x 63\) and 0\.2 along z; at most 3: choose a scan with finer voxels or lower "
        r"pyramid\.max_size",
    ):
        preprocess_scan(Luna16Folder(root), UID, pyramid("cpu"))


def test_the_phantom_and_real_sized_scans_pass(tiny_phantom):
    folder = Luna16Folder(tiny_phantom)
    assert preprocess_scan(folder, None, pyramid("cpu")).volumes[-1].shape == (10, 63, 63)


def test_a_2d_image_is_refused_naming_the_file(tmp_path):
    root = luna16_folder(tmp_path / "l", chest((1, 64, 64))[0], (5.0, 5.0))
    with pytest.raises(
        ValueError,
        match=r"scan .*subset0/1\.2\.3\.mhd is a 2D image \(64 x 64 pixels\); expected a 3D chest "
        r"CT \(a stack of slices\): choose another data\.seriesuid",
    ):
        preprocess_scan(Luna16Folder(root), UID, pyramid())


def test_a_truncated_zraw_names_the_compressed_file_without_a_misleading_reason(tmp_path):
    root = luna16_folder(tmp_path / "l", chest((20, 64, 64)), (5.0, 5.0, 5.0), zip=True)
    zraw = root / "subset0" / f"{UID}.zraw"
    full = zraw.stat().st_size
    zraw.write_bytes(zraw.read_bytes()[: full // 2])
    with pytest.raises(ValueError) as info:
        read_scan(root / "subset0" / f"{UID}.mhd")
    message = str(info.value)
    assert "No such file or directory" not in message
    assert f"the compressed voxel file {UID}.zraw holds {full // 2} bytes" in message
    assert f"the header's CompressedDataSize is {full}" in message
    assert "download or copy the scan again" in message


def test_dice_is_undefined_when_the_ground_truth_is_empty():
    assert dice_score(np.zeros(3), np.zeros(3)) is None
    assert dice_score(np.ones(3), np.zeros(3)) is None  # nothing to find: no claim either way
    assert dice_score(np.zeros(3), np.ones(3)) == 0.0


def test_segmenter_metrics_on_scans_without_nodules_say_why_nodule_dice_is_undefined():
    volume, lungs, nodules = tiny_chest(0)
    empty = np.zeros_like(nodules)
    cfg = dataclasses.replace(TINY_CFG, iterations=2)
    _, _, metrics = train_segmenter(
        [volume], [lungs], [empty], [volume], [lungs], [empty], cfg, progress=False, levels=2
    )
    assert metrics["dice_nodules"] is None
    assert metrics["dice_undefined"] == {
        "nodules": "no nodule voxel in the validation crops (the validation scans have no "
        "annotated nodule); Dice would compare empty with empty"
    }
    assert isinstance(metrics["dice_lungs"], float)
