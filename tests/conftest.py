"""Shared fixtures: tiny MetaImage files, a tiny phantom folder, the real sample scan (if present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


@pytest.fixture
def tiny_mhd(tmp_path: Path) -> Path:
    """A real .mhd + .raw (int16, 12 x 16 x 20 voxels (z, y, x)), anisotropic spacing, non-zero origin."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(12, 16, 20), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-160.5, -170.25, -340.0))
    path = tmp_path / "tiny.mhd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-scan phantom at 64 voxels in-plane, written once per test session (read-only use)."""
    from ctgan.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "phantom"
    write_phantom_dataset(root, scans=2, seed=3, size=64)
    return root


@pytest.fixture
def real_sample_dir() -> Path:
    """../shared/data (the real LIDC-IDRI-0001 scan); skips when it is absent."""
    if not (SHARED_DATA / "luna16-sample" / "subset0" / f"{REAL_UID}.mhd").is_file():
        pytest.skip(
            f"real sample scan not found under {SHARED_DATA} (only in the project's workspace)"
        )
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the tiny volumes of the tests: on a 2-core machine more threads
    oversubscribe (10-20x slower when anything else runs). Pipeline stages run in subprocesses
    with torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def segmenter():
    """A tiny untrained, frozen segmenter (a feature extractor and the seg term's network)."""
    from ctgan.segmenter import Segmenter, freeze

    torch.manual_seed(0)
    return freeze(Segmenter(base_channels=4, levels=2))


def untrained_smoke_model(seed: int = 0, model_dir: Path | None = None):
    """A TrainedModel-like object: an untrained 3D pyramid (widths 4) at the smoke sizes
    (5, 20, 20), (7, 30, 30), with a source geometry; for tests of code that only needs the
    interface of ``ctgan.train.TrainedModel``."""
    import types

    from ctgan.config import load_config, scale_shapes
    from ctgan.nets import build_generator_pyramid, make_reconstruction_noise

    torch.manual_seed(seed)
    config = load_config(
        Path(__file__).resolve().parents[1] / "params.yaml", setting="3d-B", profile="smoke"
    )
    shapes = scale_shapes(config.pyramid)
    generator = build_generator_pyramid("3d", 4, "instance", [s[0] for s in shapes])
    generator.eval().requires_grad_(False)
    return types.SimpleNamespace(
        config=config,
        generator=generator,
        noise_amplitudes=[1.0, 0.1],
        reconstruction_noise=make_reconstruction_noise(shapes, torch.Generator().manual_seed(seed)),
        scale_shapes=shapes,
        scale_spacings_zyx_mm=[(4.0, 3.0, 3.0), (20 / 7, 2.0, 2.0)],
        source={
            "seriesuid": "1.2.3",
            "origin_xyz_mm": [-10.0, -20.0, -30.0],
            "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
            "spacing_xyz_mm": [1.0, 1.0, 2.0],
            "shape_zyx": [10, 60, 60],
        },
        model_dir=model_dir,
        seed=seed,
    )


TINY_CHEST_SHAPE = (7, 30, 30)  # the smoke profile's finest scale


def chest_phantom_hu(shape=TINY_CHEST_SHAPE, seed: int = 0) -> np.ndarray:
    """A tiny chest in HU: air, an elliptic body (40 HU, textured), two lungs (-850 HU)."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth),
        np.linspace(-1, 1, height),
        np.linspace(-1, 1, width),
        indexing="ij",
    )
    volume = np.full(shape, -1000.0)
    body = (y / 0.75) ** 2 + (x / 0.9) ** 2 < 1
    volume[body] = 40.0 + rng.normal(0, 30, body.sum())
    for centre in (-0.4, 0.4):
        lung = ((y + 0.05) / 0.45) ** 2 + ((x - centre) / 0.3) ** 2 + (z / 1.4) ** 2 < 1
        volume[lung] = -850.0 + rng.normal(0, 20, lung.sum())
    return volume


def synthetic_chest_hu(
    shape=(10, 40, 40), seed: int = 0, lungs: tuple[float, ...] = (-0.42, 0.42)
) -> np.ndarray:
    """A chest-like volume in HU: air (-1000), an elliptic body (~0 HU, textured) inside a fat
    ring (-100 HU), a spine (400 HU) behind the midline, and one lung ellipse (-850 HU) per
    x centre in ``lungs`` (default both sides)."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth),
        np.linspace(-1, 1, height),
        np.linspace(-1, 1, width),
        indexing="ij",
    )
    volume = np.full(shape, -1000.0)
    ring = (y / 0.78) ** 2 + (x / 0.95) ** 2
    volume[ring < 1] = -100.0  # subcutaneous fat
    inner = ring < 0.78
    volume[inner] = 20.0  # soft tissue
    volume[(x / 0.12) ** 2 + ((y - 0.55) / 0.12) ** 2 < 1] = 400.0  # spine (posterior = +y)
    for centre in lungs:
        lung = ((y + 0.05) / 0.42) ** 2 + ((x - centre) / 0.27) ** 2 + (z / 1.5) ** 2 < 1
        volume[lung] = -850.0
    body = ring < 1
    volume[body] += rng.normal(0, 15, body.sum())
    return volume
