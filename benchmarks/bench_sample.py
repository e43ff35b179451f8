"""Sampling: time per volume at the paper's finest size, float32 vs bf16, and what bf16 changes.

    .venv/bin/python benchmarks/bench_sample.py [--runs 7] [--threads N] [--models models]
                                                [--samples 8]

1. Speed. Builds the 3D generator (32 channels) and the 2D slice-stack generator (256 channels) at
   the paper profile's scale shapes with untrained weights (the cost does not depend on the
   weights) and times ``ctgan.sample.sample_volumes(model, 1, precision=p)`` (noise drawing
   included) for p = float32 and bf16, interleaved, after one warm-up run each: median, min and
   max of ``--runs`` runs; and one batch of 4 volumes (time per volume). Target: < 1 s per volume.
2. Fidelity, on the pipeline's trained models (every ``<models>/<model>-<setting>/seed0``, skipped
   when there are none): the reconstruction PSNR against the training volume
   (``data/preprocessed``) in float32 and in bf16, and ``--samples`` random volumes drawn from the
   same noise in both precisions: mean, 99th percentile and max of |HU difference|, and the PSNR
   of the bf16 volume against the float32 one (paper scale, peak 1).

Writes benchmarks/results/sample.json and sample.md with the machine, torch version and threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from ctgan.config import load_config, scale_shapes
from ctgan.intensity import network_to_hu, network_to_paper
from ctgan.nets import build_generator_pyramid, make_reconstruction_noise
from ctgan.preprocess import load_pyramid
from ctgan.sample import native_bf16, reconstruct, sample_volumes
from ctgan.similarity import psnr
from ctgan.train import TrainedModel, load_trained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_S = 1.0
PRECISIONS = ("float32", "bf16")
BATCH = 4


def paper_model(setting: str) -> TrainedModel:
    """An untrained model with the paper's sizes and widths for ``setting`` (3d-A or 2d-A)."""
    config = load_config(ROOT / "params.yaml", setting=setting, profile="paper")
    shapes = scale_shapes(config.pyramid)
    channels = (
        config.train.generator_channels
        if config.model == "3d"
        else config.train.slice_generator_channels
    )
    torch.manual_seed(0)
    generator = build_generator_pyramid(
        config.model or "3d", channels, "instance", [s[0] for s in shapes]
    )
    generator.eval().requires_grad_(False)
    return TrainedModel(
        config=config,
        generator=generator,
        noise_amplitudes=[1.0] + [0.1] * (len(shapes) - 1),
        reconstruction_noise=make_reconstruction_noise(shapes),
        scale_shapes=shapes,
        scale_spacings_zyx_mm=[(1.0, 1.0, 1.0)] * len(shapes),
        source={"origin_xyz_mm": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        model_dir=Path("."),
    )


def time_sampling(model: TrainedModel, runs: int) -> dict[str, dict[str, float]]:
    """Per precision: one volume ``runs`` times (interleaved), then one batch of ``BATCH``."""
    for precision in PRECISIONS:  # warm-up (allocator, kernels)
        sample_volumes(model, 1, seed=0, progress=False, precision=precision)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for run in range(runs):
        for precision in PRECISIONS:
            start = time.perf_counter()
            volume = sample_volumes(model, 1, seed=run, progress=False, precision=precision)
            times[precision].append(time.perf_counter() - start)
            assert volume.shape == (1, *model.scale_shapes[-1])
    result = {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        sample_volumes(model, BATCH, seed=0, batch_size=BATCH, progress=False, precision=precision)
        batch_s = time.perf_counter() - start
        result[precision] = {
            "median_s": statistics.median(times[precision]),
            "min_s": min(times[precision]),
            "max_s": max(times[precision]),
            "batch_of_4_s_per_volume": batch_s / BATCH,
        }
    return result


def fidelity(models_dir: Path, pyramid_dir: Path, samples: int) -> dict[str, dict[str, float]]:
    """bf16 against float32 on every trained model under ``models_dir`` (see the docstring)."""
    folders = sorted(p.parent for p in models_dir.glob("*/seed0/checkpoint.pt"))
    if not folders or not (pyramid_dir / "pyramid.npz").is_file():
        return {}
    real = load_pyramid(pyramid_dir).volumes[-1]
    rows = {}
    for folder in folders:
        model = load_trained(folder)
        if tuple(model.scale_shapes[-1]) != tuple(real.shape):
            continue  # trained on another pyramid
        rec = {p: reconstruct(model, precision=p) for p in PRECISIONS}
        drawn = {
            p: sample_volumes(model, samples, seed=0, batch_size=1, progress=False, precision=p)
            for p in PRECISIONS
        }
        diff_hu = np.abs(network_to_hu(drawn["bf16"]) - network_to_hu(drawn["float32"]))
        rec_psnr = {p: psnr(network_to_paper(rec[p]), network_to_paper(real)) for p in PRECISIONS}
        rows[folder.parent.name] = {
            "trained_precision": model.config.train.precision,
            "rec_psnr_float32_db": rec_psnr["float32"],
            "rec_psnr_bf16_db": rec_psnr["bf16"],
            "rec_psnr_change_db": rec_psnr["bf16"] - rec_psnr["float32"],
            "sample_abs_diff_hu_mean": float(diff_hu.mean()),
            "sample_abs_diff_hu_p99": float(np.percentile(diff_hu, 99)),
            "sample_abs_diff_hu_max": float(diff_hu.max()),
            "sample_psnr_bf16_vs_float32_db": psnr(  # (K, D, H, W) as (K * D, H, W)
                network_to_paper(drawn["bf16"].reshape(-1, *real.shape[1:])),
                network_to_paper(drawn["float32"].reshape(-1, *real.shape[1:])),
            ),
        }
        print(folder.parent.name, json.dumps(rows[folder.parent.name]), flush=True)
    return rows


def markdown(report: dict[str, object], runs: int, samples: int) -> str:
    info = report["machine"]
    assert isinstance(info, dict)
    lines = [
        "# Sampling: one volume at the paper's finest size, float32 vs bf16",
        "",
        f"`benchmarks/bench_sample.py`: {info['cpu']}, {info['cores']} cores, torch "
        f"{info['torch']}, {info['threads']} threads, native bf16: {report['native_bf16']}; "
        f"1-min load average at start {info['load_average_1min_at_start']:.2f}. Untrained "
        f"weights, batch 1, noise included; median / min / max of {runs} runs after a warm-up, "
        f"the precisions interleaved; then one batch of {BATCH}. Target < {TARGET_S:g} s.",
        "",
        "| generator | shape (z, y, x) | scales | channels | parameters | precision | median s "
        "| min s | max s | batch of 4, s per volume |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    speed = report["speed"]
    assert isinstance(speed, dict)
    for name, r in speed.items():
        for precision in PRECISIONS:
            t = r["times"][precision]
            lines.append(
                f"| {name} | {tuple(r['shape_zyx'])} | {r['scales']} | {r['channels']} | "
                f"{r['parameters']:,} | {precision} | {t['median_s']:.3f} | {t['min_s']:.3f} | "
                f"{t['max_s']:.3f} | {t['batch_of_4_s_per_volume']:.3f} |"
            )
    rows = report["fidelity"]
    assert isinstance(rows, dict)
    if rows:
        lines += [
            "",
            "## What bf16 changes, on the pipeline's trained models",
            "",
            f"Reconstruction PSNR against the training volume (paper scale, peak 1) in float32 "
            f"and bf16; {samples} random volumes per model drawn from the same noise in both "
            "precisions: |HU difference| per voxel, and PSNR of the bf16 volumes against the "
            "float32 ones.",
            "",
            "| model | trained in | rec. PSNR float32 dB | rec. PSNR bf16 dB | change dB | "
            "mean abs HU diff | p99 abs HU diff | max abs HU diff | bf16 vs float32 PSNR dB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['trained_precision']} | {r['rec_psnr_float32_db']:.3f} | "
                f"{r['rec_psnr_bf16_db']:.3f} | {r['rec_psnr_change_db']:+.3f} | "
                f"{r['sample_abs_diff_hu_mean']:.1f} | {r['sample_abs_diff_hu_p99']:.0f} | "
                f"{r['sample_abs_diff_hu_max']:.0f} | {r['sample_psnr_bf16_vs_float32_db']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="trained models")
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--samples", type=int, default=8, help="volumes per model (fidelity)")
    parser.add_argument("--name", default="sample", help="results/<name>.json and .md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    speed = {}
    for setting in ("3d-A", "2d-A"):
        model = paper_model(setting)
        speed[setting.split("-")[0]] = {
            "shape_zyx": list(model.scale_shapes[-1]),
            "scales": len(model.scale_shapes),
            "channels": model.generator.channels,
            "parameters": sum(p.numel() for p in model.generator.parameters()),
            "runs": args.runs,
            "times": time_sampling(model, args.runs),
        }
        print(setting, json.dumps(speed[setting.split("-")[0]]["times"]), flush=True)
    report = {
        "benchmark": "sample one volume at the paper's finest size; bf16 vs float32",
        "target_s": TARGET_S,
        "machine": info,
        "native_bf16": native_bf16("cpu"),
        "speed": speed,
        "fidelity": fidelity(args.models, args.pyramid, args.samples),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    text = markdown(report, args.runs, args.samples)
    (RESULTS / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
