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


def _reconstructions_hu(models_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """Each setting's reconstruction (first seed) in HU, keyed by setting letter."""
    from ctgan.intensity import network_to_hu
    from ctgan.sample import reconstruct
    from ctgan.train import load_trained

    return {
        name: network_to_hu(
            reconstruct(load_trained(first_seed_folder(models_dir / name)), precision="float32")
        )
        for name in names
    }


def first_seed_folder(model_dir: Path) -> Path:
    """The lowest ``seed<k>/`` folder of a model (the one the figures show)."""
    from ctgan.evaluate import seed_folders

    return seed_folders(model_dir)[0][1]


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def build_report(
    params_path: str | Path,
    models_dir: str | Path,
    metrics_dir: str | Path,
    pyramid_dir: str | Path,
    report_path: str | Path,
    figures_dir: str | Path,
) -> Path:
    """Write ``reports/ablation.md`` and its figures; return the markdown's path."""
    from ctgan import figures
    from ctgan.config import load_config
    from ctgan.intensity import network_to_hu
    from ctgan.io import atomic_write, ensure_writable_dir
    from ctgan.preprocess import load_pyramid
    from ctgan.train import read_history

    models_dir, metrics_dir = Path(models_dir), Path(metrics_dir)
    report_path, figures_dir = Path(report_path), ensure_writable_dir(figures_dir)
    cfg = load_config(params_path)
    metrics = load_all_metrics(metrics_dir)
    terms = {n: load_config(params_path, setting=n).terms for n in setting_names()}
    pyramid = load_pyramid(pyramid_dir)
    real_hu = network_to_hu(pyramid.volumes[-1])
    spacing = pyramid.spacings_zyx_mm[-1]
    first = metrics[setting_names()[0]]
    seeds = first.get("seeds", [])
    segmenter_path = metrics_dir / "segmenter.json"
    segmenter = read_json(segmenter_path) if segmenter_path.is_file() else {}

    rel = (
        figures_dir.relative_to(report_path.parent)
        if figures_dir.is_relative_to(report_path.parent)
        else figures_dir
    )
    images: dict[str, str] = {}
    for model in MODELS:
        names = [f"{model}-{s}" for s in SETTING_LETTERS]
        recs = _reconstructions_hu(models_dir, names)
        images[f"grid_{model}"] = _save(
            figures.comparison_grid_figure(
                real_hu,
                {n.split("-")[1]: v for n, v in recs.items()},
                spacing,
                title=f"{model.upper()} CT-GAN: ground truth, then the reconstruction of each setting",
            ),
            figures_dir / f"comparison_{model}.png",
        )
        images[f"curves_{model}"] = _save(
            figures.training_curves_figure(
                {n: read_history(first_seed_folder(models_dir / n)) for n in names},
                title=f"{model.upper()} training curves (first seed)",
            ),
            figures_dir / f"training_{model}.png",
        )
    for metric in ("psnr", "ssim"):
        paper = {f"{m}-{s}": PAPER_RESULTS[m][s][metric] for m in MODELS for s in SETTING_LETTERS}
        images[f"bars_{metric}"] = _save(
            figures.metric_bars_figure(
                metrics,
                "reconstruction",
                metric,
                paper=paper,
                title=f"reconstruction {metric.upper()}: ours (mean ± sd over seeds) and the paper's",
            ),
            figures_dir / f"bars_{metric}.png",
        )
    for family, metric in (("realism", "hu_wasserstein"), ("diversity", "diversity")):
        images[f"bars_{metric}"] = _save(
            figures.metric_bars_figure(metrics, family, metric, title=f"{family}: {metric}"),
            figures_dir / f"bars_{metric}.png",
        )

    def img(key: str, alt: str) -> str:
        return f"![{alt}]({(rel / images[key]).as_posix()})"

    source = pyramid.meta.get("source", cfg.data.source)
    lines = [
        "# CT-GAN ablation report",
        "",
        f"- **profile**: `{cfg.profile}` — pyramid {' → '.join('×'.join(map(str, s)) for s in pyramid.shapes)}"
        f" (D×H×W), {cfg.train.iterations_per_scale}·(s+1) iterations per scale, "
        f"precision `{cfg.train.precision}`",
        f"- **data source**: `{source}` — scan `{pyramid.meta.get('seriesuid', '?')}`"
        + (" (synthetic phantom written by `ctgan phantom`)" if source == "phantom" else ""),
        f"- **seeds**: {seeds} (mean ± sd over seeds where more than one); "
        f"**samples per model** for the realism metrics: K = {first.get('num_samples', '?')}",
        "- **metrics**: MSE, PSNR (peak 1) and SSIM (3D, `data_range=1`) of the finest-scale "
        "reconstruction from the fixed noise against the training volume, on the paper's scale "
        "(the [-1000, 1000] HU window mapped to [0, 1]).",
        "- The paper's numbers come from its README (the seed's full 15,000-iteration schedule on "
        "real LUNA16 at 23×141×141). Ours come from the profile above: compare the ordering of "
        "the settings, not the absolute values, unless the profile is `paper` on LUNA16.",
        "",
        "## 3D CT-GAN",
        "",
        ablation_table("3d", metrics, terms),
        "",
        img("grid_3d", "3D comparison grid"),
        "",
        "## 2D CT-GAN",
        "",
        ablation_table("2d", metrics, terms),
        "",
        img("grid_2d", "2D comparison grid"),
        "",
        img("bars_psnr", "PSNR per setting"),
        img("bars_ssim", "SSIM per setting"),
        "",
        "## What the paper never measured: random samples",
        "",
        "K random samples per model against the training volume. HU W1: Wasserstein-1 distance "
        "of HU values inside the body. FD: Fréchet distance of slice features of the frozen "
        "in-pipeline segmenter, per plane (SIFID-style in a CT-specific feature space; not "
        "comparable with Inception-based SIFID numbers). Diversity: mean pairwise 1 − SSIM "
        "among samples. Max SSIM to training: the highest SSIM of any sample to the training "
        "volume (near 1 = the model copies its scan).",
        "",
        realism_table(metrics),
        "",
        img("bars_hu_wasserstein", "HU distance per setting"),
        img("bars_diversity", "diversity per setting"),
        "",
        "## Training curves",
        "",
        img("curves_3d", "3D training curves"),
        img("curves_2d", "2D training curves"),
        "",
    ]
    if segmenter:
        lines += [
            "## The segmenter behind the segmentation term",
            "",
            f"Validation ({segmenter.get('validation', 'see metrics/segmenter.json')}): Dice lungs "
            f"{_fmt(segmenter.get('dice_lungs'))}, Dice nodules "
            f"{_fmt(segmenter.get('dice_nodules'))} (crops); on the whole held-out volume "
            f"{_fmt(segmenter.get('dice_lungs_whole_volume'))} and "
            f"{_fmt(segmenter.get('dice_nodules_whole_volume'))}.",
            "",
        ]
    with atomic_write(report_path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    log.info("wrote %s", report_path)
    return report_path


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
