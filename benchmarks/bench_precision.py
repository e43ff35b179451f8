"""Training iteration time of the cpu profile's finest scale: float32 against bf16 autocast.

    .venv/bin/python benchmarks/bench_precision.py [--settings 3d-B 3d-D 2d-B] [--rounds 3]
                                                   [--pyramid data/preprocessed] [--threads N]

One iteration = ``g_steps`` G steps + ``d_steps`` D steps of ``ctgan.scale_trainer.ScaleTrainer``
(the training loop's own code) at the finest scale of an untrained pyramid
(``ctgan.train.scale_trainer_at``) on the training pyramid, with the settings' params.yaml keys;
``train.precision: auto`` picks bf16 only where ``ctgan.layers.native_bf16`` holds. Each round
builds a trainer per precision (alternating), runs one untimed iteration and then three timed
ones, inside ``ctgan.runtime.freed_memory_kept`` as ``train_model`` does; the table gives the
fastest iteration per round, median over rounds. Writes benchmarks/results/precision.json / .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_train import timing_segmenter, with_mode
from machine import cpu_flags, machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.config import load_config  # noqa: E402
from ctgan.layers import native_bf16  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.runtime import freed_memory_kept  # noqa: E402
from ctgan.train import scale_trainer_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("float32", "bf16")


def fastest_iteration(cfg, volumes, scale: int) -> float:
    with freed_memory_kept():
        trainer = scale_trainer_at(cfg, volumes, scale, segmenter=timing_segmenter(cfg))
        trainer.iteration(0)
        times = []
        for i in range(1, 4):
            started = time.perf_counter()
            trainer.iteration(i)
            times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["3d-B", "3d-D", "2d-B"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volumes = load_pyramid(args.pyramid).volumes
    info = machine_info()
    _, _, flags = cpu_flags()
    rows = []
    for setting in args.settings:
        base = load_config(args.params, setting=setting)
        scale = len(volumes) - 1
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                cfg = with_mode(base, precision)
                times[precision].append(fastest_iteration(cfg, volumes, scale))
        row = {
            "setting": setting,
            "scale": scale,
            "shape": list(volumes[scale].shape),
            **{f"{p}_seconds": statistics.median(times[p]) for p in PRECISIONS},
            "all": times,
        }
        row["ratio"] = row["float32_seconds"] / row["bf16_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "native_bf16": native_bf16("cpu"), "rows": rows}
    (RESULTS / "precision.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# Finest-scale training iteration: float32 against bf16 autocast (cpu profile)",
        "",
        f"`benchmarks/bench_precision.py`: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{info['cpu']}, {info['cores']} cores (AVX512_BF16: {'avx512_bf16' in flags}; "
        f"native bf16 for ctgan: {payload['native_bf16']}), torch {info['torch']}, "
        f"{args.threads} threads, load average at start {info['load_average_1min_at_start']:.2f}. "
        f"Fastest of 3 iterations per round, median of {args.rounds} alternating rounds.",
        "",
        "| setting | scale (D, H, W) | float32 s/it | bf16 s/it | float32 / bf16 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {r['scale']} {tuple(r['shape'])} | {r['float32_seconds']:.3f} | "
        f"{r['bf16_seconds']:.3f} | {r['ratio']:.2f}x |"
        for r in rows
    ]
    (RESULTS / "precision.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
