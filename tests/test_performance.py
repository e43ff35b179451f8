"""The per-iteration unit the training benchmark times (ctgan.train.scale_trainer_at)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ctgan.config import Config, PyramidConfig, load_config, scale_shapes
from ctgan.train import scale_trainer_at

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def tiny_config() -> Config:
    cfg = load_config(PARAMS, setting="3d-B", profile="smoke")
    pyramid = PyramidConfig(min_size=12, max_size=18, scale_factor=1.5, depth_ratio=3)
    train = dataclasses.replace(
        cfg.train, generator_channels=4, discriminator_channels=4, device="cpu"
    )
    return dataclasses.replace(cfg, pyramid=pyramid, train=train)


def tiny_volumes(cfg: Config) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.tanh(rng.standard_normal(s)).astype(np.float32) for s in scale_shapes(cfg.pyramid)]


def test_scale_trainer_at_rejects_a_scale_outside_the_pyramid() -> None:
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"scale must be in \[0, 1\]; got 2"):
        scale_trainer_at(cfg, tiny_volumes(cfg), 2)


def test_an_iteration_trains_the_newest_scale_and_leaves_the_frozen_one() -> None:
    cfg = tiny_config()
    trainer = scale_trainer_at(cfg, tiny_volumes(cfg), 1)
    frozen = [p.detach().clone() for p in trainer.generator.scales[0].parameters()]
    newest = [p.detach().clone() for p in trainer.generator.scales[1].parameters()]
    trainer.iteration(0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(frozen, trainer.generator.scales[0].parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(newest, trainer.generator.scales[1].parameters(), strict=True)
    )
    row = trainer.log_row(0)
    assert row["scale"] == 1 and np.isfinite(row["d_loss"]) and np.isfinite(row["rec_psnr"])
    assert len(trainer.state.noise_amplitudes) == 2
