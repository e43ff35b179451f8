"""The ablation report: the paper's two tables beside ours, the realism metrics, and figures.

The paper's numbers are the seed README's (shared/reference/seed-readme.md); ours come from
``metrics/<model>-<setting>.json`` written by the evaluate stage (ctgan.evaluate).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctgan.config import LOSS_TERMS, MODELS, SETTING_LETTERS
from ctgan.io import read_json

log = logging.getLogger(__name__)

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

# The realism table: (family, metric, column header, digits).
REALISM_COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    ("realism", "hu_wasserstein", "HU W1 ↓", 1),
    ("realism", "frechet_axial", "FD axial ↓", 3),
    ("realism", "frechet_coronal", "FD coronal ↓", 3),
    ("realism", "frechet_sagittal", "FD sagittal ↓", 3),
    ("realism", "lung_fraction", "lung fraction", 3),
    ("diversity", "diversity", "diversity ↑", 3),
    ("memorisation", "max_ssim_to_training", "max SSIM to training", 3),
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


def realism_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The metrics the paper never measured, one row per setting (mean ± sd over seeds)."""
    header = ["Setting"] + [c[2] for c in REALISM_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in setting_names():
        row = [name]
        for family, metric, _, digits in REALISM_COLUMNS:
            mean, sd = metric_summary(metrics[name], family, metric)
            row.append(format_value(mean, sd, digits))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
