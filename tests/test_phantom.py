from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ctgan.cli import main
from ctgan.luna16 import Luna16Folder, world_to_voxel
from ctgan.phantom import generate_phantom_scan, phantom_uid, write_phantom_dataset


def test_layout_reads_as_luna16(tiny_phantom: Path) -> None:
    folder = Luna16Folder(tiny_phantom)
    uids = folder.seriesuids()
    assert uids == [phantom_uid(3, 0), phantom_uid(3, 1)]
    assert all(uid.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.9") for uid in uids)
    for uid in uids:
        path = folder.find_scan(uid)
        assert path.with_suffix(".raw").is_file()  # uncompressed, as LUNA16
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkInt16
        size = image.GetSize()
        assert size[:2] == (64, 64) and 100 <= size[2] <= 130
        spacing = image.GetSpacing()
        assert spacing[0] == spacing[1] == pytest.approx(350 / 64, rel=0.1)
        assert spacing[2] == 2.5
        assert all(abs(v) > 1 for v in image.GetOrigin())
        mask = sitk.ReadImage(str(tiny_phantom / "seg-lungs-LUNA16" / f"{uid}.mhd"))
        assert mask.GetSize() == size and mask.GetOrigin() == image.GetOrigin()
        labels = set(np.unique(sitk.GetArrayFromImage(mask)).tolist())
        assert labels <= {0, 3, 4, 5} and {3, 4} <= labels
        assert folder.lung_mask(uid) is not None  # geometry checked by the reader
    annotations = pd.read_csv(tiny_phantom / "annotations.csv")
    assert set(annotations["seriesuid"]) <= set(uids) and len(annotations) >= 2
    assert annotations["diameter_mm"].between(3, 30).all()
    candidates = pd.read_csv(tiny_phantom / "candidates.csv")
    assert (candidates["class"] == 1).sum() == len(annotations) and (candidates["class"] == 0).any()


def test_nodules_inside_the_lungs(tiny_phantom: Path) -> None:
    folder = Luna16Folder(tiny_phantom)
    for row in folder.annotations().itertuples():
        scan = folder.read_scan(row.seriesuid)
        labels = folder.lung_mask(row.seriesuid).array
        x, y, z = np.rint(
            world_to_voxel(
                [row.coordX, row.coordY, row.coordZ], scan.origin_xyz_mm, scan.spacing_xyz_mm
            )
        ).astype(int)
        assert 0 <= z < labels.shape[0] and 0 <= y < labels.shape[1] and 0 <= x < labels.shape[2]
        assert labels[z, y, x] in (3, 4)
        assert (
            scan.array[z, y, x] > -750
        )  # a solid nodule (partial volume at 5 mm voxels), not lung


def test_tissue_statistics() -> None:
    scan = generate_phantom_scan(seed=1, index=0, size=96)
    hu, labels = scan.hu.astype(float), scan.labels
    lungs = np.isin(labels, (3, 4))
    assert -900 <= np.median(hu[lungs]) <= -750
    assert (hu > 300).sum() > 500  # bone
    left = labels == 3
    assert np.mean(np.nonzero(left)[2]) > np.mean(np.nonzero(labels == 4)[2])  # +x = patient's left
    corner_air = hu[:, 5:15, 40:56]  # above the body, inside the field of view
    assert abs(np.median(corner_air) + 1000) < 30
    assert (hu == -2048).any()  # outside the circular field of view
    body_soft = (hu > -200) & (hu < 300)
    in_body = body_soft[:, 20:70, 20:76]
    assert (
        np.mean((hu[:, 20:70, 20:76][in_body] >= 0) & (hu[:, 20:70, 20:76][in_body] <= 100)) > 0.5
    )


def test_deterministic_and_seed_dependent() -> None:
    first = generate_phantom_scan(seed=5, index=0, size=48)
    again = generate_phantom_scan(seed=5, index=0, size=48)
    other = generate_phantom_scan(seed=6, index=0, size=48)
    np.testing.assert_array_equal(first.hu, again.hu)
    assert not np.array_equal(first.hu, other.hu)
    assert not first.nodules.equals(other.nodules)


def test_refuses_non_phantom_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and holds no phantom"):
        write_phantom_dataset(tmp_path, scans=1, size=48)
    write_phantom_dataset(tmp_path, scans=1, size=48, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    write_phantom_dataset(tmp_path, scans=1, seed=1, size=48)  # replaces the phantom
    assert Luna16Folder(tmp_path).seriesuids() == [phantom_uid(1, 0)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scans": 0}, "scans must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer in \[0, 999999\]"),
        ({"size": 16}, r"size must be an integer in \[32, 1024\]"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_phantom_dataset(tmp_path / "out", **kwargs)


def test_generate_rejects_small_size() -> None:
    with pytest.raises(ValueError, match="phantom size must be >= 32"):
        generate_phantom_scan(0, 0, size=16)


def test_output_path_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        write_phantom_dataset(target, scans=1, size=48)


def test_cli_phantom(tmp_path: Path, capsys) -> None:
    assert (
        main(["phantom", str(tmp_path / "p"), "--scans", "1", "--seed", "2", "--size", "48"]) == 0
    )
    assert phantom_uid(2, 0) in capsys.readouterr().out
    assert main(["phantom", str(tmp_path / "p"), "--scans", "0"]) == 2
    assert "--scans must be >= 1" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "p"), "--seed", "-3"]) == 2
    assert "--seed must be in" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "p"), "--size", "8"]) == 2
    assert "--size must be in" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    assert main(["phantom", str(tmp_path / "other"), "--size", "48"]) == 2
    assert "holds no phantom" in capsys.readouterr().err
