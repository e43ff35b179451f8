"""GPNN sampling time against `gpnn.chunk_size` (queries per distance block), outputs compared.

    .venv/bin/python benchmarks/bench_gpnn.py [--pyramid data/preprocessed] [--chunks 4096 1024 256]
                                              [--rounds 3] [--n 4] [--threads N]

Two cases on the training pyramid, as the pipeline runs them:
- **layout**: what each random sample of a 3D model starts from (``ctgan.sample_start.gpnn_layouts``
  with the cpu profile's 3D keys): GPNN on scales 0-1, 10 PNN steps per scale, the start zoomed
  and shifted (``train.sample_start_*``);
- **full**: the GPNN baseline's sample (``ctgan.baseline``): every scale, 1 step at the finest.

``chunk_size`` only blocks the distance computations (the windowed search gathers
``chunk x 27`` key patches per block); the outputs must not depend on it, and this script fails if
any chunk size gives a volume that differs in any bit from the first one's. The chunk sizes are
timed interleaved (round r runs each once), after one untimed warm-up each; medians per sample.
Writes benchmarks/results/gpnn_chunk.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.config import load_config  # noqa: E402
from ctgan.gpnn import generate_gpnn, gpnn_options  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cases(params: Path, volumes: list[np.ndarray]) -> dict[str, tuple[list, dict]]:
    """``{name: (volumes, generate_gpnn keywords without chunk_size)}`` from params.yaml."""
    cfg = load_config(params, setting="3d-B")
    base = gpnn_options(cfg.gpnn)
    base.pop("chunk_size")
    start = cfg.train.sample_start_scale
    layout = dict(base, finest_iterations=base["iterations"], start_scale=0)
    layout.update(
        noise_sd=cfg.train.sample_start_noise_sd,
        zoom_sd=cfg.train.sample_start_zoom_sd,
        shift_sd=cfg.train.sample_start_shift_sd,
    )
    full = dict(base, noise_sd=cfg.gpnn.noise_sd)
    return {"layout": (volumes[:start], layout), "full": (volumes, full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--chunks", type=int, nargs="+", default=[4096, 1024, 512, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=4, help="samples per timing (default 4)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--name", default="gpnn_chunk")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volumes = load_pyramid(args.pyramid).volumes
    info = machine_info()
    rows = []
    for name, (scales, options) in cases(args.params, volumes).items():
        reference = None
        times: dict[int, list[float]] = {c: [] for c in args.chunks}
        for chunk in args.chunks:  # warm-up, and the bit-for-bit check
            out = generate_gpnn(scales, args.n, seed=0, chunk_size=chunk, **options)
            if reference is None:
                reference = out
            elif not np.array_equal(out, reference):
                diff = float(np.abs(out - reference).max())
                raise SystemExit(f"{name}: chunk_size {chunk} changed the output (max {diff:.3g})")
        for _ in range(args.rounds):
            for chunk in args.chunks:
                started = time.perf_counter()
                generate_gpnn(scales, args.n, seed=0, chunk_size=chunk, **options)
                times[chunk].append((time.perf_counter() - started) / args.n)
        for chunk in args.chunks:
            rows.append(
                {
                    "case": name,
                    "shape": list(scales[-1].shape),
                    "chunk_size": chunk,
                    "seconds_per_sample": statistics.median(times[chunk]),
                    "all": times[chunk],
                    "load_average_1min": os.getloadavg()[0],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"machine": info, "n": args.n, "rounds": args.rounds, "rows": rows}, indent=1)
        + "\n"
    )
    lines = [
        "# GPNN sampling time against gpnn.chunk_size",
        "",
        f"`benchmarks/bench_gpnn.py`: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {args.threads} threads, "
        f"load average at start {info['load_average_1min_at_start']:.2f}. Median of "
        f"{args.rounds} interleaved rounds of {args.n} samples; every chunk size gave the same "
        "volumes bit for bit.",
        "",
        "| case | last scale (D, H, W) | chunk_size | s per sample |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {tuple(r['shape'])} | {r['chunk_size']} | {r['seconds_per_sample']:.3f} |"
        for r in rows
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
