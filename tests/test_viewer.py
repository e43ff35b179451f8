"""The slice viewer and the explorer without a browser: rendering, windowing, aspect and the
explorer's wiring (on fake ctgan.train / ctgan.sample modules; the real ones run in the browser
test). The 3D views are tested in test_volume_view.py."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ctgan.explorer import Explorer, compare_settings, find_models, resolve_project_path
from ctgan.provenance import read_provenance
from ctgan.sections import TrainConfig
from ctgan.slice_viewer import (
    WINDOW_PRESETS,
    SliceViewer,
    figure_to_png,
    plane_aspects,
    plane_slices,
    render_slices,
    slice_viewer,
    to_hu,
    window_to_display,
)

SPACING = (4.0, 1.5, 0.75)  # (z, y, x) mm, all different so that axis mix-ups show


def make_volume(shape: tuple[int, int, int] = (6, 10, 12), seed: int = 0) -> np.ndarray:
    """A (D, H, W) volume in [-1, 1] whose value encodes its position (z, y, x all differ)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    volume = -0.9 + 0.25 * z / shape[0] + 0.5 * y / shape[1] + 1.0 * x / shape[2]
    return np.clip(volume + rng.normal(0, 0.02, shape), -1, 1).astype(np.float32)


def pixels(figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


# --- pure helpers --------------------------------------------------------------------------------


def test_window_to_display_maps_the_window_to_0_1():
    hu = np.array([-2000.0, -600.0 - 750, -600.0, -600.0 + 750, 3000.0])
    np.testing.assert_allclose(window_to_display(hu, 1500, -600), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="window width must be > 0"):
        window_to_display(hu, 0, 50)


def test_to_hu_converts_network_range_and_passes_hu():
    np.testing.assert_allclose(to_hu(np.array([-1.0, 0.0, 1.0])), [-1000, 0, 1000])
    np.testing.assert_allclose(to_hu(np.array([-500.0, 40.0]), "hu"), [-500, 40])
    with pytest.raises(ValueError, match="intensity must be one of network, hu; got 'kelvin'"):
        to_hu(np.zeros(3), "kelvin")


def test_plane_slices_cut_the_three_planes():
    volume = make_volume()
    slices = plane_slices(volume, (2, 3, 4))
    np.testing.assert_array_equal(slices["axial"], volume[2])
    np.testing.assert_array_equal(slices["coronal"], volume[:, 3, :])
    np.testing.assert_array_equal(slices["sagittal"], volume[:, :, 4])
    with pytest.raises(ValueError, match=r"y index must be in \[0, 9\]; got 10"):
        plane_slices(volume, (0, 10, 0))


def test_aspect_follows_spacing():
    assert plane_aspects(SPACING) == {"axial": 2.0, "coronal": 4.0 / 0.75, "sagittal": 4.0 / 1.5}
    figure = render_slices({"a": to_hu(make_volume())}, SPACING, (1, 2, 3))
    aspects = [axes.get_aspect() for axes in figure.axes]
    assert aspects == pytest.approx([2.0, 4.0 / 0.75, 4.0 / 1.5])
    with pytest.raises(ValueError, match="spacing_zyx_mm must be three positive numbers"):
        plane_aspects((1.0, 0.0, 1.0))


# --- rendering -----------------------------------------------------------------------------------


def test_render_gives_one_row_per_volume_with_crosshair_at_the_indices():
    volumes = {"real": to_hu(make_volume()), "sample": to_hu(make_volume(seed=1))}
    figure = render_slices(volumes, SPACING, (1, 2, 3))
    assert len(figure.axes) == 6
    axial, coronal, sagittal = figure.axes[:3]
    assert [a.get_title() for a in figure.axes[:3]] == ["axial", "coronal", "sagittal"]
    assert figure.axes[3].get_ylabel() == "sample"
    # (vertical x-position, horizontal y-position) of the crosshair in each plane
    for axes, expected in ((axial, (3, 2)), (coronal, (3, 1)), (sagittal, (2, 1))):
        vertical, horizontal = axes.lines
        assert (vertical.get_xdata()[0], horizontal.get_ydata()[0]) == expected
    np.testing.assert_array_equal(
        axial.get_images()[0].get_array(), window_to_display(volumes["real"][1], 1500, -600)
    )


def test_render_changes_with_slider_positions():
    volumes = {"real": to_hu(make_volume())}
    first = pixels(render_slices(volumes, SPACING, (1, 2, 3)))
    moved = pixels(render_slices(volumes, SPACING, (4, 2, 3)))
    assert first.shape == moved.shape
    assert np.abs(first.astype(int) - moved.astype(int)).sum() > 0
    assert figure_to_png(render_slices(volumes, SPACING, (1, 2, 3))).startswith(b"\x89PNG")


def test_presets_change_the_windowing():
    volumes = {"real": to_hu(make_volume())}
    rendered = {
        preset: render_slices(volumes, SPACING, (1, 2, 3), preset).axes[0].get_images()[0]
        for preset in WINDOW_PRESETS
    }
    lung, mediastinum = (np.asarray(rendered[p].get_array()) for p in ("lung", "mediastinum"))
    assert not np.allclose(lung, mediastinum)
    assert set(WINDOW_PRESETS) == {"lung", "mediastinum", "bone"}
    assert WINDOW_PRESETS["lung"] == (1500.0, -600.0)
    with pytest.raises(ValueError, match="preset must be one of lung, mediastinum, bone"):
        render_slices(volumes, SPACING, (1, 2, 3), "brain")


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="volumes_hu is empty"):
        render_slices({}, SPACING, (0, 0, 0))
    with pytest.raises(ValueError, match="all volumes must share one shape"):
        render_slices({"a": np.zeros((4, 8, 8)), "b": np.zeros((4, 8, 6))}, SPACING, (0, 0, 0))
    with pytest.raises(ValueError, match=r"must be a \(D, H, W\) array; got shape \(1, 4, 8, 8\)"):
        render_slices({"a": np.zeros((1, 4, 8, 8))}, SPACING, (0, 0, 0))


# --- the widget ----------------------------------------------------------------------------------


def test_slice_viewer_rerenders_when_a_slider_or_the_preset_moves():
    widget = slice_viewer({"real": make_volume(), "sample": make_volume(seed=2)}, SPACING)
    assert isinstance(widget, SliceViewer)
    assert widget.indices_zyx == (3, 5, 6)  # starts in the middle
    assert [widget.sliders[a].max for a in "zyx"] == [5, 9, 11]
    before = widget.image.value
    widget.sliders["z"].value = 0
    after_slider = widget.image.value
    assert after_slider != before
    widget.preset.value = "bone"
    assert widget.image.value != after_slider


def test_slice_viewer_keeps_positions_when_volumes_are_replaced():
    widget = slice_viewer(make_volume(), SPACING)
    widget.sliders["x"].value = 2
    widget.set_volumes({"new": make_volume(seed=5)})
    assert widget.indices_zyx == (3, 5, 2)
    widget.set_volumes({"deeper": make_volume((8, 10, 12))})
    assert widget.indices_zyx == (4, 5, 2)
    widget.set_volumes({"larger": make_volume((16, 20, 24))})  # old positions would not fit
    assert widget.indices_zyx == (8, 10, 12)
    assert [widget.sliders[a].max for a in "zyx"] == [15, 19, 23]
    widget.set_volumes({"one slice": make_volume((1, 20, 24))})
    assert widget.indices_zyx == (0, 10, 12)
    assert widget.sliders["z"].disabled
    with pytest.raises(ValueError, match="volumes is empty"):
        widget.set_volumes({})
    with pytest.raises(ValueError, match="all volumes must share one shape"):
        widget.set_volumes({"a": make_volume(), "b": make_volume((6, 10, 10))})


def test_slice_viewer_accepts_hu_and_rejects_other_types():
    hu = to_hu(make_volume())
    from_hu = slice_viewer({"a": hu}, SPACING, intensity="hu")
    from_network = slice_viewer({"a": make_volume()}, SPACING)
    assert from_hu.image.value == from_network.image.value
    with pytest.raises(TypeError, match="volumes must be a dict of name"):
        slice_viewer([make_volume()], SPACING)


# --- explorer ------------------------------------------------------------------------------------

SHAPES = [(2, 6, 8), (4, 8, 10), (6, 10, 12)]


def fake_trained(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name=name,
        scale_shapes=SHAPES,
        scale_spacings_zyx_mm=[(12.0, 2.5, 1.25), (6.0, 2.0, 1.0), SPACING],
        source={
            "origin_xyz_mm": [-5.0, 6.0, 7.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
            "seriesuid": "1.2.3",
        },
        config=types.SimpleNamespace(
            model=name[:2], setting=name, profile="smoke", train=TrainConfig()
        ),
        seed=0,
    )


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """models/<name>/seed0/checkpoint.pt folders, and fake ctgan.train / ctgan.sample modules
    (the real export_volume) that record their calls."""
    from ctgan.sample import export_volume

    calls: list[tuple] = []
    train = types.ModuleType("ctgan.train")
    train.load_trained = lambda path, device="cpu": fake_trained(Path(path).parent.name)
    sample = types.ModuleType("ctgan.sample")

    def sample_volumes(model, n, seed=0, progress=True):
        calls.append(("sample", model.name, seed))
        return np.stack([make_volume(SHAPES[-1], seed=seed + 1)] * n)

    def inject(model, volume, scale_index, n=1, seed=0, progress=True):
        calls.append(("inject", scale_index, seed, volume.shape))
        return np.stack([np.clip(volume + 0.1, -1, 1)] * n)

    sample.sample_volumes = sample_volumes
    sample.inject = inject
    sample.reconstruct = lambda model: make_volume(SHAPES[-1], seed=100)
    sample.export_volume = export_volume
    monkeypatch.setitem(sys.modules, "ctgan.train", train)
    monkeypatch.setitem(sys.modules, "ctgan.sample", sample)
    for name in ("3d-A", "3d-D", "2d-B"):
        (tmp_path / "models" / name / "seed0").mkdir(parents=True)
        (tmp_path / "models" / name / "seed0" / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "models" / "segmenter").mkdir()
    return tmp_path, calls


def test_find_models_lists_trained_seed_folders(fake_pipeline):
    root, _ = fake_pipeline
    assert find_models(root / "models") == ["2d-B/seed0", "3d-A/seed0", "3d-D/seed0"]
    with pytest.raises(FileNotFoundError, match="models folder .* not found; run `dvc repro`"):
        find_models(root / "absent")


def test_explorer_samples_injects_and_exports(fake_pipeline):
    root, calls = fake_pipeline
    app = Explorer(root / "models", pyramid_dir=None, model="3d-D", seed=3, samples_dir=root / "s")
    assert app.model_choice.value == "3d-D/seed0"
    assert list(app.viewer.volumes_hu) == ["reconstruction", "sample seed 3"]
    assert list(app.scale.options) == [1, 2]
    first = app.viewer.image.value
    app.seed.value = 4
    app.sample_button.click()
    assert calls[-1] == ("sample", "3d-D", 4)
    assert list(app.viewer.volumes_hu) == ["reconstruction", "sample seed 4"]
    assert app.viewer.image.value != first
    app.scale.value = 2
    app.inject_button.click()
    assert calls[-1] == ("inject", 2, 4, SHAPES[-1])
    assert "injected at scale 2 seed 4" in app.viewer.volumes_hu
    app.export_choice.value = "sample"
    app.export_button.click()
    path = root / "s" / "3d-D-seed0-sample-seed-4.nii.gz"
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == (0.75, 1.5, 4.0)
    assert image.GetOrigin() == (-5.0, 6.0, 7.0)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(image), np.rint(to_hu(app.current_volume())).astype(np.int16)
    )
    assert str(path) in app.status.value
    record = read_provenance(path)  # the export says it is synthetic, and what made it
    assert (record.setting, record.mode, record.sample_seed) == ("3d-D", "sample", 4)
    app.export_choice.value = "injected"
    app.export_button.click()
    record = read_provenance(root / "s" / "3d-D-seed0-injected-at-scale-2-seed-4.nii.gz")
    assert (record.mode, record.inject_scale) == ("inject", 2)
    app.export_choice.value = "reconstruction"
    app.export_button.click()
    assert read_provenance(root / "s" / "3d-D-seed0-reconstruction.nii.gz").mode == "reconstruction"
    app.model_choice.value = "2d-B/seed0"
    assert calls[-1] == ("sample", "2d-B", 4)


def test_explorer_shows_the_real_volume_when_the_pyramid_matches(fake_pipeline, monkeypatch):
    root, _ = fake_pipeline
    (root / "pyramid").mkdir()
    real = make_volume(SHAPES[-1], seed=50)
    preprocess = types.ModuleType("ctgan.preprocess")
    preprocess.load_pyramid = lambda path: types.SimpleNamespace(volumes=[np.zeros(1), real])
    monkeypatch.setitem(sys.modules, "ctgan.preprocess", preprocess)
    app = Explorer(
        root / "models", pyramid_dir=root / "pyramid", model="2d-B", samples_dir=root / "s"
    )
    assert list(app.viewer.volumes_hu) == ["real", "reconstruction", "sample seed 0"]
    np.testing.assert_allclose(app.viewer.volumes_hu["real"], to_hu(real))
    app.export_choice.value = "real"  # the training volume is real: no synthetic mark
    app.export_button.click()
    assert read_provenance(root / "s" / "2d-B-seed0-real.nii.gz") is None
    comparison = compare_settings(root / "models", seed=1, pyramid_dir=root / "pyramid")
    assert list(comparison.volumes_hu) == [
        "real",
        "2d-B/seed0 seed 1",
        "3d-A/seed0 seed 1",
        "3d-D/seed0 seed 1",
    ]


def test_explorer_needs_a_trained_model(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="no trained model .* run `dvc repro` first"):
        Explorer(tmp_path / "models", pyramid_dir=None)
    with pytest.raises(FileNotFoundError, match="no trained model under"):
        compare_settings(tmp_path / "models")


def test_relative_paths_are_taken_from_the_project_root(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: smoke\n")
    (tmp_path / "notebooks").mkdir()
    start = tmp_path / "notebooks"
    assert resolve_project_path("models", start) == tmp_path.resolve() / "models"
    assert resolve_project_path(tmp_path / "x", start) == tmp_path / "x"
    outside = tmp_path / "notebooks"
    (tmp_path / "params.yaml").unlink()
    assert resolve_project_path("models", outside) == outside.resolve() / "models"
