"""Time to sample one volume at the paper's finest size (23 x 141 x 141, 5 scales) on this machine.

    .venv/bin/python benchmarks/bench_sample.py [--runs 7] [--threads N]

Builds the 3D generator (32 channels) and the 2D slice-stack generator (256 channels) at the
paper profile's scale shapes with untrained weights (the cost does not depend on the weights),
then times ``ctgan.sample.sample_volumes(model, 1)`` (noise drawing included) after one warm-up
run: median, min and max of ``--runs`` runs. Writes benchmarks/results/sample.json and sample.md
with the machine, torch version and thread count. Target: < 1 s per volume.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_info

from ctgan.config import load_config, scale_shapes
from ctgan.nets import build_generator_pyramid, make_reconstruction_noise
from ctgan.sample import sample_volumes
from ctgan.train import TrainedModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_S = 1.0


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


def time_sampling(model: TrainedModel, runs: int) -> list[float]:
    sample_volumes(model, 1, seed=0, progress=False)  # warm-up (allocator, kernels)
    times = []
    for run in range(runs):
        start = time.perf_counter()
        volume = sample_volumes(model, 1, seed=run, progress=False)
        times.append(time.perf_counter() - start)
        assert volume.shape == (1, *model.scale_shapes[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    results = {}
    for setting in ("3d-A", "2d-A"):
        model = paper_model(setting)
        times = time_sampling(model, args.runs)
        results[setting.split("-")[0]] = {
            "shape_zyx": list(model.scale_shapes[-1]),
            "scales": len(model.scale_shapes),
            "channels": model.generator.channels,
            "parameters": sum(p.numel() for p in model.generator.parameters()),
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "runs": args.runs,
            "under_target": statistics.median(times) < TARGET_S,
        }
    report = {
        "benchmark": "sample one volume, paper finest size",
        "target_s": TARGET_S,
        "machine": info,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sample.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Sampling time: one volume at the paper's finest size",
        "",
        f"`benchmarks/bench_sample.py`, {args.runs} runs after one warm-up, untrained weights, "
        f"float32, batch 1, noise included. Target < {TARGET_S:g} s.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{info['threads']} threads; 1-min load average at start {info['load_average_1min_at_start']} "
        "(the CPU is shared with other jobs, so times are upper bounds).",
        "",
        "| generator | shape (z, y, x) | scales | channels | parameters | median s | min s | max s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {tuple(r['shape_zyx'])} | {r['scales']} | {r['channels']} | "
            f"{r['parameters']:,} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |"
        )
    (RESULTS / "sample.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
