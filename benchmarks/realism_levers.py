"""Sampling-time realism levers on trained 3D models: realism and diversity against the scale at
which generation starts (SinGAN's gen_start_scale, ``train.sample_start_scale``) and against a
factor on the noise amplitudes above the start scale.

Neither lever retrains anything: each row samples K volumes (float32, seed 0) from the same model
and scores them with the package's metrics (``ctgan.anatomy``, ``ctgan.similarity``) against the
finest training volume. Writes a markdown table and a JSON file.

    python benchmarks/realism_levers.py models/3d-B models/3d-C models/3d-D \
        --pyramid data/preprocessed --k 8 --out benchmarks/results/realism_levers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.anatomy import compare_anatomy  # noqa: E402
from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.intensity import network_to_hu, network_to_paper  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct, sample_volumes  # noqa: E402
from ctgan.similarity import diversity, memorisation  # noqa: E402


def score(
    model, real: np.ndarray, rec: np.ndarray, k: int, start: int, noise_factor: float
) -> dict[str, float]:
    """K samples from ``start`` with the amplitudes above it times ``noise_factor``, scored."""
    amplitudes = list(model.noise_amplitudes)
    scaled = [a * noise_factor if s >= max(start, 1) else a for s, a in enumerate(amplitudes)]
    varied = dataclasses.replace(model, noise_amplitudes=scaled)
    began = time.perf_counter()
    samples = sample_volumes(
        varied, k, seed=0, progress=False, precision="float32", start_scale=start
    )
    seconds = (time.perf_counter() - began) / k
    return {
        "start_scale": start,
        "noise_factor": noise_factor,
        **score_samples(samples, real, rec),
        "seconds_per_sample": seconds,
    }


def score_samples(samples: np.ndarray, real: np.ndarray, rec: np.ndarray) -> dict[str, float]:
    """The report's realism, diversity and memorisation metrics of ``samples`` (K, D, H, W)."""
    k = len(samples)
    anatomy = compare_anatomy(network_to_hu(samples), network_to_hu(real)).summary()
    copies = memorisation(network_to_paper(samples), network_to_paper(real), network_to_paper(rec))
    return {
        "chest_like": anatomy["chest_like"] * k,
        "lung_fraction_of_body": anatomy["lung_fraction_of_body"],
        "lung_fraction_of_body_real": anatomy["lung_fraction_of_body_real"],
        "lungs_both_sides": anatomy["lungs_both_sides"] * k,
        "tissue_l1": anatomy["tissue_l1"],
        "body_hu_wasserstein": anatomy["body_hu_wasserstein"],
        "diversity": diversity(network_to_paper(samples)),
        "max_ssim_to_training": copies["max_ssim_to_training"],
    }


def append_row(jsonl: Path, row: dict) -> None:
    """Print ``row`` and append it to ``jsonl`` (an interrupted study keeps what it measured)."""
    print(json.dumps(row), flush=True)
    with jsonl.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def rewrite_table(out: Path, table) -> None:
    """Rewrite ``out``.md from every row of ``out``.jsonl with ``table(rows)``, and print it."""
    jsonl = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    out.with_suffix(".md").write_text(table(rows))
    print(out.with_suffix(".md").read_text())


def realism_table(rows: list[dict], lead: dict, tail: tuple) -> str:
    """A markdown table of ``rows``: the ``lead`` columns (header -> cell of a row), the realism
    cells of :func:`score_cells`, then one ``tail`` column (header, cell of a row)."""
    header = (
        "| "
        + " | ".join(lead)
        + " | chest-like | lung fraction of body (real) | both sides | tissue L1 | body W1 HU "
        f"| diversity | max SSIM to training | {tail[0]} |\n" + "|---" * (len(lead) + 8) + "|\n"
    )
    lines = [
        "| "
        + " | ".join(str(cell(r)) for cell in lead.values())
        + " "
        + score_cells(r, r["k"])
        + f" {tail[1](r)} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def score_cells(row: dict, k: int) -> str:
    """A table row's realism cells, from chest-like to the highest SSIM to training."""
    return (
        f"| {row['chest_like']:.0f}/{k} "
        f"| {row['lung_fraction_of_body']:.3f} ({row['lung_fraction_of_body_real']:.3f}) "
        f"| {row['lungs_both_sides']:.0f}/{k} | {row['tissue_l1']:.3f} "
        f"| {row['body_hu_wasserstein']:.1f} | {row['diversity']:.3f} "
        f"| {row['max_ssim_to_training']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (models/3d-B ...)")
    parser.add_argument("--pyramid", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--k", type=int, default=8, help="samples per row (default 8)")
    parser.add_argument("--noise-factors", type=float, nargs="+", default=[1.0, 0.5, 2.0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/realism_levers"))
    args = parser.parse_args(argv)
    real = np.asarray(load_pyramid(args.pyramid).volumes[-1], dtype=np.float32)
    rows = []
    for folder in args.models:
        model = load_trained(folder)
        rec = reconstruct(model, precision="float32")  # the same for every row of this model
        if tuple(model.scale_shapes[-1]) != real.shape:
            raise SystemExit(f"{folder}: finest scale {model.scale_shapes[-1]} != {real.shape}")
        for start in range(len(model.scale_shapes)):
            for factor in args.noise_factors if start > 0 else [1.0]:
                row = {"model": folder.name, **score(model, real, rec, args.k, start, factor)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    header = (
        "| model | start scale | noise × | chest-like | lung fraction of body (real) | both sides "
        "| tissue L1 | body W1 HU | diversity | max SSIM to training |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['start_scale']} | {r['noise_factor']:g} " + score_cells(r, args.k)
        for r in rows
    ]
    args.out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n")
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
