"""Training: history and checkpoints, seeding, resume, loading, every loss option, error paths.

Fast tests use a 2-scale pyramid of (4, 12, 12) and (6, 18, 18) voxels and 4-channel networks;
the slow ones train the smoke profile (issue 4's check).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctgan.config import Config, PyramidConfig, load_config, scale_shapes
from ctgan.nets import GeneratorPyramid, build_generator_pyramid
from ctgan.scale_trainer import precision_settings, reconstruction_psnr
from ctgan.train import (
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    find_checkpoint,
    load_trained,
    read_history,
    resolve_device,
    train_model,
)
from ctgan.train_stage import run_key, train_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@dataclasses.dataclass
class FakePyramid:
    volumes: list[np.ndarray]
    spacings_zyx_mm: list[tuple[float, float, float]]
    meta: dict[str, Any]


def chest_like(shape: tuple[int, int, int]) -> torch.Tensor:
    """A smooth chest-like volume in [-1, 1]: air, a body ellipse, two lungs, a nodule."""
    d, h, w = shape
    z, y, x = torch.meshgrid(
        torch.linspace(-1, 1, d), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"
    )
    volume = torch.full(shape, -1.0)
    volume[(y / 0.75) ** 2 + (x / 0.9) ** 2 < 1] = 0.05
    for side in (-0.42, 0.42):
        volume[((x - side) / 0.3) ** 2 + (y / 0.5) ** 2 + (z / 1.3) ** 2 < 1] = -0.85
    volume[(x - 0.4) ** 2 + (y - 0.1) ** 2 + z**2 < 0.02] = 0.1
    return volume


def synthetic_pyramid(shapes: list[tuple[int, int, int]]) -> FakePyramid:
    finest = chest_like(shapes[-1])[None, None]
    volumes = [
        F.interpolate(finest, size=s, mode="trilinear", align_corners=True)[0, 0].numpy()
        for s in shapes
    ]
    return FakePyramid(
        volumes=[v.astype(np.float32) for v in volumes],
        spacings_zyx_mm=[(2.5 * (len(shapes) - s), 1.5, 1.5) for s in range(len(shapes))],
        meta={"seriesuid": "1.2.3", "origin_xyz_mm": [1.0, 2.0, 3.0], "direction": [1.0] * 9},
    )


def tiny_config(setting: str = "3d-D", **train: Any) -> Config:
    cfg = load_config(PARAMS, setting=setting, profile="smoke")
    values = {
        "iterations_per_scale": 2,
        "generator_channels": 4,
        "discriminator_channels": 4,
        "slice_generator_channels": 8,
        "log_every": 1,
        "device": "cpu",
        "precision": "float32",
        **train,
    }
    return dataclasses.replace(
        cfg,
        pyramid=PyramidConfig(min_size=12, max_size=18, scale_factor=1.5, depth_ratio=3),
        train=dataclasses.replace(cfg.train, **values),
        segmenter=dataclasses.replace(cfg.segmenter, crop_size=(4, 8, 8)),
    )


def tiny_segmenter() -> nn.Module:
    torch.manual_seed(0)
    segmenter = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 1))
    return segmenter.requires_grad_(False).eval()


def run(cfg: Config, out_dir: Path, seed: int = 0, **kwargs: Any) -> pd.DataFrame:
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    segmenter = tiny_segmenter() if cfg.uses("segmentation") else None
    return train_model(cfg, pyramid, out_dir, seed=seed, segmenter=segmenter, **kwargs)


def state(out_dir: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(out_dir / CHECKPOINT_NAME, weights_only=True)
    return {
        **{f"g.{k}": v for k, v in payload["generator"].items()},
        **{f"d.{k}": v for k, v in payload["discriminator"].items()},
    }


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------


def test_training_writes_history_checkpoint_and_config(tmp_path: Path) -> None:
    cfg = tiny_config("3d-D")
    rows: list[dict[str, float]] = []
    history = run(cfg, tmp_path, callbacks=[rows.append])
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert len(history) == 2 + 4 == len(rows)  # iterations 2 * (s + 1), logged every iteration
    on_disk = read_history(tmp_path)
    assert list(on_disk.columns) == list(HISTORY_COLUMNS)
    assert np.allclose(on_disk["rec_psnr"], history["rec_psnr"])
    assert history.groupby("scale").size().tolist() == [2, 4]
    assert np.isfinite(history[["d_loss", "g_adv", "reconstruction", "segmentation"]]).all().all()
    assert history.loc[history.scale == 0, "noise_amplitude"].eq(1.0).all()
    assert 0 < history.loc[history.scale == 1, "noise_amplitude"].iloc[0] < 1
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    for key in (
        "format_version", "config", "seed", "generator", "discriminator", "optimizers",
        "noise_amplitudes", "reconstruction_noise", "rng_states", "scale_shapes",
        "scale_spacings_zyx_mm", "source",
    ):  # fmt: skip
        assert key in payload, key
    assert payload["completed_scales"] == 2
    assert payload["source"]["seriesuid"] == "1.2.3"
    assert payload["reconstruction_noise"][1].abs().sum() == 0


def test_without_segmentation_the_column_is_nan(tmp_path: Path) -> None:
    history = run(tiny_config("3d-B"), tmp_path)
    assert history["segmentation"].isna().all()


@pytest.mark.parametrize("model", ["3d", "2d"])
def test_same_seed_same_result_other_seed_other_result(tmp_path: Path, model: str) -> None:
    cfg = tiny_config(f"{model}-D")
    first = run(cfg, tmp_path / "a", seed=3)
    second = run(cfg, tmp_path / "b", seed=3)
    other = run(cfg, tmp_path / "c", seed=4)
    assert_same_state(state(tmp_path / "a"), state(tmp_path / "b"))
    pd.testing.assert_frame_equal(first, second)
    assert not np.allclose(first["rec_psnr"], other["rec_psnr"])


class Interrupt(Exception):
    pass


def interrupt_at_scale(scale: int):  # noqa: ANN201
    def callback(row: dict[str, float]) -> None:
        if row["scale"] == scale and row["iteration"] == 1:
            raise Interrupt

    return callback


@pytest.mark.parametrize("model", ["3d", "2d"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, model: str) -> None:
    cfg = tiny_config(f"{model}-D")
    whole = run(cfg, tmp_path / "whole")
    with pytest.raises(Interrupt):
        run(cfg, tmp_path / "resumed", callbacks=[interrupt_at_scale(1)])
    partial = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)
    assert partial["completed_scales"] == 1
    resumed = run(cfg, tmp_path / "resumed")
    assert_same_state(state(tmp_path / "whole"), state(tmp_path / "resumed"))
    pd.testing.assert_frame_equal(whole, resumed)
    pd.testing.assert_frame_equal(
        read_history(tmp_path / "resumed"), read_history(tmp_path / "whole")
    )


def test_train_stage_resumes_after_dvc_deleted_its_outputs(tmp_path: Path) -> None:
    cfg = tiny_config("3d-B")
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    train_stage(cfg, pyramid, tmp_path / "whole", tmp_path / "work-whole")
    stale = tmp_path / "work" / "3d-B-seed0-000000000000"
    stale.mkdir(parents=True)
    with pytest.raises(Interrupt):
        train_stage(
            cfg, pyramid, tmp_path / "out", tmp_path / "work", callbacks=[interrupt_at_scale(1)]
        )
    assert not stale.exists()
    (work,) = (tmp_path / "work").glob("3d-B-*")  # beside it: the lock file .3d-B-seed0.lock
    assert torch.load(work / CHECKPOINT_NAME, weights_only=True)["completed_scales"] == 1
    shutil.rmtree(tmp_path / "out")  # what DVC does to a stage's outputs before rerunning it
    calls: list[dict[str, float]] = []
    train_stage(cfg, pyramid, tmp_path / "out", tmp_path / "work", callbacks=[calls.append])
    assert {row["scale"] for row in calls} == {1}  # scale 0 was not trained again
    assert_same_state(state(tmp_path / "whole" / "seed0"), state(tmp_path / "out" / "seed0"))
    assert [p.name for p in (tmp_path / "work").iterdir()] == [".3d-B-seed0.lock"]


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "float32")])
def test_auto_precision_trains_and_records_what_the_device_computes_natively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    import ctgan.layers as layers
    import ctgan.scale_trainer as scale_trainer

    monkeypatch.setattr(layers, "native_bf16", lambda device: native)
    cfg = tiny_config("3d-B", precision="auto")
    resolved = scale_trainer.resolve_training_precision(cfg, torch.device("cpu"))
    assert resolved.train.precision == expected
    assert resolved.training_dict() == tiny_config("3d-B", precision=expected).training_dict()
    plain = tiny_config("3d-B")
    assert scale_trainer.resolve_training_precision(plain, torch.device("cpu")) is plain
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    train_stage(cfg, pyramid, tmp_path / "out", tmp_path / "work")
    recorded = json.loads((tmp_path / "out" / "seed0" / "config.json").read_text())
    assert recorded["train"]["precision"] == expected
    assert load_trained(tmp_path / "out" / "seed0").config.train.precision == expected
    # the same run as one asked for with the resolved value: its work folder's key, its weights
    assert run_key(resolved, 0) != run_key(cfg, 0)
    train_stage(tiny_config("3d-B", precision=expected), pyramid, tmp_path / "b", tmp_path / "wb")
    assert_same_state(state(tmp_path / "out" / "seed0"), state(tmp_path / "b" / "seed0"))


def test_run_key_follows_config_and_seed() -> None:
    cfg = tiny_config("3d-B")
    assert run_key(cfg, 0) == run_key(tiny_config("3d-B"), 0)
    assert run_key(cfg, 0) != run_key(cfg, 1)
    assert run_key(cfg, 0) != run_key(tiny_config("3d-B", lr=1e-3), 0)
    # the GPNN baseline's and the evaluation's keys do not change a training
    other = dataclasses.replace(
        cfg,
        gpnn=dataclasses.replace(cfg.gpnn, iterations=cfg.gpnn.iterations + 1),
        evaluate=dataclasses.replace(cfg.evaluate, num_samples=cfg.evaluate.num_samples + 1),
    )
    assert run_key(other, 0) == run_key(cfg, 0)


def test_a_finished_run_is_not_retrained(tmp_path: Path) -> None:
    cfg = tiny_config("3d-B")
    first = run(cfg, tmp_path)
    calls: list[dict[str, float]] = []
    again = run(cfg, tmp_path, callbacks=[calls.append])
    assert calls == []
    pd.testing.assert_frame_equal(first, again, check_dtype=False)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path: Path) -> None:
    run(tiny_config("3d-B"), tmp_path)
    with pytest.raises(ValueError, match="another config"):
        run(tiny_config("3d-B", lr=1e-3), tmp_path)
    with pytest.raises(ValueError, match=r"another seed \(0\)"):
        run(tiny_config("3d-B"), tmp_path, seed=1)


@pytest.mark.parametrize("model", ["3d", "2d"])
def test_load_trained_rebuilds_the_model_from_the_checkpoint(tmp_path: Path, model: str) -> None:
    cfg = tiny_config(f"{model}-D")
    history = run(cfg, tmp_path / "seed0")
    loaded = load_trained(tmp_path)  # the models/<name>/ folder with one seed
    assert loaded.model_dir == tmp_path / "seed0"
    assert loaded.config == cfg
    assert loaded.scale_shapes == [(4, 12, 12), (6, 18, 18)]
    assert loaded.scale_spacings_zyx_mm == [(5.0, 1.5, 1.5), (2.5, 1.5, 1.5)]
    assert loaded.source["seriesuid"] == "1.2.3"
    assert len(loaded.noise_amplitudes) == 2 and loaded.noise_amplitudes[0] == 1.0
    assert not loaded.generator.training
    assert not any(p.requires_grad for p in loaded.generator.parameters())
    real = torch.from_numpy(synthetic_pyramid(loaded.scale_shapes).volumes[-1])[None, None]
    psnr = reconstruction_psnr(loaded.reconstruct(), real)
    assert psnr == pytest.approx(history["rec_psnr"].iloc[-1], abs=1e-4)
    assert load_trained(tmp_path / "seed0").seed == 0


def test_reference_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    run(tiny_config("3d-B", precision="reference"), tmp_path)
    loaded = load_trained(tmp_path)
    assert next(loaded.generator.parameters()).dtype == torch.float32
    assert loaded.reconstruct().dtype == torch.float32


@pytest.mark.parametrize(
    "overrides",
    [
        {"adversarial_loss": "wgangp"},
        {"adversarial_loss": "zerogp"},
        {"precision": "reference"},
        {"precision": "bf16"},
        {"projection_mode": "edge"},
        {"g_steps": 2, "d_steps": 2},
    ],
    ids=lambda o: "-".join(map(str, o.values())),
)
def test_every_option_trains_to_finite_losses(tmp_path: Path, overrides: dict[str, Any]) -> None:
    cfg = tiny_config("3d-D", **overrides)
    if cfg.train.adversarial_loss != "lsgan":
        weights = load_config(PARAMS, profile="smoke", setting="3d-D").loss_weights
        cfg = dataclasses.replace(cfg, loss_weights=dataclasses.replace(weights, penalty=1.0))
    history = run(cfg, tmp_path)
    assert np.isfinite(history.drop(columns=["segmentation"])).all().all()
    assert np.isfinite(history["segmentation"]).all()


def test_training_changes_only_the_newest_generator(tmp_path: Path) -> None:
    cfg = tiny_config("3d-B")
    with pytest.raises(Interrupt):
        run(cfg, tmp_path, callbacks=[interrupt_at_scale(1)])
    after_scale_0 = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    run(cfg, tmp_path)
    final = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    for key, value in after_scale_0.items():
        assert torch.equal(final[key], value), key  # scale 0 frozen while scale 1 trains
    changed = [k for k in final if k.startswith("scales.1.") and "weight" in k]
    assert any(
        not torch.equal(final[k], after_scale_0[k.replace("scales.1", "scales.0")]) for k in changed
    )


def test_reconstruction_psnr_is_on_the_paper_scale() -> None:
    real = torch.zeros(1, 1, 2, 3, 3)
    assert reconstruction_psnr(real + 0.2, real) == pytest.approx(20.0)  # paper-scale error 0.1
    assert reconstruction_psnr(real, real) == float("inf")


# ---------------------------------------------------------------------------------------------
# Error paths.


def test_train_model_input_errors(tmp_path: Path) -> None:
    cfg = tiny_config("3d-D")
    pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
    no_setting = dataclasses.replace(cfg, setting=None, terms=())
    with pytest.raises(ValueError, match="needs a config with a setting"):
        train_model(no_setting, pyramid, tmp_path, seed=0)
    wrong = synthetic_pyramid([(4, 12, 12), (6, 20, 20)])
    with pytest.raises(ValueError, match="do not match the config's scale shapes"):
        train_model(cfg, wrong, tmp_path, seed=0, segmenter=tiny_segmenter())
    with pytest.raises(ValueError, match="uses the segmentation term but no segmenter"):
        train_model(cfg, pyramid, tmp_path, seed=0)
    short = dataclasses.replace(pyramid, spacings_zyx_mm=pyramid.spacings_zyx_mm[:1])
    with pytest.raises(ValueError, match="one entry per scale"):
        train_model(cfg, short, tmp_path, seed=0, segmenter=tiny_segmenter())


def test_device_and_precision_errors() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="must be auto, cpu or cuda"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="must be float32, bf16 or reference"):
        precision_settings("float16")


def test_load_trained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_trained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        load_trained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="history.tsv not found"):
        read_history(tmp_path / "empty")

    run(tiny_config("3d-B"), tmp_path / "model" / "seed0")
    good = tmp_path / "model" / "seed0" / CHECKPOINT_NAME
    payload = torch.load(good, weights_only=True)

    (tmp_path / "model" / "seed1").mkdir()
    (tmp_path / "model" / "seed1" / CHECKPOINT_NAME).write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="holds several seeds"):
        load_trained(tmp_path / "model")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / CHECKPOINT_NAME).write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_trained(truncated)

    cases = {
        "version": ({**payload, "format_version": 99}, "has format_version 99"),
        "foreign": ({"weights": torch.zeros(2)}, "not a ctgan checkpoint"),
        "mismatch": (
            {
                **payload,
                "generator_architecture": {**payload["generator_architecture"], "channels": 5},
            },
            "does not match the generator architecture",
        ),
    }
    for name, (content, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        torch.save(content, folder / CHECKPOINT_NAME)
        with pytest.raises(ValueError, match=message):
            load_trained(folder)
    assert find_checkpoint(tmp_path / "model" / "seed1").parent.name == "seed1"


# ---------------------------------------------------------------------------------------------
# Slow: the check on the smoke profile.

SAMPLE_IN_FRESH_PROCESS = """
import sys, torch
from ctgan.nets import make_noise
from ctgan.train import load_trained
model = load_trained(sys.argv[1])
noises = make_noise(model.scale_shapes, model.noise_amplitudes, 2, torch.Generator().manual_seed(0))
with torch.no_grad():
    sample = model.generator(noises)
assert sample.shape == (2, 1, *model.scale_shapes[-1]) and torch.isfinite(sample).all()
assert not torch.equal(sample[0], sample[1])
print(sample.shape)
"""


def untrained_psnr(
    cfg: Config, real: torch.Tensor, reconstruction_noise: list[torch.Tensor]
) -> float:
    torch.manual_seed(0)
    channels = (
        cfg.train.generator_channels if cfg.model == "3d" else cfg.train.slice_generator_channels
    )
    depths = [s[0] for s in scale_shapes(cfg.pyramid)]
    pyramid = build_generator_pyramid(cfg.model or "3d", channels, "instance", depths).eval()
    with torch.no_grad():
        return reconstruction_psnr(pyramid(reconstruction_noise), real)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["3d-D", "2d-D"])
def test_smoke_training_gains_5_db_and_a_fresh_process_samples(
    tmp_path: Path, setting: str, tiny_phantom: Path
) -> None:
    """Issue 4's check on the preprocessed phantom (25 iterations per scale instead of 4)."""
    from ctgan.luna16 import Luna16Folder
    from ctgan.preprocess import preprocess_scan

    cfg = load_config(PARAMS, setting=setting, profile="smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iterations_per_scale=25))
    pyramid = preprocess_scan(Luna16Folder(tiny_phantom), None, cfg.pyramid, source="phantom")
    history = train_model(cfg, pyramid, tmp_path / "seed0", seed=0, segmenter=tiny_segmenter())
    finest = history[history.scale == history.scale.max()]
    model = load_trained(tmp_path)
    real = torch.from_numpy(pyramid.volumes[-1])[None, None]
    before = untrained_psnr(cfg, real, model.reconstruction_noise)
    after = finest["rec_psnr"].iloc[-1]
    assert after >= before + 5.0, (before, after)
    print(
        f"{setting}: untrained {before:.2f} dB, first logged {history.rec_psnr.iloc[0]:.2f} dB, final {after:.2f} dB"
    )
    assert after > history["rec_psnr"].iloc[0] + 3.0
    result = subprocess.run(
        [sys.executable, "-c", SAMPLE_IN_FRESH_PROCESS, str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_segmentation_term_trains_the_generator_and_leaves_the_segmenter(tmp_path: Path) -> None:
    from ctgan import losses
    from ctgan.nets import make_reconstruction_noise

    cfg = tiny_config("3d-D")
    shapes = scale_shapes(cfg.pyramid)
    segmenter = tiny_segmenter()
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    pyramid = synthetic_pyramid(shapes)
    train_model(cfg, pyramid, tmp_path, seed=0, segmenter=segmenter)
    assert all(torch.equal(before[k], v) for k, v in segmenter.state_dict().items())

    generator = load_trained(tmp_path).generator.requires_grad_(True)
    noise = make_reconstruction_noise(shapes, torch.Generator().manual_seed(0))
    real = torch.from_numpy(pyramid.volumes[-1])[None, None]
    loss = losses.segmentation_loss(
        generator(noise), real, segmenter, cfg.segmenter.crop_size, torch.Generator()
    )
    loss.backward()
    newest = [p.grad for p in generator.scales[-1].parameters()]
    assert all(g is not None for g in newest) and sum(g.abs().sum() for g in newest) > 0
    assert all(p.grad is None for p in segmenter.parameters())


def test_concurrent_scales_train_the_earlier_scale_at_a_smaller_lr(tmp_path: Path) -> None:
    cfg = tiny_config("3d-B", concurrent_scales=2, concurrent_lr_scale=0.1)
    with pytest.raises(Interrupt):
        run(cfg, tmp_path, callbacks=[interrupt_at_scale(1)])
    after_scale_0 = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    history = run(cfg, tmp_path)
    final = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    moved = [k for k in after_scale_0 if not torch.equal(final[k], after_scale_0[k])]
    assert moved and all(k.startswith("scales.0.") for k in moved)  # scale 0 trained with scale 1
    assert np.isfinite(history.drop(columns=["segmentation"])).all().all()
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    lrs = [group["lr"] for group in payload["optimizers"]["generator"]["param_groups"]]
    decayed = cfg.train.lr * cfg.train.lr_decay_factor
    assert lrs == pytest.approx([decayed * 0.1, decayed])  # scale 0 at lr x 0.1, both decayed


def test_concurrent_scales_refused_with_the_reference_precision() -> None:
    with pytest.raises(ValueError, match="concurrent_scales must be 1 with precision 'reference'"):
        tiny_config("3d-B", concurrent_scales=2, precision="reference")
    with pytest.raises(ValueError, match="train.concurrent_scales must be >= 1; got 0"):
        tiny_config("3d-B", concurrent_scales=0)


@pytest.mark.parametrize("init", ["copy", "identity"])
def test_new_scale_init_reaches_the_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init: str
) -> None:
    """train.new_scale_init is what add_scale is told, at every scale."""
    calls: list[bool] = []
    original = GeneratorPyramid.add_scale

    def add_scale(self: GeneratorPyramid, depth: int, identity: bool = False) -> torch.nn.Module:
        calls.append(identity)
        return original(self, depth, identity=identity)

    monkeypatch.setattr(GeneratorPyramid, "add_scale", add_scale)
    run(tiny_config("3d-B", new_scale_init=init), tmp_path)
    assert len(calls) >= 2 and all(called == (init == "identity") for called in calls)


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e-3])
def test_max_grad_norm_clips_the_generator_gradient_before_each_step(max_grad_norm: float) -> None:
    from ctgan.train import scale_trainer_at

    cfg = tiny_config("3d-B", max_grad_norm=max_grad_norm, concurrent_scales=2)
    volumes = [v.astype(np.float32) for v in synthetic_pyramid(scale_shapes(cfg.pyramid)).volumes]
    trainer = scale_trainer_at(cfg, volumes, 1)
    assert len(trainer.g_params) == sum(
        len(list(trainer.generator.scales[t].parameters())) for t in (0, 1)
    )
    norms: list[float] = []
    step = trainer.opt_g.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads = [p.grad for p in trainer.g_params if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(*args, **kwargs)

    trainer.opt_g.step = recording_step  # type: ignore[method-assign]
    trainer.iteration(0)
    assert len(norms) == cfg.train.g_steps
    if max_grad_norm:
        assert max(norms) <= max_grad_norm * (1 + 1e-4)
    else:
        assert min(norms) > 1e-3  # unclipped, the same iteration's gradients are far larger


def test_max_grad_norm_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"train.max_grad_norm must be >= 0 \(0 = no clipping"):
        tiny_config("3d-B", max_grad_norm=-1.0)
