"""The config: params.yaml resolves per profile and setting; every bad input names the key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ctgan.config import (
    PROFILES,
    SETTINGS,
    Config,
    DownstreamConfig,
    PyramidConfig,
    config_from_dict,
    iterations_for_scale,
    load_config,
    num_scales,
    resolve_config,
    scale_shapes,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def params(**changes):
    """A deep copy of the repository's params.yaml with dotted-key changes applied."""
    p = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        node = p
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return p


def test_repository_params_resolve_for_every_profile_and_setting():
    for profile in PROFILES:
        for setting in SETTINGS:
            cfg = load_config(ROOT / "params.yaml", profile=profile, setting=setting)
            assert isinstance(cfg, Config)
            assert cfg.profile == profile and cfg.setting == setting
            assert "adversarial" in cfg.terms


def test_default_profile_is_cpu():
    assert load_config(ROOT / "params.yaml").profile == "cpu"


def test_paper_pyramid_matches_the_seed():
    cfg = load_config(ROOT / "params.yaml", profile="paper")
    assert num_scales(cfg.pyramid) == 5
    assert scale_shapes(cfg.pyramid) == [
        (4, 28, 28),
        (7, 42, 42),
        (10, 63, 63),
        (15, 94, 94),
        (23, 141, 141),
    ]
    assert [iterations_for_scale(cfg.train, s, 5) for s in range(5)] == [
        1000,
        2000,
        3000,
        4000,
        5000,
    ]
    longer = dataclasses.replace(cfg.train, finest_iterations_factor=2.5)
    assert [iterations_for_scale(longer, s, 5) for s in range(5)] == [1000, 2000, 3000, 4000, 12500]
    assert cfg.train.lr == 5e-4 and cfg.train.betas == (0.5, 0.999)
    assert (cfg.loss_weights.reconstruction, cfg.loss_weights.projection) == (100.0, 100.0)


def test_cpu_profile_is_three_scales_up_to_63():
    cfg = load_config(ROOT / "params.yaml", profile="cpu")
    assert scale_shapes(cfg.pyramid) == [(4, 28, 28), (7, 42, 42), (10, 63, 63)]


@pytest.mark.parametrize(
    ("setting", "terms"),
    [
        ("3d-A", ("adversarial",)),
        ("3d-B", ("adversarial", "reconstruction")),
        ("3d-C", ("adversarial", "reconstruction", "projection")),
        ("3d-D", ("adversarial", "reconstruction", "projection", "segmentation")),
        ("2d-A", ("adversarial", "reconstruction")),
        ("2d-B", ("adversarial", "reconstruction", "projection")),
        ("2d-C", ("adversarial", "reconstruction", "projection", "segmentation")),
        ("2d-D", ("adversarial", "reconstruction", "segmentation")),
    ],
)
def test_settings_are_the_papers_tables(setting, terms):
    cfg = load_config(ROOT / "params.yaml", setting=setting)
    assert cfg.terms == terms
    assert cfg.model == setting[:2]


def test_top_level_overrides_beat_the_profile_and_setting_overrides_beat_both():
    p = params(**{"train.iterations_per_scale": 7})
    p["settings"]["3d-B"] = {"terms": ["adversarial", "reconstruction"], "iterations_per_scale": 9}
    assert resolve_config(p, setting="3d-A").train.iterations_per_scale == 7
    assert resolve_config(p, setting="3d-B").train.iterations_per_scale == 9


def test_loss_weights_follow_the_adversarial_loss():
    cfg = resolve_config(params(**{"train.adversarial_loss": "wgangp"}))
    assert cfg.loss_weights.reconstruction == 10.0 and cfg.loss_weights.penalty == 0.1


def test_config_round_trips_through_a_dict():
    cfg = load_config(ROOT / "params.yaml", setting="2d-C", profile="paper")
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    (
        "profile",
        "num_volumes",
        "seeds",
        "iterations",
        "base_channels",
        "batch_size",
        "tests",
        "precision",
        "workers",
    ),
    [
        ("smoke", 2, 2, 4, 4, 2, 1, "float32", 1),
        ("cpu", 8, 5, 60, 8, 4, 3, "auto", 2),
        ("paper", 16, 5, 1000, 16, 4, 8, "float32", 1),
    ],
)
def test_downstream_profile_values_resolve(
    profile, num_volumes, seeds, iterations, base_channels, batch_size, tests, precision, workers
):
    down = load_config(ROOT / "params.yaml", profile=profile).downstream
    assert down == DownstreamConfig(
        models=("3d-B", "gpnn"),
        num_volumes=num_volumes,
        seeds=seeds,
        iterations=iterations,
        base_channels=base_channels,
        batch_size=batch_size,
        lr=0.001,
        test_scans=tests,
        precision=precision,
        workers=workers,
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("downstream.precision", "fp16", "downstream.precision must be one of auto, float32, bf16"),
        ("downstream.workers", 0, "downstream.workers must be"),
    ],
)
def test_downstream_speed_keys_are_checked(key, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(params(**{key: value}))


def test_downstream_top_level_overrides_the_profile():
    cfg = resolve_config(params(**{"downstream.models": ["2d-C"], "downstream.seeds": 7}))
    assert cfg.downstream.models == ("2d-C",) and cfg.downstream.seeds == 7
    assert cfg.downstream.num_volumes == 8  # the cpu profile's


def test_downstream_is_not_part_of_a_training():
    from ctgan.train_stage import run_key

    base = resolve_config(params(), setting="3d-B")
    changed = resolve_config(
        params(**{"downstream.models": ["gpnn"], "downstream.iterations": 9}), setting="3d-B"
    )
    assert "downstream" in base.to_dict() and "downstream" not in base.training_dict()
    assert base.training_dict() == changed.training_dict()
    assert run_key(base, 0) == run_key(changed, 0)


def test_config_without_downstream_rebuilds_with_its_defaults():
    """A checkpoint's config.json written before the downstream section existed."""
    values = load_config(ROOT / "params.yaml", setting="3d-A").to_dict()
    del values["downstream"]
    assert config_from_dict(values).downstream == DownstreamConfig()


def test_config_is_frozen():
    cfg = load_config(ROOT / "params.yaml")
    with pytest.raises(AttributeError):
        cfg.profile = "paper"  # type: ignore[misc]


# --- every error path -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"profile": "fast"}, r"profile must be one of smoke, cpu, paper; got 'fast'"),
        ({"data.source": "lidc"}, r"data.source must be one of phantom, luna16; got 'lidc'"),
        ({"data.phantom_scans": 0}, r"data.phantom_scans must be >= 1"),
        ({"data.phantom_size": 32}, r"data.phantom_size must be >= 64"),
        ({"data.seriesuid": 5}, r"data.seriesuid must be a string; got 5"),
        ({"data.colour": 1}, r"unknown key 'colour' in data; valid keys: source"),
        ({"train.iterations_per_scale": "many"}, r"train.iterations_per_scale must be an integer"),
        ({"train.iterations_per_scale": 0}, r"train.iterations_per_scale must be >= 1"),
        ({"train.lr": -1.0}, r"train.lr must be > 0"),
        ({"train.lr": float("nan")}, r"train.lr must be finite"),
        ({"train.lr": True}, r"train.lr must be a number"),
        ({"train.betas": [0.5]}, r"train.betas must be a list of 2 values"),
        ({"train.betas": [0.5, 1.5]}, r"train.betas must be two numbers in \[0, 1\)"),
        ({"train.lr_decay_fraction": 1.5}, r"train.lr_decay_fraction must be in \(0, 1\]"),
        ({"train.lr_decay_factor": 0.0}, r"train.lr_decay_factor must be > 0"),
        ({"train.adversarial_loss": "hinge"}, r"adversarial_loss must be one of lsgan, wgangp"),
        ({"train.projection_mode": "max"}, r"projection_mode must be one of mean, edge"),
        ({"train.precision": "fp16"}, r"precision must be one of auto, float32, bf16, reference"),
        ({"train.device": "tpu"}, r"train.device must be one of auto, cpu, cuda"),
        ({"train.new_scale_init": "zero"}, r"new_scale_init must be one of copy, identity; got"),
        ({"train.generator_channels": 0}, r"train.generator_channels must be >= 1"),
        ({"train.epochs": 3}, r"unknown key 'epochs' in train"),
        ({"pyramid.min_size": 4}, r"pyramid.min_size must be >= 8"),
        ({"pyramid.max_size": 10}, r"pyramid.max_size \(10\) must be >= pyramid.min_size"),
        ({"pyramid.scale_factor": 1.0}, r"pyramid.scale_factor must be > 1"),
        ({"pyramid.depth_ratio": 0.0}, r"pyramid.depth_ratio must be > 0"),
        ({"pyramid.depth_ratio": 40.0}, r"gives depth 0 at min_size"),
        ({"segmenter.crop_size": [2, 96, 96]}, r"segmenter.crop_size must be \[D, H, W\]"),
        ({"segmenter.iterations": 0}, r"segmenter.iterations must be >= 1"),
        ({"segmenter.lr": 0.0}, r"segmenter.lr must be > 0"),
        ({"evaluate.num_samples": 1}, r"evaluate.num_samples must be >= 2"),
        (
            {"downstream.models": ["3d-E"]},
            r"downstream.models must be one of 3d-A, .*, gpnn; got '3d-E'",
        ),
        (
            {"downstream.models": []},
            r"downstream.models must be a non-empty list of 3d-A, .*, gpnn",
        ),
        ({"downstream.models": "gpnn"}, r"downstream.models must be a list; got 'gpnn' \(str\)"),
        ({"downstream.models": ["3d-B", 3]}, r"downstream.models\[1\] must be a string; got 3"),
        ({"downstream.num_volumes": 0}, r"downstream.num_volumes must be >= 1; got 0"),
        ({"downstream.seeds": 0}, r"downstream.seeds must be >= 1; got 0"),
        ({"downstream.test_scans": 0}, r"downstream.test_scans must be >= 1; got 0"),
        ({"downstream.lr": 0.0}, r"downstream.lr must be > 0"),
        ({"profiles.cpu.downstream.models": ["gan"]}, r"downstream.models must be one of"),
        ({"loss_weights.lsgan.reconstruction": -1.0}, r"loss weight reconstruction must be >= 0"),
        ({"loss_weights.lsgan.style": 1.0}, r"unknown key 'style' in loss_weights.lsgan"),
        ({"extra": 1}, r"unknown key 'extra' in params.yaml; valid keys: profile"),
        ({"train": [1, 2]}, r"train must be a mapping"),
        ({"profiles.cpu.train.seeds": 0}, r"train.seeds must be >= 1"),
        ({"profiles.cpu.optimizer": {}}, r"unknown key 'optimizer' in profiles.cpu"),
        ({"profiles.turbo": {}}, r"unknown key 'turbo' in profiles; valid keys: smoke, cpu, paper"),
    ],
)
def test_bad_params_are_rejected_with_the_key_and_the_choices(changes, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(params(**changes))


@pytest.mark.parametrize(
    ("setting_entry", "match"),
    [
        ({"terms": []}, r"settings.3d-A.terms must be a non-empty list"),
        ({"terms": ["adversarial", "style"]}, r"settings.3d-A.terms must be one of adversarial"),
        ({"terms": ["reconstruction"]}, r"must include 'adversarial'"),
        ({"terms": ["adversarial"], "epochs": 3}, r"unknown key 'epochs' in settings.3d-A"),
        ([1], r"settings.3d-A must be a mapping"),
    ],
)
def test_bad_settings_are_rejected(setting_entry, match):
    p = params()
    p["settings"]["3d-A"] = setting_entry
    with pytest.raises(ValueError, match=match):
        resolve_config(p, setting="3d-A")


def test_unknown_setting_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"setting must be one of 3d-A, 3d-B.*got '3d-E'"):
        resolve_config(params(), setting="3d-E")


def test_setting_missing_from_params():
    p = params()
    del p["settings"]["2d-D"]
    with pytest.raises(ValueError, match=r"setting '2d-D' is not defined under settings"):
        resolve_config(p, setting="2d-D")


def test_profile_missing_from_params():
    p = params()
    del p["profiles"]["paper"]
    with pytest.raises(ValueError, match=r"profile 'paper' is not defined under profiles"):
        resolve_config(p, profile="paper")


def test_missing_loss_weights_for_the_chosen_adversarial_loss():
    p = params(**{"train.adversarial_loss": "zerogp"})
    del p["loss_weights"]["zerogp"]
    with pytest.raises(ValueError, match=r"loss_weights.zerogp is missing"):
        resolve_config(p)


def test_params_that_are_not_a_mapping():
    with pytest.raises(ValueError, match=r"params must be a mapping; got list"):
        resolve_config([1, 2])  # type: ignore[arg-type]


def test_missing_params_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"params file .*nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: [cpu\n")
    with pytest.raises(ValueError, match=r"is not valid YAML"):
        load_config(bad)


def test_unknown_loss_term_query():
    with pytest.raises(ValueError, match=r"loss term must be one of"):
        load_config(ROOT / "params.yaml", setting="3d-A").uses("style")


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key 'colour' in config"):
        config_from_dict({"colour": 1})


@given(
    min_size=st.integers(8, 64),
    ratio=st.floats(1.05, 3.0),
    steps=st.integers(0, 6),
)
def test_scale_shapes_grow_monotonically_and_end_near_max(min_size, ratio, steps):
    max_size = int(min_size * ratio**steps)
    pyramid = PyramidConfig(
        min_size=min_size, max_size=max(max_size, min_size), scale_factor=ratio, depth_ratio=4.0
    )
    shapes = scale_shapes(pyramid)
    assert shapes[0][1] == min_size
    assert all(a[1] <= b[1] and a[0] <= b[0] for a, b in zip(shapes, shapes[1:], strict=False))
    assert all(d >= 1 and h == w for d, h, w in shapes)
    assert abs(shapes[-1][1] - pyramid.max_size) <= pyramid.max_size * (ratio - 1) + 1


def test_data_root_is_relative_to_params_yaml(tmp_path):
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.root_for(tmp_path / "params.yaml") == tmp_path / cfg.data.root
