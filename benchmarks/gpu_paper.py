"""The paper's schedule on one device (meant for a CUDA GPU): timing, training, evaluation.

    PYTHONPATH=. python3 benchmarks/gpu_paper.py --pyramid-dir DIR [--profile paper]
        [--segmenter PATH] [--out DIR] [--budget-s S] [--iterations N] [--device auto]

``DIR`` is a preprocessed pyramid of the profile (what ``ctgan.preprocess.save_pyramid`` writes:
``pyramid.npz`` + ``meta.json``, e.g. data/preprocessed of a run with ``profile: paper``). Steps,
each writing ``<out>/<step>.json`` and ``<out>/<step>.log``, and all of them together in
``<out>/gpu_paper.json`` (``<out>``: ``--out``, else ``$OUT`` if set, else
benchmarks/results/gpu_paper/):

- ``timing``: the device's matrix-product peak per precision (``machine.measured_peak_gflops``)
  and one training iteration per scale of 3d-D (``--timing-settings``) in the profile's precision,
  in ``--extra-precisions`` (default bf16) and in the reference numerics (float64 + BatchNorm,
  ``train.precision: reference``), each timed ``--iterations`` times after one untimed iteration
  (``bench_train.run_case``, the training loop's own ``ScaleTrainer.iteration``): seconds per
  iteration per scale, the ratio reference / default at every scale, the share of the measured
  peak, the projected time of the whole schedule per precision;
- ``segmenter``: the frozen segmenter of the segmentation term: ``--segmenter PATH``
  (``ctgan.segmenter.load_segmenter``), else trained here with ``ctgan.segmenter_train.train_segmenter``
  and the profile's segmenter settings on the pyramid's finest scale (a middle slab of its slices
  held out for validation; the pipeline's segmenter stage trains on the full-resolution scans
  instead, which a machine without SimpleITK cannot read), saved to ``<out>/segmenter/``;
- ``train_3d-D``: ``ctgan.train.train_model`` of 3d-D, seed 0, into ``<out>/3d-D/seed0/``; with
  ``--budget-s`` it stops before a scale that would not end inside the budget less
  ``--eval-reserve-s`` (projected from the timing step, or once that is spent) and records how
  far it got; rerun with the same ``--out`` and it resumes after the last completed scale;
- ``evaluate_3d-D``: ``ctgan.evaluate.evaluate_model`` (every metric of the registry) on the
  scales trained, the reconstruction MSE/PSNR/SSIM beside the paper's 0.0017 / 27.925 / 0.8769;
- ``train_2d-D`` and ``evaluate_2d-D``: the same for 2d-D if the budget leaves time.

Every step records its wall time and peak memory: on CUDA ``torch.cuda.max_memory_allocated``
(reset per step); on the CPU the process's peak resident size so far (``ru_maxrss``, which
cannot be reset per step). A step that fails is recorded (error and traceback in its log), the
steps that need it are skipped, and the script exits with status 1.

Nothing on this script's import path needs SimpleITK or matplotlib (the GPU machine has neither).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import resource
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_train import PEAK_KEY, run_case
from machine import machine_info, measured_peak_gflops

from ctgan.config import Config, iterations_for_scale, load_config, scale_shapes
from ctgan.evaluate import evaluate_model
from ctgan.io import write_json
from ctgan.preprocess import TrainingPyramid, load_pyramid
from ctgan.segmenter import load_segmenter, read_segmenter_file, save_segmenter
from ctgan.segmenter_data import held_out_slab
from ctgan.segmenter_train import train_segmenter
from ctgan.train import read_checkpoint, resolve_device, train_model

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_paper"
PAPER_3D_D = {"mse": 0.0017, "psnr": 27.925, "ssim": 0.8769}  # the paper's 3D table, row D
HELD_OUT_SLAB = 0.25  # fraction of the finest scale's slices the segmenter validates on

log = logging.getLogger("gpu_paper")


class BudgetSpent(Exception):
    """Raised from the training callback to stop before a scale that would not fit the budget."""


# ---------------------------------------------------------------------------------------------
# What every step records.


def device_description(device: torch.device) -> dict[str, Any]:
    """The host (``machine.machine_info``), torch and, on CUDA, the GPU and its math flags."""
    info: dict[str, Any] = {**machine_info(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=int(props.total_memory),
            multiprocessors=int(props.multi_processor_count),
            compute_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return info


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_kind": "torch.cuda.max_memory_allocated during this step",
        }
    return {
        "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_memory_kind": "CPU: peak resident set size of the process so far (ru_maxrss; "
        "not resettable per step, so it includes the earlier steps)",
    }


@contextlib.contextmanager
def step(
    out: Path, name: str, record: dict[str, Any], device: torch.device, about: dict[str, Any]
) -> Iterator[None]:
    """Run one step: its log in ``<out>/<name>.log``; ``record`` gets wall time, peak memory,
    status and ``about`` (device description, torch version) and is written to
    ``<out>/<name>.json``. An exception is recorded, not raised."""
    handler = logging.FileHandler(out / f"{name}.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record.update(step=name, status="running")
    start = time.perf_counter()
    log.info("step %s", name)
    try:
        yield
        record["status"] = "ok"
    except Exception as err:  # recorded in the JSON and the log; main() exits with status 1
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        log.error("step %s failed:\n%s", name, traceback.format_exc())
    finally:
        record["wall_s"] = time.perf_counter() - start
        record.update(peak_memory(device))
        record.update(about)
        write_json(out / f"{name}.json", record)
        logging.getLogger().removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------------------------
# (a) Timing.


def timing_modes(default: str, extra: list[str]) -> list[str]:
    """The profile's precision first (the ratios' denominator), the extras, the reference last."""
    modes = [default] + [m for m in extra if m not in (default, "reference")]
    return modes + ["reference"] if default != "reference" else modes


def peak_keys(device: torch.device) -> dict[str, str]:
    """Which measured peak a precision compares with: on CUDA float32 convolutions run in TF32
    while ``torch.backends.cudnn.allow_tf32`` is on (torch's default)."""
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return {**PEAK_KEY, "float32": "tf32"}
    return dict(PEAK_KEY)


def time_iterations(
    profile: str,
    settings: list[str],
    modes: list[str],
    iterations: int,
    peak_size: int,
    device: torch.device,
) -> dict[str, Any]:
    peaks = measured_peak_gflops(size=peak_size, device=device)
    log.info("measured matrix-product peak (GFLOP/s): %s", peaks)
    keys = peak_keys(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train_model on CUDA
    result: dict[str, Any] = {
        "method": (
            f"bench_train.run_case: per scale, every mode built on the same untrained pyramid, "
            f"one untimed iteration, then {iterations} timed iterations interleaved across modes "
            f"(device synchronised around each); median; FLOPs of the convolutions counted by "
            f"FlopCounterMode on the first mode's untimed iteration"
        ),
        "peak_gflops_measured": peaks,
        "peak_matrix_size": peak_size,
        "peak_key_per_mode": {m: keys[m] for m in modes},
        "modes": modes,
        "settings": {},
    }
    for setting in settings:
        cfg = load_config(PARAMS, setting=setting, profile=profile)
        scales = len(scale_shapes(cfg.pyramid))
        cases = [
            run_case(profile, setting, s, modes, iterations, iterations, peaks, str(device), keys)
            for s in range(scales)
        ]
        seconds = {
            mode: [c["modes"][mode]["median_s_per_iteration"] for c in cases] for mode in modes
        }
        schedule = {
            mode: sum(
                iterations_for_scale(cfg.train, s, len(times)) * t for s, t in enumerate(times)
            )
            for mode, times in seconds.items()
        }
        result["settings"][setting] = {
            "cases": cases,
            "seconds_per_iteration_per_scale": seconds,
            "share_of_measured_peak_per_scale": {
                mode: [c["modes"][mode]["share_of_measured_peak"] for c in cases] for mode in modes
            },
            "ratio_reference_over_default_per_scale": [
                c.get("ratio_reference_over_default") for c in cases
            ],
            "ratio_reference_over_default_finest": cases[-1].get("ratio_reference_over_default"),
            "iterations_per_scale": [
                iterations_for_scale(cfg.train, s, scales) for s in range(scales)
            ],
            "projected_schedule_s": schedule,
            "projected_schedule_method": "sum over scales of (iterations in the schedule x "
            "median seconds per iteration); training iterations only, no logging or checkpoints",
        }
    return result


# ---------------------------------------------------------------------------------------------
# (b) The segmenter.


def segmenter_from_pyramid(
    pyramid: TrainingPyramid, cfg: Config, device: torch.device, out: Path, record: dict[str, Any]
) -> torch.nn.Module:
    """Train the profile's segmenter on the finest scale: the slices above and below a middle
    slab train, the slab validates (as ``load_segmenter_data`` splits a single scan)."""
    volume, lungs, nodules = pyramid.volumes[-1], pyramid.lungs[-1], pyramid.nodules[-1]
    depth = volume.shape[0]
    low, high = held_out_slab(depth, HELD_OUT_SLAB)
    if low < 1:
        raise ValueError(
            f"the pyramid's finest scale has {depth} slices: too few to hold out a slab of "
            f"{HELD_OUT_SLAB:.0%} for the segmenter; pass a trained one with --segmenter"
        )
    parts = [slice(0, low), slice(high, depth)]
    model, history, metrics = train_segmenter(
        [volume[p] for p in parts],
        [lungs[p] for p in parts],
        [nodules[p] for p in parts],
        [volume[low:high]],
        [lungs[low:high]],
        [nodules[low:high]],
        cfg.segmenter,
        seed=0,
        device=device,
        progress=False,
    )
    metrics["validation"] = f"held-out slab z[{low}:{high}] of the pyramid's finest scale"
    path = save_segmenter(model, out / "segmenter" / "segmenter.pt", cfg.segmenter, metrics)
    record.update(
        source="trained here (ctgan.segmenter_train.train_segmenter) on the pyramid's finest scale",
        path=str(path),
        metrics=metrics,
        final_loss=history[-1]["loss"],
        config=dataclasses.asdict(cfg.segmenter),
    )
    return model


# ---------------------------------------------------------------------------------------------
# (b, d) Training with a budget; (c) evaluation.


def train_with_budget(
    cfg: Config,
    pyramid: TrainingPyramid,
    segmenter: torch.nn.Module | None,
    model_dir: Path,
    deadline: float | None,
    projected_s: list[float] | None,
    record: dict[str, Any],
) -> None:
    """``train_model`` into ``model_dir/seed0``; before a scale starts (at its first logged row),
    stop if the deadline has passed or its projected time would overrun it. The checkpoint then
    holds the scales completed."""
    rows: list[tuple[float, int, int]] = []  # (time, scale, iteration)

    def check_budget(row: dict[str, float]) -> None:
        now = time.perf_counter()
        scale, iteration = int(row["scale"]), int(row["iteration"])
        rows.append((now, scale, iteration))
        if deadline is None or iteration != 0:
            return
        needed = projected_s[scale] if projected_s else 0.0
        if now + needed > deadline:
            raise BudgetSpent(
                f"stopped before scale {scale}: {max(deadline - now, 0.0):.0f} s of the budget "
                f"left, scale {scale} projected to take {needed:.0f} s"
            )

    start = time.perf_counter()
    record["stopped"] = None
    try:
        train_model(cfg, pyramid, model_dir / "seed0", 0, segmenter, [check_budget])
    except BudgetSpent as stop:
        record["stopped"] = str(stop)
        log.info("%s", stop)
    record["train_wall_s"] = time.perf_counter() - start
    checkpoint = model_dir / "seed0" / "checkpoint.pt"  # absent when stopped before scale 0 ended
    completed = int(read_checkpoint(checkpoint)["completed_scales"]) if checkpoint.is_file() else 0
    scales = len(pyramid.volumes)
    per_scale = []
    for s in range(completed):
        times = [(t, i) for t, scale, i in rows if scale == s]
        if len(times) >= 2 and times[-1][1] > times[0][1]:
            per_scale.append((times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1]))
        else:
            per_scale.append(None)
    record.update(
        setting=cfg.setting,
        precision=cfg.train.precision,
        completed_scales=completed,
        num_scales=scales,
        iterations_per_scale=[iterations_for_scale(cfg.train, s, scales) for s in range(scales)],
        seconds_per_iteration_per_scale=per_scale,
        seconds_per_iteration_method="between the first and last logged rows of each completed "
        "scale (includes the logging's reconstruction passes every log_every iterations)",
        model_dir=str(model_dir),
    )


@dataclasses.dataclass
class _TrainedScales:
    """The scales a (possibly stopped) model was trained on: what evaluate_model reads."""

    volumes: list[np.ndarray]
    spacings_zyx_mm: list[tuple[float, float, float]]


def evaluate(
    model_dir: Path,
    pyramid: TrainingPyramid,
    segmenter: torch.nn.Module | None,
    completed: int,
    num_samples: int,
    device: torch.device,
    record: dict[str, Any],
) -> None:
    reference = _TrainedScales(pyramid.volumes[:completed], pyramid.spacings_zyx_mm[:completed])
    result = evaluate_model(
        model_dir, reference, segmenter, num_samples, 0, str(device), progress=False
    )
    record.update(
        evaluated_scale=completed - 1,
        num_scales=len(pyramid.volumes),
        metrics=result,
        reconstruction_beside_paper={
            name: {"ours": result[name], "paper_3d_d": PAPER_3D_D[name]} for name in PAPER_3D_D
        },
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyramid-dir", required=True, type=Path, help="preprocessed pyramid")
    parser.add_argument("--profile", default="paper", help="params.yaml profile (default paper)")
    parser.add_argument("--segmenter", type=Path, default=None, help="segmenter.pt to use")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget (s)")
    parser.add_argument(
        "--eval-reserve-s", type=float, default=30.0, help="budget kept for each evaluation"
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--timing-settings", nargs="+", default=["3d-D"])
    parser.add_argument("--extra-precisions", nargs="*", default=["bf16"])
    parser.add_argument("--peak-size", type=int, default=None, help="matrix size (8192 on CUDA)")
    parser.add_argument("--num-samples", type=int, default=None, help="default: the profile's")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1; got {args.iterations}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = None if args.budget_s is None else started + args.budget_s
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    pyramid = load_pyramid(args.pyramid_dir)
    summary: dict[str, Any] = {
        "script": "benchmarks/gpu_paper.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "profile": args.profile,
        "pyramid_dir": str(args.pyramid_dir),
        "pyramid_shapes": [list(s) for s in pyramid.shapes],
        "pyramid_source": {k: pyramid.meta.get(k) for k in ("seriesuid", "source")},
        "device": device_description(device),
        "torch": torch.__version__,
        "budget_s": args.budget_s,
        "paper_3d_d": PAPER_3D_D,
        "steps": {},
    }
    steps: dict[str, dict[str, Any]] = summary["steps"]
    about = {"device": summary["device"], "torch": summary["torch"]}

    def run(name: str) -> dict[str, Any]:
        steps[name] = {}
        return steps[name]

    def with_device(cfg: Config) -> Config:
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device.type))

    projected: dict[str, list[float]] = {}
    if not args.skip_timing:
        record = run("timing")
        with step(out, "timing", record, device, about):
            default = load_config(PARAMS, profile=args.profile).train.precision
            record.update(
                time_iterations(
                    args.profile,
                    args.timing_settings,
                    timing_modes(default, args.extra_precisions),
                    args.iterations,
                    args.peak_size or (8192 if device.type == "cuda" else 4096),
                    device,
                )
            )
            for setting, entry in record["settings"].items():
                projected[setting] = [
                    iterations_for_scale(
                        load_config(PARAMS, profile=args.profile).train,
                        s,
                        len(entry["seconds_per_iteration_per_scale"][default]),
                    )
                    * t
                    for s, t in enumerate(entry["seconds_per_iteration_per_scale"][default])
                ]

    segmenter = None
    record = run("segmenter")
    with step(out, "segmenter", record, device, about):
        cfg = with_device(load_config(PARAMS, setting="3d-D", profile=args.profile))
        if args.segmenter is not None:
            segmenter = load_segmenter(args.segmenter, device)
            payload = read_segmenter_file(args.segmenter)
            record.update(
                source="given (--segmenter)",
                path=str(args.segmenter),
                metrics=payload.get("metrics"),
                config=payload.get("config"),
            )
        else:
            segmenter = segmenter_from_pyramid(pyramid, cfg, device, out, record)

    for setting in ("3d-D", "2d-D"):
        if segmenter is None:
            break
        if setting == "2d-D" and deadline is not None and time.perf_counter() >= deadline:
            steps["train_2d-D"] = {"status": "skipped", "reason": "no time left in the budget"}
            break
        cfg = with_device(load_config(PARAMS, setting=setting, profile=args.profile))
        model_dir = out / setting
        record = run(f"train_{setting}")
        with step(out, f"train_{setting}", record, device, about):
            train_deadline = None if deadline is None else deadline - args.eval_reserve_s
            train_with_budget(
                cfg, pyramid, segmenter, model_dir, train_deadline, projected.get(setting), record
            )
        completed = record.get("completed_scales", 0)
        if record["status"] != "ok" or completed == 0:
            break
        record = run(f"evaluate_{setting}")
        with step(out, f"evaluate_{setting}", record, device, about):
            samples = args.num_samples or cfg.evaluate.num_samples
            evaluate(model_dir, pyramid, segmenter, completed, samples, device, record)

    summary["wall_s"] = time.perf_counter() - started
    summary["headline"] = headline(summary)
    write_json(out / "gpu_paper.json", summary)
    log.info("wrote %s", out / "gpu_paper.json")
    failed = [name for name, r in steps.items() if r.get("status") == "failed"]
    return 1 if failed else 0


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the issue asks for, gathered from the steps (None where a step did not run)."""
    steps = summary["steps"]
    timing = steps.get("timing", {}).get("settings", {}).get("3d-D", {})
    train = steps.get("train_3d-D", {})
    evaluation = steps.get("evaluate_3d-D", {})
    reconstruction = evaluation.get("reconstruction_beside_paper")
    return {
        "seconds_per_iteration_per_scale_3d_d": timing.get("seconds_per_iteration_per_scale"),
        "ratio_reference_over_default_finest_3d_d": timing.get(
            "ratio_reference_over_default_finest"
        ),
        "share_of_measured_peak_per_scale_3d_d": timing.get("share_of_measured_peak_per_scale"),
        "projected_schedule_s_3d_d": timing.get("projected_schedule_s"),
        "trained_scales_3d_d": [train.get("completed_scales"), train.get("num_scales")],
        "train_wall_s_3d_d": train.get("train_wall_s"),
        "reconstruction_3d_d_beside_paper": reconstruction,
        "peak_memory_bytes_per_step": {
            name: r.get("peak_memory_bytes") for name, r in steps.items()
        },
        "reconstruction_3d_d_finite": None
        if reconstruction is None
        else all(math.isfinite(v["ours"]) for v in reconstruction.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
