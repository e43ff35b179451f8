from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ctgan.config import PyramidConfig, load_config, scale_shapes
from ctgan.luna16 import Luna16Folder
from ctgan.preprocess import (
    anti_alias,
    anti_aliasing_sigma,
    compute_lung_mask,
    load_pyramid,
    load_training_scan,
    lung_volume_litres,
    preprocess_scan,
    resize_volume,
    save_pyramid,
    write_qa_figures,
)

SMOKE = PyramidConfig(min_size=20, max_size=30, scale_factor=1.5, depth_ratio=4)
REPO = Path(__file__).resolve().parents[1]


def _ellipsoid(shape, centre, radii):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1


def test_compute_lung_mask_synthetic() -> None:
    hu = np.full((20, 48, 48), -1000.0, dtype=np.float32)  # air outside
    body = _ellipsoid((20, 48, 48), (10, 24, 24), (100, 20, 22))
    hu[body] = 40.0
    left = _ellipsoid((20, 48, 48), (10, 24, 33), (8, 10, 6))
    right = _ellipsoid((20, 48, 48), (10, 24, 15), (8, 10, 6))
    hu[left | right] = -850.0
    hu[10, 24, 33] = 40.0  # a vessel: a hole the mask must fill
    hu[:, :3, :3] = -2048.0  # out of field
    mask = compute_lung_mask(hu, (1.0, 1.0, 2.5))
    assert mask.dtype == bool
    assert mask[10, 24, 33] and mask[10, 24, 15]
    assert not mask[10, 2, 2] and not mask[10, 24, 24]
    assert abs(mask.sum() - (left | right).sum()) <= 0.05 * (left | right).sum()


def test_compute_lung_mask_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"hu_zyx must be a 3D \(z, y, x\) array"):
        compute_lung_mask(np.zeros((4, 4)), (1, 1, 1))


def test_resize_keeps_corners() -> None:
    volume = np.random.default_rng(0).random((5, 9, 9)).astype(np.float32)
    out = resize_volume(volume, (3, 5, 5))
    assert out.shape == (3, 5, 5) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(volume[0, 0, 0])  # align_corners=True
    assert out[-1, -1, -1] == pytest.approx(volume[-1, -1, -1])


def test_anti_aliasing_sigma() -> None:
    """(d - 1) / 2 per shrinking axis (scikit-image's rule), 0 where an axis keeps or grows."""
    assert anti_aliasing_sigma((126, 512, 512), (10, 63, 63)) == pytest.approx(
        ((12.6 - 1) / 2, (512 / 63 - 1) / 2, (512 / 63 - 1) / 2)
    )
    assert anti_aliasing_sigma((10, 20, 30), (10, 40, 15)) == (0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="same number of axes"):
        anti_aliasing_sigma((10, 20, 30), (10, 20))
    with pytest.raises(ValueError, match=">= 1 voxel per axis"):
        anti_aliasing_sigma((10, 20, 30), (0, 20, 30))


def test_anti_aliasing_removes_what_the_grid_cannot_hold() -> None:
    """A checkerboard at the full-resolution Nyquist limit has no place on a 4x coarser grid:
    trilinear sampling alone hands it on at full amplitude (aliasing), low-passed first it is
    gone; a smooth ramp comes through both the same; nothing changes where no axis shrinks."""
    z, y, x = np.meshgrid(np.arange(8), np.arange(64), np.arange(64), indexing="ij")
    checker = np.where((y + x) % 2 == 0, 0.5, -0.5).astype(np.float32)
    aliased = resize_volume(checker, (8, 16, 16))
    smooth = resize_volume(checker, (8, 16, 16), anti_aliasing=True)
    assert np.abs(aliased).max() > 0.4  # the seed's rule: the pattern survives
    assert np.abs(smooth[:, 1:-1, 1:-1]).max() < 0.01  # (the edges are extended, not wrapped)
    ramp = (x / 63.0).astype(np.float32)
    np.testing.assert_allclose(
        resize_volume(ramp, (8, 16, 16), anti_aliasing=True),
        resize_volume(ramp, (8, 16, 16)),
        atol=0.02,
    )
    same = anti_alias(checker, checker.shape)
    np.testing.assert_array_equal(same, checker)
    assert same is not checker and same.dtype == np.float32


def test_preprocess_anti_aliasing(tiny_phantom: Path) -> None:
    """``pyramid.anti_aliasing`` low-passes the volume only (masks are labels), and meta.json
    says which rule made the pyramid."""
    folder = Luna16Folder(tiny_phantom)
    plain = preprocess_scan(folder, None, SMOKE)
    smooth_cfg = PyramidConfig(**{**vars(SMOKE), "anti_aliasing": True})
    smooth = preprocess_scan(folder, None, smooth_cfg)
    assert plain.meta["anti_aliasing"] is False and smooth.meta["anti_aliasing"] is True
    for a, b in zip(plain.lungs + plain.nodules, smooth.lungs + smooth.nodules, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain.volumes, smooth.volumes, strict=True):
        assert a.shape == b.shape and not np.array_equal(a, b)
        # less voxel-to-voxel variation: the aliased detail is gone
        assert np.abs(np.diff(b, axis=2)).mean() < np.abs(np.diff(a, axis=2)).mean()


def test_scan_path_does_not_depend_on_the_clone(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clones at different places write the same pyramid bytes (DVC hashes them)."""
    metas = []
    for clone in ("a", "clone-b"):
        root = tmp_path / clone
        shutil.copytree(tiny_phantom, root / "data" / "phantom")
        monkeypatch.chdir(root)
        pyramid = preprocess_scan(Luna16Folder(Path("data/phantom")), None, SMOKE)
        metas.append(pyramid.meta)
    assert metas[0] == metas[1]
    assert metas[0]["scan_path"].startswith("data/phantom/")
    monkeypatch.chdir(tmp_path / "a" / "data")  # the scan outside the working directory
    outside = preprocess_scan(Luna16Folder(tmp_path / "clone-b" / "data" / "phantom"), None, SMOKE)
    assert Path(outside.meta["scan_path"]).is_absolute()


def test_preprocess_phantom(tiny_phantom: Path, tmp_path: Path) -> None:
    folder = Luna16Folder(tiny_phantom)
    uid = folder.seriesuids()[0]
    pyramid = preprocess_scan(folder, None, SMOKE)
    assert pyramid.shapes == scale_shapes(SMOKE)
    assert pyramid.meta["seriesuid"] == uid and pyramid.meta["source"] == "phantom"
    assert pyramid.meta["lung_mask_source"] == "official"
    for volume, lungs, nodules in zip(pyramid.volumes, pyramid.lungs, pyramid.nodules, strict=True):
        assert volume.dtype == np.float32 and -1 <= volume.min() and volume.max() <= 1
        assert 0 <= lungs.min() and lungs.max() <= 1 and lungs.max() > 0.5
        assert 0 <= nodules.min() and nodules.max() <= 1
        assert np.median(volume[lungs > 0.5]) < -0.7  # lungs are near -850 HU
    shape = pyramid.meta["shape_zyx"]
    spacing = pyramid.meta["spacing_xyz_mm"]
    for scale_shape, scale_spacing in zip(pyramid.shapes, pyramid.spacings_zyx_mm, strict=True):
        extent = np.array(shape) * np.array(spacing[::-1])
        np.testing.assert_allclose(np.array(scale_spacing) * np.array(scale_shape), extent)
    assert pyramid.meta["nodules"] and {"index_x", "diameter_mm"} <= set(pyramid.meta["nodules"][0])
    save_pyramid(pyramid, tmp_path / "out")
    again = load_pyramid(tmp_path / "out")
    assert again.shapes == pyramid.shapes and again.meta == json.loads(json.dumps(pyramid.meta))
    np.testing.assert_array_equal(again.volumes[-1], pyramid.volumes[-1])
    paths = write_qa_figures(pyramid, tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "qa_histogram.png",
        "qa_masks.png",
        "qa_planes.png",
        "qa_pyramid.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_load_training_scan(tiny_phantom: Path) -> None:
    folder = Luna16Folder(tiny_phantom)
    uid = folder.seriesuids()[1]
    volume, lungs, nodules, spacing = load_training_scan(folder, uid)
    assert volume.shape == lungs.shape == nodules.shape == folder.read_scan(uid).shape_zyx
    assert volume.dtype == np.float32 and lungs.dtype == bool and nodules.dtype == bool
    assert nodules.any() and np.mean(lungs[nodules]) > 0.5
    assert spacing[2] == 2.5


def test_unknown_seriesuid(tiny_phantom: Path) -> None:
    with pytest.raises(ValueError, match="seriesuid '1.2' is not in .*available: 1.3.6"):
        preprocess_scan(Luna16Folder(tiny_phantom), "1.2", SMOKE)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no scan"):
        preprocess_scan(Luna16Folder(tmp_path), None, SMOKE)


def test_load_pyramid_missing_and_corrupt(tiny_phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pyramid.npz not found; run the preprocess"):
        load_pyramid(tmp_path)
    save_pyramid(preprocess_scan(Luna16Folder(tiny_phantom), None, SMOKE), tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["scale_shapes"][0] = [1, 2, 3]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="volume_0 has shape .* meta.json says"):
        load_pyramid(tmp_path)
    meta["scale_shapes"].append([1, 1, 1])
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks scale_shapes / scale_spacings_zyx_mm"):
        load_pyramid(tmp_path)
    meta["scale_spacings_zyx_mm"].append([1, 1, 1])
    meta["scale_shapes"][0] = [int(v) for v in np.load(tmp_path / "pyramid.npz")["volume_0"].shape]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks array volume_"):
        load_pyramid(tmp_path)
    (tmp_path / "pyramid.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is corrupt"):
        load_pyramid(tmp_path)


def test_real_small_scan(real_sample_dir: Path, tmp_path: Path) -> None:
    small = real_sample_dir / "lidc-idri-0001-small"
    root = tmp_path / "luna"
    (root / "subset0").mkdir(parents=True)
    for path in small.iterdir():
        shutil.copy(path, root / "subset0" / path.name)
    folder = Luna16Folder(root)
    pyramid = preprocess_scan(folder, None, SMOKE)
    assert pyramid.shapes == scale_shapes(SMOKE)
    assert pyramid.meta["lung_mask_source"] == "computed" and pyramid.meta["nodules"] == []
    assert pyramid.meta["source"] == "luna16"
    assert 2.5 < pyramid.meta["lung_volume_l"] < 7.0  # an adult's lungs: a few litres
    assert pyramid.volumes[-1].min() >= -1.0  # -2048 out-of-field clipped to air


@pytest.mark.slow
def test_real_full_scan_lung_volume(real_sample_dir: Path) -> None:
    folder = Luna16Folder(real_sample_dir / "luna16-sample")
    volume, lungs, _, spacing = load_training_scan(folder, folder.seriesuids()[0])
    assert 2.5 < lung_volume_litres(lungs, spacing) < 7.0


@pytest.mark.slow
def test_notebook_runs(tiny_phantom: Path, tmp_path: Path) -> None:
    import papermill

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["source"] = "phantom"
    params["data"]["phantom_dir"] = str(tiny_phantom)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out_dir = tmp_path / "preprocessed"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "01_preprocess.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={"params_path": str(params_path), "out_dir": str(out_dir)},
        kernel_name="python3",
        cwd=str(REPO),
    )
    pyramid = load_pyramid(out_dir)
    assert pyramid.shapes == scale_shapes(load_config(params_path).pyramid)
    assert (out_dir / "qa_planes.png").is_file()


def test_qa_figures_reject_bad_shapes() -> None:
    from ctgan import figures

    volume = np.zeros((4, 6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match=r"volume must be a 3D \(z, y, x\) array"):
        figures.three_plane_figure(np.zeros((6, 6)))
    with pytest.raises(ValueError, match="mask 'lungs' has shape"):
        figures.hu_histogram_figure(volume, {"lungs": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match="mask 'lungs' has shape"):
        figures.mask_overlay_figure(volume, {"lungs": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match="need one spacing per volume"):
        figures.pyramid_figure([volume], [])
