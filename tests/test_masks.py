"""ctgan.masks: paired lung and nodule masks beside generated volumes, aligned voxel for voxel,
with provenance; how far to trust them (Dice against the threshold lungs); ``--with-masks``."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import synthetic_chest_hu, untrained_smoke_model

from ctgan import cli
from ctgan import sample as sampling
from ctgan.config import SegmenterConfig
from ctgan.intensity import hu_to_network
from ctgan.masks import (
    default_segmenter_path,
    field_fraction_for,
    load_mask_segmenter,
    lung_mask_dice,
    mask_paths,
    predict_masks,
    write_samples,
)
from ctgan.provenance import read_provenance
from ctgan.segmenter import Segmenter, freeze, save_segmenter

CFG = SegmenterConfig(crop_size=(4, 16, 16), base_channels=4, iterations=1, batch_size=1, lr=1e-3)


def write_segmenter(path: Path) -> Path:
    torch.manual_seed(0)
    return save_segmenter(Segmenter(base_channels=4, levels=2), path, CFG)


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """models/3d-B/seed0 (loading returns the untrained smoke model) and, beside it,
    models/segmenter/segmenter.pt (a tiny untrained segmenter)."""
    import ctgan.train

    folder = tmp_path / "models" / "3d-B" / "seed0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"stub")
    monkeypatch.setattr(
        ctgan.train, "load_trained", lambda path, device="cpu": untrained_smoke_model(0, folder)
    )
    write_segmenter(tmp_path / "models" / "segmenter" / "segmenter.pt")
    return folder


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.mark.parametrize("fmt", ["nii.gz", "mha"])
@pytest.mark.parametrize("scale", [(1.0, 1.0, 1.0), (1.5, 1.0, 1.0)])
def test_masks_reopen_aligned_voxel_for_voxel_with_provenance(tmp_path, fmt, scale):
    model = untrained_smoke_model(0, tmp_path / "models" / "3d-B" / "seed0")
    segmenter = load_mask_segmenter(write_segmenter(tmp_path / "segmenter.pt"))
    volumes = sampling.sample_volumes(model, 2, seed=5, scale=scale, progress=False)
    paths = [tmp_path / f"s_{i}.{fmt}" for i in range(2)]
    results = write_samples(model, volumes, paths, 5, scale=scale, segmenter=segmenter)
    for index, result in enumerate(results):
        assert set(result) == {"volume", "lungs", "nodules", "lung_dice"}
        assert 0.0 <= result["lung_dice"] <= 1.0
        image = sitk.ReadImage(str(result["volume"]))
        assert image.GetSize() == tuple(reversed(volumes[index].shape))
        for name in ("lungs", "nodules"):
            assert result[name] == mask_paths(result["volume"])[name]
            mask = sitk.ReadImage(str(result[name]))
            assert mask.GetPixelID() == sitk.sitkUInt8
            assert geometry(mask) == geometry(image)  # same size, spacing, origin, direction
            assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
            record = read_provenance(result[name])
            assert record.content == name and record.sample_index == index
            assert record.sample_seed == 5 and record.setting == "3d-B"
            if fmt == "nii.gz":  # a second reader sees the same grid
                affine = nibabel.load(str(result["volume"])).affine
                assert np.allclose(nibabel.load(str(result[name])).affine, affine)
        assert read_provenance(result["volume"]).content == "volume"


def test_predict_masks_post_processes_as_the_segmenter_does(tmp_path):
    segmenter = load_mask_segmenter(write_segmenter(tmp_path / "segmenter.pt"))
    volume = hu_to_network(synthetic_chest_hu((7, 30, 30))).astype(np.float32)
    lungs, nodules = predict_masks(segmenter, volume)
    assert lungs.shape == nodules.shape == volume.shape
    assert lungs.dtype == bool and nodules.dtype == bool
    with pytest.raises(ValueError, match=r"does not know the crop size it was trained on"):
        predict_masks(freeze(Segmenter(base_channels=4, levels=2)), volume)


def test_field_fraction_covers_half_the_training_extent_along_the_largest_factor():
    assert field_fraction_for((1, 1, 1)) == 0.5
    assert field_fraction_for((1.25, 1, 1)) == pytest.approx(0.4)
    assert field_fraction_for((3, 1, 1)) == 0.3  # the smallest fraction predict_volume accepts
    assert field_fraction_for((0.4, 0.4, 0.4)) == 1.0


def test_lung_mask_dice_against_the_threshold_lungs():
    from ctgan.preprocess import compute_lung_mask

    hu = synthetic_chest_hu((10, 40, 40))
    volume = hu_to_network(hu).astype(np.float32)
    spacing = (5.0, 2.0, 2.0)
    classical = compute_lung_mask(hu, spacing[::-1])
    assert classical.any()
    assert lung_mask_dice(classical, volume, spacing) == pytest.approx(1.0)
    half = classical.copy()
    half[: half.shape[0] // 2] = False
    assert 0.3 < lung_mask_dice(half, volume, spacing) < 0.9
    air = np.full_like(volume, -1.0)  # no lungs anywhere: agreement only on no lungs
    assert lung_mask_dice(np.zeros(air.shape, bool), air, spacing) == 1.0
    assert lung_mask_dice(classical, air, spacing) == 0.0


def test_mask_paths_and_write_samples_errors(tmp_path):
    assert mask_paths(tmp_path / "a.b.nii.gz")["lungs"].name == "a.b_lungs.nii.gz"
    assert mask_paths("x/s.mha")["nodules"] == Path("x/s_nodules.mha")
    with pytest.raises(ValueError, match=r"cannot name masks beside s\.nrrd"):
        mask_paths("s.nrrd")
    model = untrained_smoke_model()
    with pytest.raises(ValueError, match=r"one path per volume; got 1 paths for 2 volumes"):
        write_samples(model, np.zeros((2, 7, 30, 30), np.float32), [tmp_path / "a.mha"], 0)


def test_default_segmenter_is_beside_the_model_folder(tmp_path):
    model = untrained_smoke_model(0, tmp_path / "models" / "3d-B" / "seed0")
    expected = (tmp_path / "models" / "segmenter" / "segmenter.pt").resolve()
    assert default_segmenter_path(model) == expected
    with pytest.raises(
        FileNotFoundError, match=r"expected the file .*segmenter\.pt, but there is none; run"
    ):
        load_mask_segmenter(expected)


# --- ctgan sample --with-masks -----------------------------------------------------------------


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_with_masks_writes_three_files_per_volume_and_reports_dice(capsys, model_dir, tmp_path):
    code, out, err = run(
        capsys, "sample", model_dir, "--n", 2, "--out", tmp_path / "o", "--with-masks"
    )
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == [
        f"sample_seed0_00{i}{part}.nii.gz" for i in range(2) for part in ("", "_lungs", "_nodules")
    ]
    assert len(out.split()) == 6
    assert "paired masks: lung Dice of the segmenter vs the classical threshold mask" in err
    # existing masks are refused like existing volumes
    code, _, err = run(
        capsys, "sample", model_dir, "--out", tmp_path / "o", "--with-masks", "--n", 1
    )
    assert code == 2 and "already holds sample_seed0_000.nii.gz and 2 more" in err


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "sample_volumes", lambda *a, **k: pytest.fail("work started"))


def test_with_masks_without_the_segmenter_fails_before_any_work(
    capsys, model_dir, tmp_path, no_work
):
    (tmp_path / "models" / "segmenter" / "segmenter.pt").unlink()
    code, _, err = run(capsys, "sample", model_dir, "--out", tmp_path / "o", "--with-masks")
    assert code == 2
    assert "paired masks need the frozen segmenter's weights: expected the file" in err
    assert "dvc repro segmenter" in err and "--segmenter PATH" in err
    assert not (tmp_path / "o").exists()
    code, _, err = run(capsys, "sample", model_dir, "--out", tmp_path / "o", "--segmenter", "x.pt")
    assert code == 2 and "--segmenter is only used with --with-masks" in err
