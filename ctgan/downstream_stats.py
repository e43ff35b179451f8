"""The downstream test's statistics, verdict, table and figure (the runs: ``ctgan.downstream``).

A run's score is its mean whole-volume Dice over the held-out scans. Per generator and arm:
mean ± sd over seeds. The effect of synthetic volumes is the difference to the ``real`` arm,
paired by seed (the same seed trains both): its mean, its sd, and a 95 % confidence interval
from Student's t with n − 1 degrees of freedom (n seeds). The verdict on each difference:

- **helped**: the whole interval lies above 0;
- **hurt**: the whole interval lies below 0;
- **no resolved difference**: the interval holds 0 (or n = 1: no interval).

These rules, not a judgement call, write the report's sentence, so that it matches its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ctgan.downstream import ARM_LABELS, ARMS, STRUCTURES

CONFIDENCE = 0.95


def _scores(runs: Sequence[Mapping[str, Any]], generator: str, arm: str, key: str) -> dict:
    """``{seed: score}`` of one arm (the ``real`` arm is shared: generator "-")."""
    owner = "-" if arm == "real" else generator
    return {
        r["seed"]: r[key]
        for r in runs
        if r["generator"] == owner and r["arm"] == arm and r[key] is not None
    }


def paired_difference(base: Mapping[int, float], other: Mapping[int, float]) -> dict[str, Any]:
    """``other − base`` paired by seed: n, mean, sd, the 95 % interval (None for n < 2) and the
    verdict (module docstring)."""
    seeds = sorted(set(base) & set(other))
    if not seeds:
        raise ValueError(
            "no seed has a score in both arms, so there is no paired difference; check that "
            "the runs hold both arms for the same seeds"
        )
    diffs = np.array([other[s] - base[s] for s in seeds], dtype=np.float64)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None, "verdict": "no resolved difference"}
    sd = float(diffs.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(diffs) - 1) * sd / np.sqrt(len(diffs)))
    low, high = mean - half, mean + half
    verdict = "helped" if low > 0 else "hurt" if high < 0 else "no resolved difference"
    return {"n": len(diffs), "mean": mean, "sd": sd, "ci95": [low, high], "verdict": verdict}


def summarise(runs: Sequence[Mapping[str, Any]], generators: Sequence[str]) -> dict[str, Any]:
    """Per generator: each arm's mean ± sd over seeds (per structure) and the paired differences
    of ``real+synthetic`` and ``synthetic`` to ``real`` (per structure, where defined)."""
    summary: dict[str, Any] = {}
    for generator in generators:
        entry: dict[str, Any] = {"arms": {}, "differences": {}}
        for structure in STRUCTURES:
            key = f"dice_{structure}"
            for arm in ARMS:
                values = list(_scores(runs, generator, arm, key).values())
                entry["arms"].setdefault(arm, {})[structure] = (
                    {
                        "n": len(values),
                        "mean": float(np.mean(values)),
                        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    }
                    if values
                    else None
                )
            base = _scores(runs, generator, "real", key)
            for arm in ARMS[1:]:
                other = _scores(runs, generator, arm, key)
                entry["differences"].setdefault(arm, {})[structure] = (
                    paired_difference(base, other) if set(base) & set(other) else None
                )
        summary[generator] = entry
    return summary


def _pm(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "undefined"
    return f"{cell['mean']:.3f} ± {cell['sd']:.3f}"


def _diff(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "undefined"
    if cell["ci95"] is None:
        return f"{cell['mean']:+.3f} (one seed: no interval)"
    low, high = cell["ci95"]
    return f"{cell['mean']:+.3f} [{low:+.3f}, {high:+.3f}] {cell['verdict']}"


def downstream_table(result: Mapping[str, Any], label: Mapping[str, str] | None = None) -> str:
    """Markdown: a row per generator and arm, Dice lungs and nodules (mean ± sd over seeds) and
    the difference to the real arm with its 95 % interval and verdict."""
    label = dict(label or {})
    lines = [
        "| generator | training set | Dice lungs | Δ lungs vs (a) [95 % CI] | Dice nodules | "
        "Δ nodules vs (a) [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for generator, entry in result["summary"].items():
        name = label.get(generator, generator)
        for arm in ARMS:
            cells = entry["arms"][arm]
            diffs = entry["differences"].get(arm, {})
            lines.append(
                f"| {name} | {ARM_LABELS[arm]} | {_pm(cells['lungs'])} | "
                f"{'—' if arm == 'real' else _diff(diffs.get('lungs'))} | "
                f"{_pm(cells['nodules'])} | "
                f"{'—' if arm == 'real' else _diff(diffs.get('nodules'))} |"
            )
    return "\n".join(lines)


def verdict_text(result: Mapping[str, Any], label: Mapping[str, str] | None = None) -> str:
    """Plain sentences, one per generator, from the lung differences' verdicts and numbers."""
    label = dict(label or {})
    n = result["config"]["num_volumes"]
    seeds = result["config"]["seeds"]
    sentences = []
    for generator, entry in result["summary"].items():
        name = label.get(generator, generator)
        parts = []
        for arm, what in (
            ("real+synthetic", f"adding {n} of its volumes to the real scan"),
            ("synthetic", f"training on {n} of its volumes alone"),
        ):
            cell = entry["differences"][arm]["lungs"]
            if cell is None:
                parts.append(f"{what}: undefined (no held-out lung voxel)")
                continue
            if cell["ci95"] is None:
                parts.append(f"{what} changed lung Dice by {cell['mean']:+.3f} (one seed)")
                continue
            low, high = cell["ci95"]
            verb = {
                "helped": "helped",
                "hurt": "hurt",
                "no resolved difference": "made no difference we can resolve",
            }[cell["verdict"]]
            parts.append(
                f"{what} {verb}: lung Dice {cell['mean']:+.3f} against the real scan alone "
                f"(95 % CI {low:+.3f} to {high:+.3f}, {cell['n']} seeds)"
            )
        sentences.append(f"**{name}**: " + "; ".join(parts) + ".")
    nodules = [r["dice_nodules"] for r in result["runs"] if r["dice_nodules"] is not None]
    if nodules and max(nodules) == 0:
        sentences.append(
            "**Nodules**: every run's nodule Dice is 0 (no segmenter of any arm found a nodule "
            "voxel of the held-out scans), so the nodule columns say nothing either way."
        )
    sentences.append(
        f"Each difference is paired by seed ({seeds} seeds); its interval is Student's t on the "
        f"per-seed differences, so with few seeds only a large, consistent effect resolves."
    )
    return "\n\n".join(sentences)


def downstream_figure(
    result: Mapping[str, Any],
    examples: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    label: Mapping[str, str] | None = None,
) -> Any:
    """Dice lungs per arm, a panel per generator (dots: seeds; bar: mean ± sd); beneath, when
    ``examples`` are given, one generated training volume per generator (axial centre slice,
    lung window) with its paired lung mask's outline."""
    from ctgan.figures import LUNG_WINDOW_LEVEL_HU, LUNG_WINDOW_WIDTH_HU, _subplots
    from ctgan.intensity import network_to_hu

    label = dict(label or {})
    generators = list(result["summary"])
    rows = 2 if examples else 1
    fig, axes = _subplots(
        rows, len(generators), figsize=(4.2 * len(generators), 3.6 * rows), squeeze=False
    )
    runs = result["runs"]
    for col, generator in enumerate(generators):
        ax = axes[0, col]
        for x, arm in enumerate(ARMS):
            values = list(_scores(runs, generator, arm, "dice_lungs").values())
            if not values:
                continue
            ax.bar(
                x,
                np.mean(values),
                yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                color=("#999999", "#4477aa", "#cc6677")[x],
                alpha=0.6,
                capsize=4,
            )
            ax.scatter([x] * len(values), values, color="black", s=14, zorder=3)
        ax.set_xticks(range(len(ARMS)), ["(a) real", "(b) real + gen.", "(c) gen. only"])
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice lungs, held-out scans")
        ax.set_title(label.get(generator, generator))
        if examples and generator in examples:
            low = LUNG_WINDOW_LEVEL_HU - LUNG_WINDOW_WIDTH_HU / 2
            volume = network_to_hu(examples[generator]["volume"])
            lungs = examples[generator]["lungs"]
            z = volume.shape[0] // 2
            image_ax = axes[1, col]
            image_ax.imshow(volume[z], cmap="gray", vmin=low, vmax=low + LUNG_WINDOW_WIDTH_HU)
            if lungs[z].any():
                image_ax.contour(lungs[z] >= 0.5, levels=[0.5], colors="#ffcc00", linewidths=1)
            image_ax.set_title("a generated training volume, paired lung mask", fontsize=9)
            image_ax.axis("off")
    fig.suptitle(
        f"Does training on generated volumes help? Dice on {len(result['test_scans'])} "
        f"held-out scan(s), {result['config']['seeds']} seeds"
    )
    return fig
