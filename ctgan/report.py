"""The ablation report: the paper's two tables beside ours, the realism metrics, and figures.

The paper's numbers are the seed README's (shared/reference/seed-readme.md); ours come from
``metrics/<model>-<setting>.json`` written by the evaluate stage (ctgan.evaluate). The markdown
tables and texts are ``ctgan.tables``; this module loads the models, draws the figures and
writes the files. The realism section judges every model's random samples by their anatomy
(``ctgan.anatomy``: n chest-like of K, lung fraction of the body, lungs on both sides, tissue
classes, body HU W1, diversity, copies), with the training volume's own values as a row, and
shows a gallery of samples per model.

A training-free reference: when ``metrics/gpnn.json`` exists (the GPNN stage's output, the same
layout as ``evaluate_model``'s with ``"name": "gpnn"`` and a ``timing`` dict), it is the row
"GPNN (no training)" of the realism tables, and its gallery is shown when there is one (the
path in its ``"gallery"`` key, or ``gallery_gpnn.png`` already in the figures folder). Without
it the report says so and carries on.

The last section, "Do the generated volumes help a segmenter?", comes from
``metrics/downstream.json`` (the downstream stage, ``ctgan.downstream``): its table, its
rule-written verdict (``ctgan.downstream_stats``) and its figure, copied beside the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctgan.config import MODELS, SETTING_LETTERS
from ctgan.io import read_json
from ctgan.tables import (
    GPNN_LABEL,
    GPNN_NAME,
    PAPER_RESULTS,
    ablation_table,
    anatomy_table,
    criteria_text,
    gpnn_text,
    load_all_metrics,
    load_gpnn_metrics,
    procedure_text,
    realism_table,
    setting_names,
    tissue_table,
    versus_gpnn_text,
)

log = logging.getLogger(__name__)

GALLERY_SAMPLES = 4


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


def gallery_samples_hu(model_dir: Path, count: int, seed: int) -> Any:
    """The first ``count`` random samples (HU) of a model's first seed, as the evaluate stage
    draws them (float32, ``sampling_seed``): sample i depends only on the seed and i."""
    from ctgan.intensity import network_to_hu
    from ctgan.sample import sample_volumes
    from ctgan.train import load_trained

    model = load_trained(first_seed_folder(model_dir))
    volumes = sample_volumes(
        model, count, seed=seed, batch_size=1, progress=False, precision="float32"
    )
    return network_to_hu(volumes)


def gpnn_gallery(gpnn: Mapping[str, Any], figures_dir: Path) -> Path | None:
    """Where the GPNN gallery is, copied into ``figures_dir`` as ``gallery_gpnn.png``: the path
    in gpnn.json's ``"gallery"`` key (relative to the working directory), else a
    ``gallery_gpnn.png`` already in ``figures_dir``; None when there is none."""
    target = figures_dir / f"gallery_{GPNN_NAME}.png"
    if copy_figure(gpnn.get("gallery"), target):
        return target
    return target if target.is_file() else None


def copy_figure(given: Any, target: Path) -> bool:
    """Copy the figure at ``given`` (a path string, relative to the working directory) to
    ``target`` unless it is that file already; False when ``given`` names no file."""
    import shutil

    if not (isinstance(given, str) and given and Path(given).is_file()):
        return False
    if Path(given).resolve() != target.resolve():
        shutil.copyfile(given, target)
    return True


def precision_text(asked: str, metrics: Mapping[str, Any]) -> str:
    """``train.precision`` as asked and, for ``auto``, what the models recorded they trained in
    (bf16 where the machine computes it natively, else float32)."""
    used = sorted(
        {
            str(m["config"]["train"]["precision"])
            for m in metrics.values()
            if isinstance(m.get("config"), Mapping) and "train" in m["config"]
        }
    )
    if asked != "auto" or not used:
        return f"`{asked}`"
    return f"`auto` (the models trained in {' and '.join(f'`{u}`' for u in used)})"


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
    gpnn = load_gpnn_metrics(metrics_dir)
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

    galleries = []
    for name in setting_names():
        target = figures_dir / f"gallery_{name}.png"
        if copy_figure(metrics[name].get("gallery"), target):  # the evaluate stage's own figure
            images[f"gallery_{name}"] = target.name
        else:  # metrics written without it: draw the same samples again
            samples_hu = gallery_samples_hu(
                models_dir / name, GALLERY_SAMPLES, int(metrics[name].get("sampling_seed", 0))
            )
            images[f"gallery_{name}"] = _save(
                figures.sample_gallery(real_hu, samples_hu, spacing, f"{name} (first seed)"),
                target,
            )
        galleries.append((f"gallery_{name}", f"{name} samples"))
    if gpnn is not None:
        found = gpnn_gallery(gpnn, figures_dir)
        if found is not None:
            images[f"gallery_{GPNN_NAME}"] = found.name
            galleries.append((f"gallery_{GPNN_NAME}", f"{GPNN_LABEL} samples"))

    def img(key: str, alt: str) -> str:
        return f"![{alt}]({(rel / images[key]).as_posix()})"

    source = pyramid.meta.get("source", cfg.data.source)
    lines = [
        "# CT-GAN ablation report",
        "",
        f"- **profile**: `{cfg.profile}` — pyramid {' → '.join('×'.join(map(str, s)) for s in pyramid.shapes)}"
        f" (D×H×W), {cfg.train.iterations_per_scale}·(s+1) iterations per scale, "
        f"precision {precision_text(cfg.train.precision, metrics)}",
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
        procedure_text(metrics, [f"3d-{s}" for s in SETTING_LETTERS]),
        "",
        ablation_table("3d", metrics, terms),
        "",
        img("grid_3d", "3D comparison grid"),
        "",
        "## 2D CT-GAN",
        "",
        procedure_text(metrics, [f"2d-{s}" for s in SETTING_LETTERS]),
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
        f"K random samples per model against the training volume. "
        f"{procedure_text(metrics, setting_names())}",
        "",
        "### Is it a chest?",
        "",
        criteria_text(),
        "",
        "Chest-like: how many of the K samples meet all four criteria. Lung fraction of body, "
        "lungs both sides (share of samples), tissue L1 and body HU W1: means over the samples; "
        "the training volume's own values are the first row (judged against itself). Diversity: "
        "mean pairwise 1 − SSIM among samples. Max SSIM to training: the highest SSIM of any "
        "sample to the training volume (near 1 = the model copies its scan).",
        "",
        anatomy_table(metrics, gpnn),
        "",
        gpnn_text(gpnn),
        "",
        versus_gpnn_text(metrics, gpnn),
        "",
        "Fractions of the body in each tissue class (HU), mean over samples:",
        "",
        tissue_table(metrics, gpnn),
        "",
        "### Sample gallery",
        "",
        f"The training volume and the first {GALLERY_SAMPLES} random samples of each model "
        f"(first seed, the evaluation's samples) through their centre, lung window "
        f"(W {figures.LUNG_WINDOW_WIDTH_HU:g} / L {figures.LUNG_WINDOW_LEVEL_HU:g} HU), physical "
        f"aspect ratio; each sample labelled chest-like (green) or not (red).",
        "",
        *[img(key, alt) for key, alt in galleries],
        "",
        "### Distributions",
        "",
        "FD: Fréchet distance of slice features of the frozen in-pipeline segmenter, per plane "
        "(SIFID-style in a CT-specific feature space; not comparable with Inception-based SIFID "
        "numbers). Lung fraction of the volume: lung voxels (segmenter) / all voxels. Voxel sd: "
        "mean over voxels of the standard deviation across samples.",
        "",
        realism_table(metrics, gpnn),
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
    lines += downstream_section(metrics_dir, figures_dir, rel)
    with atomic_write(report_path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    log.info("wrote %s", report_path)
    return report_path


def downstream_section(metrics_dir: Path, figures_dir: Path, rel: Path) -> list[str]:
    """The section "Do the generated volumes help a segmenter?" from ``metrics/downstream.json``
    (the downstream stage's output: table, verdict, figure copied into ``figures_dir``); a line
    saying it is missing otherwise."""
    from ctgan.downstream_stats import downstream_table

    path = metrics_dir / "downstream.json"
    lines = ["## Do the generated volumes help a segmenter?", ""]
    if not path.is_file():
        return lines + [f"Not measured: {path} is missing (run `dvc repro downstream`).", ""]
    result = read_json(path)
    config = result["config"]
    labels = {GPNN_NAME: GPNN_LABEL}
    lines += [
        f"The same small lung and nodule segmenter (base width {config['base_channels']}, "
        f"{config['iterations']} iterations, crops {config['segmenter_crop_size']}) trained (a) "
        f"on the one real training scan, (b) on it plus {config['num_volumes']} generated "
        f"volumes with their paired masks (the frozen segmenter's), (c) on those "
        f"{config['num_volumes']} generated volumes only; {config['seeds']} seeds each, tested "
        f"on {len(result['test_scans'])} held-out scan(s) that no arm trains on, at the GAN's "
        f"training shape {result['shape']} (whole-volume Dice, mean ± sd over seeds; Δ: paired "
        f"by seed against (a), with its 95 % interval). The rules behind each verdict are in "
        f"`ctgan/downstream_stats.py`; every run is in `{path.as_posix()}`.",
        "",
        downstream_table(result, labels),
        "",
        result["verdict"],
        "",
        "How far to trust the paired masks (Dice of the frozen segmenter's lung mask against "
        "the classical threshold mask, over the generated training volumes): "
        + "; ".join(
            f"{labels.get(g, g)} {t['mean']:.3f} (lowest {t['min']:.3f}, n = {t['n']})"
            for g, t in result["paired_mask_trust"].items()
        )
        + ".",
        "",
    ]
    target = figures_dir / "downstream.png"
    if copy_figure(result.get("figure"), target):
        lines += [f"![Dice per training set]({(rel / target.name).as_posix()})", ""]
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
