"""Training iterations per scale: our default numerics (bf16 autocast) vs the `reference` mode.

    .venv/bin/python benchmarks/bench_train.py [--rounds 3] [--paper-rounds 2] [--threads N]
                                               [--finest-only] [--no-paper] [--no-2d-paper]

One iteration = ``g_steps`` generator steps + ``d_steps`` discriminator steps (3 + 3), run by
``ctgan.scale_trainer.ScaleTrainer.iteration`` (the training loop's own code) on an untrained
pyramid (``ctgan.train.scale_trainer_at``; the cost of an iteration does not depend on the
weights) and a synthetic volume. The modes are timed side by side in one process, interleaved
(round r times every mode once; the slow reference only in the first ``--reference-rounds``
rounds, default 1, without warm-up), after one untimed warm-up iteration of the default (which
also counts the FLOPs with ``torch.utils.flop_counter.FlopCounterMode``: convolutions, forward
and backward, 2 FLOPs per multiply-add); medians over the rounds and the ratio reference /
default.

Cases:
- cpu profile (the default pipeline), 3d-D and 2d-D, every scale, bf16 vs reference;
- paper profile, 3d-D (and 2d-D unless --no-2d-paper), bf16 at scales 0-3; at the finest scale
  23 x 141 x 141, 3d-D bf16 vs reference (one reference iteration takes about 4-5 minutes here)
  and 2d-D bf16. Every case times whole iterations.

The machine's practical peak is measured, not estimated: the GFLOP/s of a 4096^2 matrix product
per precision with the same threads (``machine.measured_peak_gflops``). Writes
benchmarks/results/<name>.json and .md with the machine, torch version, thread count, the 1-min
load average around every measurement, the achieved GFLOP/s and its share of that peak, and the
schedule time per model (iterations_per_scale * (s + 1) iterations at scale s). As in
``train_model`` on the CPU, the default (bf16) runs inside ``ctgan.runtime.freed_memory_kept``
(glibc's malloc reuses freed memory), the reference (float64) outside it; since leaving the block
releases the kept memory, every bf16 round runs one untimed iteration first, as a training run's
heap is warm after its first iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_flags, machine_info, measured_peak_gflops
from torch.utils.flop_counter import FlopCounterMode

from ctgan.config import Config, iterations_for_scale, load_config, num_scales, scale_shapes
from ctgan.runtime import freed_memory_kept
from ctgan.scale_trainer import ScaleTrainer
from ctgan.segmenter import Segmenter
from ctgan.train import scale_trainer_at

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_RATIO = 30.0
PEAK_KEY = {"bf16": "bf16", "float32": "float32", "reference": "float64"}


def machine() -> dict[str, object]:
    """machine_info() plus the AVX-512 flags and the measured matrix-product peak per precision."""
    _, _, flags = cpu_flags()
    return {
        **machine_info(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "peak_gflops_measured": measured_peak_gflops(),
    }


def with_mode(cfg: Config, mode: str, device: str = "cpu") -> Config:
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, precision=mode, device=device)
    )


def timing_segmenter(cfg: Config) -> Segmenter | None:
    """An untrained segmenter for settings with the segmentation term (the cost of an iteration
    does not depend on its weights), else None."""
    if not cfg.uses("segmentation"):
        return None
    torch.manual_seed(0)
    return Segmenter(base_channels=cfg.segmenter.base_channels)


def build(cfg: Config, scale: int) -> ScaleTrainer:
    shapes = scale_shapes(cfg.pyramid)
    rng = np.random.default_rng(0)
    volumes = [np.tanh(rng.standard_normal(shape)).astype(np.float32) for shape in shapes]
    return scale_trainer_at(cfg, volumes, scale, seed=0, segmenter=timing_segmenter(cfg))


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously; nothing on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(trainer: ScaleTrainer, i: int, device: str = "cpu") -> float:
    synchronize(device)
    start = time.perf_counter()
    trainer.iteration(i)
    synchronize(device)
    return time.perf_counter() - start


def run_case(
    profile: str,
    setting: str,
    scale: int,
    modes: list[str],
    rounds: int,
    reference_rounds: int,
    peaks: dict[str, float],
    device: str = "cpu",
    peak_key: dict[str, str] = PEAK_KEY,
) -> dict[str, object]:
    """Time ``modes`` at one scale. On CUDA every mode gets one untimed iteration first (cuDNN
    autotuning, as ``train_model`` enables it) and each mode's peak allocated memory is recorded;
    ``peak_key`` maps a mode to its key in ``peaks``."""
    cuda = torch.device(device).type == "cuda"
    base = load_config(ROOT / "params.yaml", setting=setting, profile=profile)
    shape = scale_shapes(base.pyramid)[scale]
    trainers = {mode: build(with_mode(base, mode, device), scale) for mode in modes}
    with FlopCounterMode(display=False) as counter:
        trainers[modes[0]].iteration(0)
    flops = float(counter.get_total_flops())
    if cuda:
        for mode in modes[1:]:
            trainers[mode].iteration(0)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    peak_bytes: dict[str, int] = {mode: 0 for mode in modes}
    loads = []
    for r in range(rounds):
        for mode in modes:
            if mode == "reference" and r >= reference_rounds:
                continue
            kept = mode != "reference" and not cuda  # as train_model: oneDNN precisions only
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with freed_memory_kept(kept):
                if kept:
                    trainers[mode].iteration(r + 1)  # untimed: the kept heap warms up
                times[mode].append(timed(trainers[mode], r + 1, device))
            if cuda:
                peak_bytes[mode] = max(peak_bytes[mode], torch.cuda.max_memory_allocated())
            loads.append(os.getloadavg()[0])
    result: dict[str, object] = {
        "profile": profile,
        "setting": setting,
        "scale": scale,
        "shape_zyx": list(shape),
        "generator_channels": base.train.generator_channels
        if base.model == "3d"
        else base.train.slice_generator_channels,
        "discriminator_channels": base.train.discriminator_channels,
        "steps": [base.train.g_steps, base.train.d_steps],
        "iterations_in_schedule": iterations_for_scale(base.train, scale, num_scales(base.pyramid)),
        "flops_per_iteration": flops,
        "load_average_1min": [round(v, 2) for v in loads],
        "modes": {},
    }
    for mode in modes:
        median = statistics.median(times[mode])
        achieved = flops / median / 1e9
        result["modes"][mode] = {  # type: ignore[index]
            "times_s": [round(t, 4) for t in times[mode]],
            "median_s_per_iteration": median,
            "gflops_achieved": achieved,
            "share_of_measured_peak": achieved / peaks[peak_key[mode]],
        }
        if cuda:
            result["modes"][mode]["peak_memory_allocated_bytes"] = peak_bytes[mode]  # type: ignore[index]
    if "reference" in modes and len(modes) > 1:
        result["ratio_reference_over_default"] = (
            result["modes"]["reference"]["median_s_per_iteration"]  # type: ignore[index]
            / result["modes"][modes[0]]["median_s_per_iteration"]  # type: ignore[index]
        )
    print(json.dumps({k: v for k, v in result.items() if k != "load_average_1min"}), flush=True)
    return result


def schedule_seconds(cases: list[dict[str, object]], profile: str, setting: str) -> float | None:
    rows = [c for c in cases if c["profile"] == profile and c["setting"] == setting]
    scales = num_scales(load_config(ROOT / "params.yaml", profile=profile).pyramid)
    if len(rows) != scales:  # a partial run (e.g. --finest-only) gives no schedule estimate
        return None
    return sum(
        float(c["iterations_in_schedule"]) * c["modes"]["bf16"]["median_s_per_iteration"]  # type: ignore[index]
        for c in rows
    )


def markdown(report: dict[str, object]) -> str:
    info = report["machine"]
    assert isinstance(info, dict)
    peak = info["peak_gflops_measured"]
    lines = [
        "# Training iteration time: default (bf16 autocast) vs reference (float64 + BatchNorm)",
        "",
        f"`benchmarks/bench_train.py`: {info['cpu']}, {info['cores']} cores "
        f"(AVX-512: {info['avx512f']}, AVX512_BF16: {info['avx512_bf16']}), "
        f"torch {info['torch']}, {info['threads']} threads, python {info['python']}; "
        f"1-min load average at start {info['load_average_1min_at_start']:.2f} (per case below). "
        f"Measured peak (4096^2 matrix product, same threads): bf16 {peak['bf16']} GFLOP/s, "
        f"float32 {peak['float32']}, float64 {peak['float64']}. One iteration = 3 G + 3 D steps, "
        "timed whole; FLOPs counted by FlopCounterMode; % = share of the measured peak of the "
        "mode's precision. bf16 runs inside ctgan.runtime.freed_memory_kept (as train_model "
        "on the CPU), after one untimed iteration per round.",
        "",
        "| profile | setting | scale | shape (z, y, x) | G/D ch | GFLOP/it | bf16 s/it | bf16 GFLOP/s "
        "| reference s/it | reference GFLOP/s | ratio | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cases = report["cases"]
    assert isinstance(cases, list)
    for c in cases:
        modes = c["modes"]
        bf16 = modes["bf16"]
        ref = modes.get("reference")
        ratio = c.get("ratio_reference_over_default")
        lines.append(
            f"| {c['profile']} | {c['setting']} | {c['scale']} | {tuple(c['shape_zyx'])} | "
            f"{c['generator_channels']}/{c['discriminator_channels']} | "
            f"{c['flops_per_iteration'] / 1e9:.1f} | {bf16['median_s_per_iteration']:.3f} | "
            f"{bf16['gflops_achieved']:.0f} ({bf16['share_of_measured_peak']:.0%}) | "
            + (
                f"{ref['median_s_per_iteration']:.2f} | {ref['gflops_achieved']:.1f} "
                f"({ref['share_of_measured_peak']:.0%}) | "
                if ref
                else "- | - | "
            )
            + (f"{ratio:.1f}x | " if ratio else "- | ")
            + f"{max(c['load_average_1min']):.1f} |"
        )
    lines += [
        "",
        "Schedule time per model from these medians (bf16, training iterations only):",
        "",
    ]
    schedules = report["schedule_estimates_s"]
    assert isinstance(schedules, dict)
    for key, value in schedules.items():
        if value is not None:
            lines.append(f"- {key}: {value:.0f} s ({value / 60:.1f} min)")
    target = report.get("finest_paper_ratio")
    if target is not None:
        lines += [
            "",
            f"Finest paper scale: reference / default = {target:.1f}x (target >= {TARGET_RATIO:g}x).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds at the cpu profile's scales")
    parser.add_argument("--paper-rounds", type=int, default=2, help="rounds at the paper's scales")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--reference-rounds", type=int, default=1, help="rounds of the (slow) reference mode"
    )
    parser.add_argument(
        "--name", default="train", help="results/<name>.json and .md (default: train)"
    )
    parser.add_argument(
        "--finest-only", action="store_true", help="only the finest paper scale (3d-D)"
    )
    parser.add_argument("--no-paper", action="store_true", help="skip the paper profile's scales")
    parser.add_argument("--no-2d-paper", action="store_true", help="skip 2d-D at paper scales")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    peaks = info["peak_gflops_measured"]
    assert isinstance(peaks, dict)
    start = time.perf_counter()
    cases = []

    def case(profile: str, setting: str, scale: int, modes: list[str], rounds: int) -> None:
        cases.append(run_case(profile, setting, scale, modes, rounds, args.reference_rounds, peaks))

    for setting in () if args.finest_only else ("3d-D", "2d-D"):
        for scale in range(3):
            case("cpu", setting, scale, ["bf16", "reference"], args.rounds)
    if not args.no_paper:
        settings = ["3d-D"] if args.no_2d_paper else ["3d-D", "2d-D"]
        for setting in [] if args.finest_only else settings:
            for scale in range(4):
                case("paper", setting, scale, ["bf16"], args.paper_rounds)
        case("paper", "3d-D", 4, ["bf16", "reference"], args.paper_rounds)
        if not args.no_2d_paper and not args.finest_only:
            case("paper", "2d-D", 4, ["bf16"], args.paper_rounds)
    schedules = {
        f"{profile} schedule, {setting}": schedule_seconds(cases, profile, setting)
        for profile in ("cpu", "paper")
        for setting in ("3d-D", "2d-D")
    }
    finest = [
        c
        for c in cases
        if c["profile"] == "paper" and c["scale"] == 4 and "reference" in c["modes"]
    ]
    report = {
        "benchmark": "training iteration per scale, bf16 (default) vs reference",
        "target_ratio_finest_paper_scale": TARGET_RATIO,
        "machine": info,
        "wall_s": time.perf_counter() - start,
        "cases": cases,
        "schedule_estimates_s": schedules,
        "finest_paper_ratio": finest[0]["ratio_reference_over_default"] if finest else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    text = markdown(report)
    (RESULTS / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
