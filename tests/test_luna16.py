from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from ctgan.luna16 import Luna16Folder, read_scan, voxel_to_world, world_to_voxel

UID = "1.2.3.4"


def _layout(tmp_path: Path, tiny_mhd: Path, uid: str = UID) -> Path:
    root = tmp_path / "luna"
    (root / "subset3").mkdir(parents=True)
    image = sitk.ReadImage(str(tiny_mhd))
    sitk.WriteImage(image, str(root / "subset3" / f"{uid}.mhd"), useCompression=False)
    return root


def test_read_scan_keeps_geometry_and_layout(tiny_mhd: Path) -> None:
    scan = read_scan(tiny_mhd)
    assert scan.array.shape == (12, 16, 20)
    assert scan.array.dtype == np.int16
    assert scan.spacing_xyz_mm == pytest.approx((0.7, 0.8, 2.5))
    assert scan.spacing_zyx_mm == pytest.approx((2.5, 0.8, 0.7))
    assert scan.origin_xyz_mm == pytest.approx((-160.5, -170.25, -340.0))
    assert scan.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_read_scan_leaves_files_unmodified(tiny_mhd: Path) -> None:
    before = tiny_mhd.with_suffix(".raw").read_bytes(), tiny_mhd.read_bytes()
    read_scan(tiny_mhd)
    assert (tiny_mhd.with_suffix(".raw").read_bytes(), tiny_mhd.read_bytes()) == before


def test_read_scan_missing_header(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scan header .*nope.mhd not found"):
        read_scan(tmp_path / "nope.mhd")


def test_read_scan_missing_voxel_file(tiny_mhd: Path) -> None:
    tiny_mhd.with_suffix(".raw").unlink()
    with pytest.raises(FileNotFoundError, match=r"voxel file .*tiny.raw named by header"):
        read_scan(tiny_mhd)


def test_read_scan_truncated_voxel_file(tiny_mhd: Path) -> None:
    raw = tiny_mhd.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read .*tiny.mhd: the voxel file is corrupt"):
        read_scan(tiny_mhd)


def test_read_scan_header_without_data_file(tmp_path: Path) -> None:
    header = tmp_path / "bad.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(ValueError, match="no ElementDataFile line"):
        read_scan(header)


def test_folder_finds_scans_across_subsets(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    folder = Luna16Folder(root)
    assert folder.seriesuids() == [UID]
    assert folder.find_scan(UID) == root / "subset3" / f"{UID}.mhd"
    assert folder.read_scan(UID).array.shape == (12, 16, 20)
    summary = folder.summary()
    assert summary["scans"] == 1 and summary["subsets"] == {"subset3": 1}
    assert summary["annotation_rows"] == 0 and summary["candidate_rows"] is None


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LUNA16 folder .*missing not found"):
        Luna16Folder(tmp_path / "missing")


def test_unknown_seriesuid_lists_available(tmp_path: Path, tiny_mhd: Path) -> None:
    folder = Luna16Folder(_layout(tmp_path, tiny_mhd))
    with pytest.raises(ValueError, match=r"seriesuid '9.9' is not in .*available: 1.2.3.4"):
        folder.find_scan("9.9")


def test_unknown_seriesuid_listing_is_truncated(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    for k in range(12):
        shutil.copy(root / "subset3" / f"{UID}.mhd", root / "subset3" / f"1.{k:02d}.mhd")
    with pytest.raises(ValueError, match=r"\(3 more\)"):
        Luna16Folder(root).find_scan("9.9")


def test_no_annotations_file_is_an_empty_table(tmp_path: Path, tiny_mhd: Path) -> None:
    table = Luna16Folder(_layout(tmp_path, tiny_mhd)).annotations(UID)
    assert list(table.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(table) == 0


def test_annotations_missing_columns(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    pd.DataFrame({"seriesuid": [UID], "coordX": [0.0]}).to_csv(
        root / "annotations.csv", index=False
    )
    with pytest.raises(ValueError, match="lacks columns coordY, coordZ, diameter_mm"):
        Luna16Folder(root).annotations()


def test_annotations_non_numeric(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,2,x,5\n"
    )
    with pytest.raises(ValueError, match="column coordZ must be numeric; row 2 holds 'x'"):
        Luna16Folder(root).annotations()


def test_annotations_non_positive_diameter(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,2,3,0\n"
    )
    with pytest.raises(ValueError, match="diameter_mm must be > 0"):
        Luna16Folder(root).annotations()


def test_annotations_unmatched_seriesuid(tmp_path: Path, tiny_mhd: Path, caplog) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "CSVFILES").mkdir()
    (root / "CSVFILES" / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,2,3,5\n7.7.7,1,2,3,5\n"
    )
    folder = Luna16Folder(root)
    with caplog.at_level(logging.WARNING):
        table = folder.annotations()
    assert len(table) == 2 and "match no scan" in caplog.text
    assert folder.annotations(UID)["coordZ"].tolist() == [3.0]
    with pytest.raises(ValueError, match=r"annotations.csv: 1 seriesuid\(s\) match no scan.*7.7.7"):
        folder.annotations(strict=True)


def test_candidates(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "candidates.csv").write_text(f"seriesuid,coordX,coordY,coordZ,class\n{UID},1,2,3,0\n")
    table = Luna16Folder(root).candidates(UID)
    assert table is not None and table["class"].tolist() == [0]


def test_lung_mask_geometry_must_match(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "seg-lungs-LUNA16").mkdir()
    folder = Luna16Folder(root)
    assert folder.lung_mask(UID) is None
    mask = sitk.GetImageFromArray(np.full((12, 16, 20), 3, dtype=np.uint8))
    mask.CopyInformation(sitk.ReadImage(str(folder.find_scan(UID))))
    sitk.WriteImage(mask, str(root / "seg-lungs-LUNA16" / f"{UID}.mhd"))
    assert folder.lung_mask(UID).array.max() == 3
    mask.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(mask, str(root / "seg-lungs-LUNA16" / f"{UID}.mhd"))
    with pytest.raises(ValueError, match=r"lung mask .* does not match its scan .*origin"):
        folder.lung_mask(UID)


def test_world_voxel_known_point() -> None:
    origin, spacing = (-166.0, -171.7, -340.0), (0.703125, 0.703125, 2.5)
    index = world_to_voxel([-166.0 + 0.703125 * 10, -171.7, -340.0 + 2.5 * 4], origin, spacing)
    assert index == pytest.approx([10.0, 0.0, 4.0])


def test_world_voxel_matches_simpleitk() -> None:
    image = sitk.Image(5, 6, 7, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix().ravel())
    index = (1.5, 2.25, 3.0)
    expected = image.TransformContinuousIndexToPhysicalPoint(index)
    world = voxel_to_world(index, image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    assert world == pytest.approx(expected)


def test_world_voxel_bad_inputs() -> None:
    with pytest.raises(ValueError, match="spacing must be > 0"):
        world_to_voxel([0, 0, 0], (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="direction must be an invertible"):
        world_to_voxel([0, 0, 0], (0, 0, 0), (1, 1, 1), [0] * 9)
    with pytest.raises(ValueError, match=r"points must have shape \(..., 3\)"):
        world_to_voxel([0, 0], (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match=r"indices must have shape \(..., 3\)"):
        voxel_to_world([0, 0], (0, 0, 0), (1, 1, 1))


coordinate = st.floats(-400, 400, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(coordinate, coordinate, coordinate), min_size=1, max_size=5),
    origin=st.tuples(coordinate, coordinate, coordinate),
    spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3),
    angles=st.tuples(*[st.floats(-180, 180)] * 3),
    flip=st.sampled_from([1.0, -1.0]),
)
def test_world_voxel_round_trip(points, origin, spacing, angles, flip) -> None:
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag([1, 1, flip])
    index = world_to_voxel(points, origin, spacing, direction.ravel())
    back = voxel_to_world(index, origin, spacing, direction.ravel())
    np.testing.assert_allclose(back, np.asarray(points), atol=1e-6)


def test_real_sample_scan(real_sample_dir: Path) -> None:
    folder = Luna16Folder(real_sample_dir / "luna16-sample")
    (uid,) = folder.seriesuids()
    scan = folder.read_scan(uid)
    assert scan.array.shape == (133, 512, 512)
    assert scan.spacing_xyz_mm == pytest.approx((0.703125, 0.703125, 2.5))
    assert scan.origin_xyz_mm == pytest.approx((-166.0, -171.7, -340.0), abs=1e-3)
    assert scan.array.min() == -2048
    assert folder.lung_mask(uid) is None and len(folder.annotations(uid)) == 0


def test_read_image_information_bad_header(tmp_path: Path, tiny_mhd: Path) -> None:
    from ctgan.luna16 import read_image_information

    header = tmp_path / "broken.mhd"
    header.write_text(
        "NDims = 3\nDimSize = a b c\nElementType = MET_NOPE\nElementDataFile = tiny.raw\n"
    )
    with pytest.raises(ValueError, match="cannot read the header of .*broken.mhd"):
        read_image_information(header)


def test_annotations_unparsable_csv(tmp_path: Path, tiny_mhd: Path) -> None:
    root = _layout(tmp_path, tiny_mhd)
    (root / "annotations.csv").write_text('seriesuid,coordX\n"1,2\n')
    with pytest.raises(ValueError, match="cannot parse .*annotations.csv as CSV"):
        Luna16Folder(root).annotations()
