"""The run configuration: the frozen :class:`Config` and ``load_config``, the only reader of params.yaml.

A resolved :class:`Config` is the active profile's numbers, overridden by the non-null values of
the top-level sections of params.yaml, then by the chosen setting's own keys. It never changes
after it is built; derived values (scale shapes, number of scales) come from pure functions.
The sections themselves (one checked dataclass each) and the names of the valid choices are in
:mod:`ctgan.sections`; they are re-exported here, so ``from ctgan.config import TrainConfig``
keeps working.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ctgan.sections import (
    ADVERSARIAL_LOSSES,
    DATA_SOURCES,
    DEVICES,
    DOWNSTREAM_MODELS,
    LOSS_TERMS,
    MODELS,
    PRECISIONS,
    PROFILES,
    PROJECTION_MODES,
    SETTING_LETTERS,
    SETTINGS,
    DataConfig,
    DownstreamConfig,
    EvaluateConfig,
    GpnnConfig,
    LossWeights,
    PyramidConfig,
    SegmenterConfig,
    TrainConfig,
    _choice,
)

__all__ = [
    "ADVERSARIAL_LOSSES",
    "DATA_SOURCES",
    "DEVICES",
    "DOWNSTREAM_MODELS",
    "LOSS_TERMS",
    "MODELS",
    "NOT_TRAINING_SECTIONS",
    "PRECISIONS",
    "PROFILES",
    "PROJECTION_MODES",
    "SETTINGS",
    "SETTING_LETTERS",
    "Config",
    "DataConfig",
    "DownstreamConfig",
    "EvaluateConfig",
    "GpnnConfig",
    "LossWeights",
    "PyramidConfig",
    "SegmenterConfig",
    "TrainConfig",
    "check_params_file",
    "config_from_dict",
    "iterations_for_scale",
    "load_config",
    "num_scales",
    "resolve_config",
    "scale_shapes",
    "validate_params",
]


@dataclass(frozen=True)
class Config:
    """A resolved run: profile + overrides (+ a setting, for training and evaluation)."""

    profile: str
    data: DataConfig
    pyramid: PyramidConfig
    train: TrainConfig
    segmenter: SegmenterConfig
    evaluate: EvaluateConfig
    loss_weights: LossWeights
    setting: str | None = None
    terms: tuple[str, ...] = field(default_factory=tuple)
    gpnn: GpnnConfig = field(default_factory=GpnnConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def __post_init__(self) -> None:
        _choice("profile", self.profile, PROFILES)
        if self.setting is not None:
            _choice("setting", self.setting, SETTINGS)
        for term in self.terms:
            _choice("settings term", term, LOSS_TERMS)
        start, scales = self.train.sample_start_scale, num_scales(self.pyramid)
        if start >= scales:
            raise ValueError(
                f"train.sample_start_scale must be below the number of scales ({scales} for "
                f"min_size {self.pyramid.min_size}, max_size {self.pyramid.max_size}); got {start}"
            )
        if start > 0 and self.model == "2d":
            raise ValueError(
                f"train.sample_start_scale must be 0 for the 2D settings ({self.setting}): the "
                f"slice-stack generator has no noise above its coarsest scale, so every sample "
                f"starting at scale {start} would be the same volume; set "
                f"settings.{self.setting}.sample_start_scale: 0 in params.yaml"
            )

    @property
    def model(self) -> str | None:
        """'3d' or '2d' (from the setting's name), None when no setting is chosen."""
        return None if self.setting is None else self.setting.split("-")[0]

    def uses(self, term: str) -> bool:
        _choice("loss term", term, LOSS_TERMS)
        return term in self.terms

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``config_from_dict`` inverts it."""
        return _to_plain(dataclasses.asdict(self))

    def training_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the sections that do not change a training (``evaluate``,
        ``gpnn``, ``downstream``): what the resume check and the run key compare."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_TRAINING_SECTIONS}


NOT_TRAINING_SECTIONS = ("evaluate", "gpnn", "downstream")  # read after training, never by it


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Building a Config from plain dicts, with checks at the boundary.

_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "pyramid": PyramidConfig,
    "train": TrainConfig,
    "segmenter": SegmenterConfig,
    "evaluate": EvaluateConfig,
    "gpnn": GpnnConfig,
    "downstream": DownstreamConfig,
}
_PROFILE_SECTIONS = ("pyramid", "train", "segmenter", "evaluate", "gpnn", "downstream")
_TOP_KEYS = ("profile", "data", *_PROFILE_SECTIONS, "settings", "loss_weights", "profiles")


def _check_keys(where: str, given: Mapping[str, Any], valid: tuple[str, ...] | list[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
            f"{where}; valid keys: {', '.join(valid)}"
        )


def _coerce(where: str, value: Any, annotation: str) -> Any:
    """Check one value against its dataclass annotation (as a string) and convert it."""
    ann = annotation.replace(" ", "")
    if ann == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false; got {value!r}")
        return value
    if ann == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer; got {value!r} ({type(value).__name__})")
        return value
    if ann == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number; got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite; got {value!r}")
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string; got {value!r} ({type(value).__name__})")
        return value
    if ann.startswith("tuple[") and ann.endswith(",...]"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list; got {value!r} ({type(value).__name__})")
        item = ann[len("tuple[") : -len(",...]")]
        return tuple(_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if ann.startswith("tuple["):
        inner = ann[len("tuple[") : -1].split(",")
        if not isinstance(value, (list, tuple)) or len(value) != len(inner):
            raise ValueError(f"{where} must be a list of {len(inner)} values; got {value!r}")
        return tuple(
            _coerce(f"{where}[{i}]", v, t)
            for i, (v, t) in enumerate(zip(value, inner, strict=True))
        )
    raise AssertionError(f"unsupported annotation {annotation}")  # internal invariant


def _build(cls: type, where: str, values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping of keys to values; got {values!r}")
    names = [f.name for f in fields(cls)]
    _check_keys(where, values, names)
    kwargs = {
        f.name: _coerce(f"{where}.{f.name}", values[f.name], str(f.type))
        for f in fields(cls)
        if f.name in values
    }
    return cls(**kwargs)


def _section_values(where: str, values: Any, cls: type) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping of keys to values; got {values!r}")
    _check_keys(where, values, [f.name for f in fields(cls)])
    return {k: v for k, v in values.items() if v is not None}


def resolve_config(
    params: Mapping[str, Any],
    *,
    setting: str | None = None,
    profile: str | None = None,
) -> Config:
    """Resolve a params mapping (the content of params.yaml) into a frozen :class:`Config`."""
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping; got {type(params).__name__}")
    _check_keys("params.yaml", params, _TOP_KEYS)
    profile = profile if profile is not None else params.get("profile", "cpu")
    _choice("profile", profile, PROFILES)
    profiles = params.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise ValueError("profiles must be a mapping of profile name to its sections")
    _check_keys("profiles", profiles, PROFILES)
    if profile not in profiles:
        raise ValueError(
            f"profile {profile!r} is not defined under profiles in params.yaml; "
            f"defined: {', '.join(profiles) or 'none'}"
        )
    prof = profiles[profile] or {}
    _check_keys(f"profiles.{profile}", prof, _PROFILE_SECTIONS)

    merged: dict[str, dict[str, Any]] = {}
    for name in _PROFILE_SECTIONS:
        cls = _SECTIONS[name]
        merged[name] = _section_values(f"profiles.{profile}.{name}", prof.get(name), cls)
        merged[name].update(_section_values(name, params.get(name), cls))
    merged["data"] = _section_values("data", params.get("data"), DataConfig)

    terms: tuple[str, ...] = ()
    if setting is not None:
        _choice("setting", setting, SETTINGS)
        settings = params.get("settings") or {}
        if not isinstance(settings, Mapping):
            raise ValueError("settings must be a mapping of setting name to its terms")
        _check_keys("settings", settings, SETTINGS)
        if setting not in settings:
            raise ValueError(
                f"setting {setting!r} is not defined under settings in params.yaml; "
                f"defined: {', '.join(settings) or 'none'}"
            )
        entry = settings[setting] or {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"settings.{setting} must be a mapping with a 'terms' list")
        train_keys = [f.name for f in fields(TrainConfig)]
        _check_keys(f"settings.{setting}", entry, ["terms", *train_keys])
        raw_terms = entry.get("terms")
        if not isinstance(raw_terms, list) or not raw_terms:
            raise ValueError(
                f"settings.{setting}.terms must be a non-empty list of {', '.join(LOSS_TERMS)}; "
                f"got {raw_terms!r}"
            )
        for term in raw_terms:
            _choice(f"settings.{setting}.terms", term, LOSS_TERMS)
        if "adversarial" not in raw_terms:
            raise ValueError(
                f"settings.{setting}.terms must include 'adversarial' (every row of the paper "
                f"has it); got {raw_terms}"
            )
        terms = tuple(t for t in LOSS_TERMS if t in raw_terms)
        merged["train"].update({k: v for k, v in entry.items() if k != "terms"})

    built = {name: _build(_SECTIONS[name], name, merged[name]) for name in _SECTIONS}

    weights_all = params.get("loss_weights") or {}
    if not isinstance(weights_all, Mapping):
        raise ValueError("loss_weights must be a mapping of adversarial loss to weights")
    _check_keys("loss_weights", weights_all, ADVERSARIAL_LOSSES)
    adversarial = built["train"].adversarial_loss
    if adversarial not in weights_all:
        raise ValueError(
            f"loss_weights.{adversarial} is missing from params.yaml "
            f"(needed by train.adversarial_loss={adversarial!r})"
        )
    weights = _build(LossWeights, f"loss_weights.{adversarial}", weights_all[adversarial])
    return Config(profile=profile, loss_weights=weights, setting=setting, terms=terms, **built)


def load_config(
    path: str | Path = "params.yaml",
    *,
    setting: str | None = None,
    profile: str | None = None,
) -> Config:
    """Read params.yaml and resolve it for ``profile`` (default: its ``profile:`` key) and ``setting``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"params file {path} not found; run from the repository root or pass the path "
            f"of params.yaml"
        )
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    return resolve_config(params or {}, setting=setting, profile=profile)


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check the whole of a params mapping, not only what one run reads: the active profile with
    every setting defined under ``settings``, and every other profile under ``profiles``.

    A key no run would read (a typo in another profile, an unknown setting) is an error too;
    DVC records only the keys its stages track, so this is the only place such a typo is seen.
    Returns a summary: the active profile, the number of settings and of profiles."""
    base = resolve_config(params)
    settings = params.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ValueError("settings must be a mapping of setting name to its terms")
    _check_keys("settings", settings, SETTINGS)
    for setting in settings:
        resolve_config(params, setting=setting)
    profiles = params.get("profiles") or {}
    for name in profiles:
        resolve_config(params, profile=name)
    loss_weights = params.get("loss_weights") or {}
    for name, weights in loss_weights.items():
        _build(LossWeights, f"loss_weights.{name}", weights)
    return {"profile": base.profile, "settings": len(settings), "profiles": len(profiles)}


def check_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """:func:`validate_params` on a params.yaml file (what ``ctgan check-params`` runs)."""
    path = Path(path)
    load_config(path)  # a missing file, invalid YAML: the usual messages
    return validate_params(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a checkpoint's config.json)."""
    _check_keys("config", values, [f.name for f in fields(Config)])
    built = {name: _build(cls, name, values.get(name, {})) for name, cls in _SECTIONS.items()}
    weights = _build(LossWeights, "loss_weights", values.get("loss_weights", {}))
    return Config(
        profile=values.get("profile", "cpu"),
        loss_weights=weights,
        setting=values.get("setting"),
        terms=tuple(values.get("terms", ())),
        **built,
    )


# ---------------------------------------------------------------------------------------------
# Derived values: pure functions of the config.


def num_scales(pyramid: PyramidConfig) -> int:
    """Number of scales: round(ln(max/min) / ln(factor)) + 1 (paper: 5, sizes 28..141)."""
    return round(math.log(pyramid.max_size / pyramid.min_size) / math.log(pyramid.scale_factor)) + 1


def scale_shapes(pyramid: PyramidConfig) -> list[tuple[int, int, int]]:
    """(D, H, W) of every scale, coarsest first: S_s = int(min * factor**s), D_s = int(S_s / ratio).

    Paper: (4, 28, 28), (7, 42, 42), (10, 63, 63), (15, 94, 94), (23, 141, 141).
    """
    shapes = []
    for s in range(num_scales(pyramid)):
        size = int(pyramid.min_size * pyramid.scale_factor**s)
        shapes.append((int(size / pyramid.depth_ratio), size, size))
    return shapes


def iterations_for_scale(train: TrainConfig, scale: int, num_scales: int) -> int:
    """Iterations at scale s: iterations_per_scale * (s + 1) (paper: 1000, 2000, ..., 5000),
    times ``train.finest_iterations_factor`` at the finest scale (``num_scales - 1``)."""
    iterations = train.iterations_per_scale * (scale + 1)
    if scale == num_scales - 1:
        iterations = max(1, int(round(iterations * train.finest_iterations_factor)))
    return iterations
