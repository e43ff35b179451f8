"""The report's markdown: the paper's tables beside ours, the realism tables, and their texts.

Pure functions of the metrics dicts (``metrics/<model>-<setting>.json``, written by
``ctgan.evaluate``; ``metrics/gpnn.json`` for the training-free GPNN row): no files written, no
model loaded. ``ctgan.report.build_report`` assembles them with the figures. Every table reads
its values defensively: a metric absent from a file (an older file, a model without a
segmenter) shows as n/a.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctgan import anatomy
from ctgan.config import LOSS_TERMS, MODELS, SETTING_LETTERS, TrainConfig
from ctgan.io import read_json

# The seed README's tables (all settings LSGAN). The first table is 3D, the second 2D
# (ctgan-facts §5, "Which table is which").
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "3d": {
        "A": {"mse": 0.0054, "psnr": 22.639, "ssim": 0.7514},
        "B": {"mse": 0.0025, "psnr": 25.991, "ssim": 0.8359},
        "C": {"mse": 0.0024, "psnr": 26.070, "ssim": 0.8427},
        "D": {"mse": 0.0017, "psnr": 27.925, "ssim": 0.8769},
    },
    "2d": {
        "A": {"mse": 0.00011, "psnr": 39.487, "ssim": 0.9878},
        "B": {"mse": 0.00049, "psnr": 33.094, "ssim": 0.9554},
        "C": {"mse": 0.00032, "psnr": 34.931, "ssim": 0.9674},
        "D": {"mse": 0.00006, "psnr": 41.967, "ssim": 0.9956},
    },
}

TERM_HEADERS = {
    "adversarial": "Lsgan",
    "reconstruction": "Rec",
    "projection": "Pr",
    "segmentation": "Seg",
}
PAPER_METRICS = ("mse", "psnr", "ssim")
METRIC_DIGITS = {"mse": 5, "psnr": 3, "ssim": 4}

# The anatomy table: (family, metric, column header, digits); the real volume's own value is
# ``anatomy.<metric>_real`` where the family is anatomy.
ANATOMY_COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    ("anatomy", "lung_fraction_of_body", "lung fraction of body", 3),
    ("anatomy", "lungs_both_sides", "lungs both sides", 2),
    ("anatomy", "tissue_l1", "tissue L1 ↓", 3),
    ("anatomy", "body_hu_wasserstein", "body HU W1 ↓", 1),
    ("diversity", "diversity", "diversity ↑", 3),
    ("memorisation", "max_ssim_to_training", "max SSIM to training ↓", 3),
)
TISSUE_HEADERS = {
    "air_lung": "air/lung < -400",
    "transition": "-400..-200",
    "fat": "fat -200..-50",
    "soft_tissue": "soft -50..150",
    "dense": "dense 150..300",
    "bone": "bone ≥ 300",
}
# The distribution table: (family, metric, column header, digits).
REALISM_COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    ("realism", "frechet_axial", "FD axial ↓", 3),
    ("realism", "frechet_coronal", "FD coronal ↓", 3),
    ("realism", "frechet_sagittal", "FD sagittal ↓", 3),
    ("realism", "lung_fraction", "lung fraction of the volume", 3),
    ("diversity", "voxel_sd_hu", "voxel sd (HU)", 1),
)
GPNN_NAME = "gpnn"
GPNN_LABEL = "GPNN (no training)"
REAL_LABEL = "real (training volume)"
# The train keys of the seed's procedure: any other key in a model's recorded config.train is a
# realism switch the report names (read defensively: a metrics file may predate a switch). The
# learning rate is not among them: a profile's lr other than the seed's (the cpu profile's 2e-3,
# README departure 18) is named too.
SEED_TRAIN_KEYS = frozenset(
    {
        "iterations_per_scale",
        "betas",
        "lr_decay_fraction",
        "lr_decay_factor",
        "g_steps",
        "d_steps",
        "adversarial_loss",
        "projection_mode",
        "generator_channels",
        "discriminator_channels",
        "slice_generator_channels",
        "precision",
        "device",
        "seeds",
        "log_every",
    }
)
SEED_CONFIG_KEYS = frozenset(
    {"profile", "data", "pyramid", "train", "segmenter", "evaluate", "loss_weights"}
    | {"setting", "terms"}
)


def setting_names() -> list[str]:
    return [f"{m}-{s}" for m in MODELS for s in SETTING_LETTERS]


def load_all_metrics(metrics_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``metrics/<model>-<setting>.json`` for every setting; missing files are an error."""
    metrics_dir = Path(metrics_dir)
    missing = [n for n in setting_names() if not (metrics_dir / f"{n}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"metrics for {', '.join(missing)} not found in {metrics_dir}; run the evaluate "
            f"stages first (`dvc repro`)"
        )
    return {n: read_json(metrics_dir / f"{n}.json") for n in setting_names()}


def metric_summary(metrics: Mapping[str, Any], family: str, name: str) -> tuple[float, float]:
    """(mean, sd) of ``metrics[family][name]``; sd is 0 for a single seed, NaN when absent."""
    entry = metrics.get(family, {}).get(name)
    if entry is None:
        return math.nan, math.nan
    if isinstance(entry, Mapping):
        return float(entry.get("mean", math.nan)), float(entry.get("sd", 0.0))
    return float(entry), 0.0


def format_value(mean: float, sd: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if sd and not math.isnan(sd):
        text += f" ± {sd:.{digits}f}"
    return text


def ablation_table(
    model: str,
    metrics: Mapping[str, Mapping[str, Any]],
    terms: Mapping[str, Sequence[str]],
) -> str:
    """One of the paper's tables as markdown: loss terms ticked, then ours and the paper's metrics."""
    header = (
        ["Setting"]
        + [TERM_HEADERS[t] for t in LOSS_TERMS]
        + [f"{m.upper()} (ours)" for m in PAPER_METRICS]
        + [f"{m.upper()} (paper)" for m in PAPER_METRICS]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for letter in SETTING_LETTERS:
        name = f"{model}-{letter}"
        row = [letter] + ["√" if t in terms[name] else "" for t in LOSS_TERMS]
        for m in PAPER_METRICS:
            mean, sd = metric_summary(metrics[name], "reconstruction", m)
            row.append(format_value(mean, sd, METRIC_DIGITS[m]))
        for m in PAPER_METRICS:
            row.append(f"{PAPER_RESULTS[model][letter][m]:.{METRIC_DIGITS[m]}f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def load_gpnn_metrics(metrics_dir: str | Path) -> dict[str, Any] | None:
    """``metrics/gpnn.json`` (the training-free GPNN reference) if the GPNN stage wrote it."""
    path = Path(metrics_dir) / f"{GPNN_NAME}.json"
    return read_json(path) if path.is_file() else None


def _rows(
    metrics: Mapping[str, Mapping[str, Any]], gpnn: Mapping[str, Any] | None
) -> list[tuple[str, Mapping[str, Any]]]:
    rows = [(name, metrics[name]) for name in setting_names() if name in metrics]
    if gpnn is not None:
        rows.append((GPNN_LABEL, gpnn))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _real_entry(metrics: Mapping[str, Mapping[str, Any]], name: str) -> tuple[float, float]:
    """The training volume's own value of ``anatomy.<name>``, from the first file holding it."""
    for values in metrics.values():
        mean, _ = metric_summary(values, "anatomy", f"{name}_real")
        if not math.isnan(mean):
            return mean, 0.0
    return math.nan, math.nan


def chest_like_cell(values: Mapping[str, Any]) -> str:
    """``"6 of 8"`` (mean ± sd over seeds where they differ), or n/a for an older file."""
    count, sd = metric_summary(values, "verdict", "chest_like_count")
    total, _ = metric_summary(values, "verdict", "chest_like_of")
    if math.isnan(count) or math.isnan(total):
        return "n/a"
    text = f"{count:g}" if not sd else f"{count:.1f} ± {sd:.1f}"
    return f"{text} of {total:g}"


def verdict_cell(values: Mapping[str, Any]) -> str:
    """``**passes**``, or the checks the model misses (chest-like share, diversity, copies);
    n/a for a file without a verdict."""
    passes, _ = metric_summary(values, "verdict", "passes")
    if math.isnan(passes):
        return "n/a"
    if passes == 1.0:
        return "**passes**"
    missed = [
        label
        for key, label in (
            ("enough_chest_like", "too few chest-like"),
            ("diverse", "not diverse"),
            ("not_copies", "copies"),
        )
        if metric_summary(values, "verdict", key)[0] < 1.0
    ]
    return "fails: " + ", ".join(missed) if missed else "fails"


def anatomy_table(
    metrics: Mapping[str, Mapping[str, Any]], gpnn: Mapping[str, Any] | None = None
) -> str:
    """Is it a chest? The real volume's own values, then one row per setting (mean ± sd over
    seeds) and the GPNN row if given: n chest-like of K, the anatomy, diversity, copies."""
    header = ["Setting", "chest-like"] + [c[2] for c in ANATOMY_COLUMNS] + ["verdict"]
    itself, _ = _real_entry(metrics, "chest_like")
    real = [f"*{REAL_LABEL}*", "n/a" if math.isnan(itself) else f"{itself:g} of 1 (itself)"]
    for family, metric, _, digits in ANATOMY_COLUMNS:
        mean, sd = _real_entry(metrics, metric) if family == "anatomy" else (math.nan, math.nan)
        real.append(format_value(mean, sd, digits) if family == "anatomy" else "—")
    rows = [real + ["—"]]
    for label, values in _rows(metrics, gpnn):
        row = [label, chest_like_cell(values)]
        for family, metric, _, digits in ANATOMY_COLUMNS:
            row.append(format_value(*metric_summary(values, family, metric), digits))
        rows.append(row + [verdict_cell(values)])
    return _table(header, rows)


def tissue_table(
    metrics: Mapping[str, Mapping[str, Any]], gpnn: Mapping[str, Any] | None = None
) -> str:
    """Fractions of the body in each tissue class (mean over samples), the real's first."""
    header = ["Setting"] + [TISSUE_HEADERS[name] for name in anatomy.TISSUE_NAMES]
    rows = [
        [f"*{REAL_LABEL}*"]
        + [format_value(*_real_entry(metrics, f"tissue_{n}"), 3) for n in anatomy.TISSUE_NAMES]
    ]
    for label, values in _rows(metrics, gpnn):
        rows.append(
            [label]
            + [
                format_value(*metric_summary(values, "anatomy", f"tissue_{n}"), 3)
                for n in anatomy.TISSUE_NAMES
            ]
        )
    return _table(header, rows)


def realism_table(
    metrics: Mapping[str, Mapping[str, Any]], gpnn: Mapping[str, Any] | None = None
) -> str:
    """The distribution metrics, one row per setting (mean ± sd over seeds), GPNN last."""
    header = ["Setting"] + [c[2] for c in REALISM_COLUMNS]
    rows = []
    for label, values in _rows(metrics, gpnn):
        row = [label]
        for family, metric, _, digits in REALISM_COLUMNS:
            row.append(format_value(*metric_summary(values, family, metric), digits))
        rows.append(row)
    return _table(header, rows)


def criteria_text() -> str:
    """The chest-like criteria and model checks, from the constants of ``ctgan.anatomy``."""
    return (
        f"A sample is **chest-like** when its lung fraction of the body is within "
        f"±{anatomy.CHEST_LUNG_FRACTION_TOLERANCE:.0%} of the training volume's, both halves of "
        f"its body (split at the body's centre in x) hold a connected lung region of at least "
        f"{anatomy.LUNG_SIDE_MIN_FRACTION:.0%} of the body, the L1 distance of its tissue-class "
        f"fractions to the training volume's is ≤ {anatomy.CHEST_TISSUE_L1_MAX:g}, and the "
        f"Wasserstein-1 distance of the HU values inside its body to the training volume's is "
        f"≤ {anatomy.CHEST_BODY_W1_MAX_HU:g} HU. A model **passes** when at least "
        f"{anatomy.CHEST_LIKE_MIN_SHARE:.0%} of its samples are chest-like (6 of 8), its samples "
        f"are diverse (mean pairwise 1 − SSIM ≥ {anatomy.DIVERSITY_MIN:g}) and none is a copy "
        f"(highest SSIM to the training volume < {anatomy.MAX_SSIM_TO_TRAINING:g}). Body: voxels "
        f"above {anatomy.BODY_THRESHOLD_HU:g} HU, the largest connected component, holes filled "
        f"per axial slice. Lungs: body voxels below {anatomy.LUNG_THRESHOLD_HU:g} HU not "
        f"connected to the air outside the body. Tissue classes are half-open HU intervals "
        f"[low, high); -400..-200 HU (partial volume at lung edges) is a class of its own, so "
        f"the six fractions cover the body and the L1 lies in [0, 2]. Code: `ctgan/anatomy.py`."
    )


def _inert_train_keys(config: Mapping[str, Any], train: Mapping[str, Any]) -> set[str]:
    """Sampling keys that change nothing for this model: the start's keys when samples start
    from pure noise (scale 0), the layout noise unless layouts are GPNN's, and the noise factor
    of a 2D model (no noise above its coarsest scale, facts §15)."""
    inert = set()
    layout_keys = {
        "sample_start_noise_sd",
        "sample_start_zoom_sd",
        "sample_start_shift_sd",
        "sample_start_max_correlation",
    }
    if train.get("sample_start_scale", 0) == 0:
        inert |= {
            "sample_start_source",
            "adversarial_from_sample_start",
            "reconstruction_from_sample_start",
        } | layout_keys
    if train.get("sample_start_source") != "gpnn":
        inert |= layout_keys
    if str(config.get("setting", "")).startswith("2d"):
        inert.add("sample_noise_factor")
    return inert


def _switches(config: Mapping[str, Any]) -> list[str]:
    """Config keys outside the seed's procedure; a train key whose value is the seed's default
    (``TrainConfig``'s, e.g. ``sample_start_scale: 0``) is the seed's procedure, not a switch,
    and neither is a key with no effect on this model (``_inert_train_keys``)."""
    seed_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    extra = [f"`{key}: {config[key]}`" for key in config if key not in SEED_CONFIG_KEYS | {"gpnn"}]
    train = config.get("train", {})
    if isinstance(train, Mapping):
        inert = _inert_train_keys(config, train)
        extra += [
            f"`train.{k}: {v}`"
            for k, v in train.items()
            if k not in SEED_TRAIN_KEYS | inert and seed_defaults.get(k, dataclasses.MISSING) != v
        ]
    pyramid = config.get("pyramid", {})
    if isinstance(pyramid, Mapping) and pyramid.get("anti_aliasing"):  # the seed aliases
        extra.append(f"`pyramid.anti_aliasing: {pyramid['anti_aliasing']}`")
    return extra


def procedure_text(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    """Which training procedure produced the models ``names``: the profile and any realism
    switch recorded in their metrics files (``config``), per setting where they differ."""
    descriptions: dict[str, list[str]] = {}
    for name in names:
        values = metrics.get(name)
        if values is None:
            continue
        config = values.get("config")
        if not isinstance(config, Mapping):
            text = f"profile `{values.get('profile', '?')}` (training config not recorded)"
        else:
            switches = _switches(config)
            text = f"profile `{config.get('profile', values.get('profile', '?'))}`, " + (
                "realism switches " + ", ".join(switches)
                if switches
                else "the seed's training procedure (no realism switch)"
            )
        descriptions.setdefault(text, []).append(name)
    if len(descriptions) == 1:
        return f"Training procedure: {next(iter(descriptions))}."
    return "Training procedure: " + "; ".join(
        f"{', '.join(group)}: {text}" for text, group in descriptions.items()
    )


def _share(values: Mapping[str, Any]) -> float:
    """The chest-like share of a model's samples (NaN for a file without a verdict)."""
    count, _ = metric_summary(values, "verdict", "chest_like_count")
    total, _ = metric_summary(values, "verdict", "chest_like_of")
    return count / total if total else math.nan


def _compare(ours: float, theirs: float, tolerance: float) -> str:
    if math.isnan(ours) or math.isnan(theirs):
        return "n/a"
    if abs(ours - theirs) <= tolerance:
        return "level with"
    return "ahead of" if ours > theirs else "behind"


def versus_gpnn_text(
    metrics: Mapping[str, Mapping[str, Any]], gpnn: Mapping[str, Any] | None
) -> str:
    """Where each GAN setting stands against the GPNN row: its chest-like share and its
    diversity, each "ahead of", "level with" (within one sample of K, or 0.02 of diversity) or
    "behind" GPNN's, computed from the same metrics files as the tables."""
    if gpnn is None:
        return ""
    gpnn_share, gpnn_div = _share(gpnn), metric_summary(gpnn, "diversity", "diversity")[0]
    total = metric_summary(gpnn, "verdict", "chest_like_of")[0]
    one_sample = 1.0 / total if total else 0.0
    lines = [
        f"Against the GPNN row ({chest_like_cell(gpnn)} chest-like, diversity "
        f"{format_value(gpnn_div, 0.0, 3)}):",
        "",
    ]
    for name in setting_names():
        values = metrics.get(name)
        if values is None:
            continue
        share = _share(values)
        div = metric_summary(values, "diversity", "diversity")[0]
        lines.append(
            f"- {name}: realism {_compare(share, gpnn_share, one_sample)} GPNN "
            f"({chest_like_cell(values)} chest-like), diversity {_compare(div, gpnn_div, 0.02)} "
            f"GPNN ({format_value(div, 0.0, 3)})."
        )
    return "\n".join(lines)


def gpnn_text(gpnn: Mapping[str, Any] | None) -> str:
    """One paragraph on the GPNN row: what it is, its timing; or that it is absent."""
    if gpnn is None:
        return (
            "No GPNN reference (`metrics/gpnn.json` absent): the training-free row is missing "
            "from these tables."
        )
    timing = gpnn.get("timing", {})
    timed = ", ".join(
        f"{key} {value:.3g}" if isinstance(value, (int, float)) else f"{key} {value}"
        for key, value in (timing.items() if isinstance(timing, Mapping) else [])
    )
    return (
        f"**{GPNN_LABEL}**: generative patch nearest neighbours (Granot et al., CVPR 2022) on the "
        f"same training volume, evaluated with the same metrics on K = "
        f"{gpnn.get('num_samples', '?')} samples: what a user gets with no training at all. "
        f"Every GAN row is judged beside it." + (f" Timing: {timed}." if timed else "")
    )
