"""Local executor: 2 workers x 1 thread against 1 worker x 2 threads, for the 8-model ablation
and for the many-scans study (one model per phantom scan).

    .venv/bin/python benchmarks/bench_workers.py                 # the profile of params.yaml
    .venv/bin/python benchmarks/bench_workers.py --profile smoke # a quick check that it runs

Each case is a fresh study (ctgan.study) in a temporary folder: the phantom of params.yaml's
`data` section, preprocessed before the clock starts; the time is the wall time of
`ctgan.executors.run_jobs` (training and evaluation of every job, through submitit's local
executor). Run it on a quiet machine: another process on the same cores changes the result.
The ablation is the 8 settings on the first scan with seed 0; settings with the segmentation
term read --segmenter (default models/segmenter/segmenter.pt, written by `dvc repro`). The
many-scans study trains --setting on every one of --scans phantom scans.

Writes benchmarks/results/workers.json and workers.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml
from machine import machine_info

from ctgan.config import SETTINGS, load_config
from ctgan.executors import run_jobs
from ctgan.phantom import write_phantom_dataset
from ctgan.study import expand_jobs, load_study, prepare_pyramids, scan_list

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LAYOUTS = ((1, 2), (2, 1))  # (workers, threads per worker)


def run_case(root: Path, data: Path, profile: str, spec: dict, workers: int, threads: int) -> dict:
    """Time one study with one executor layout; returns seconds and the job count."""
    folder = Path(tempfile.mkdtemp(prefix=f"w{workers}t{threads}-", dir=root))
    study_spec = {
        "base_params": str(ROOT / "params.yaml"),
        "profile": profile,
        "data_dir": str(data),
        "preprocessed_dir": str(root / "preprocessed"),
        "out_dir": str(folder / "models"),
        "work_dir": str(folder / "work"),
        "logs_dir": str(folder / "logs"),
        "results_dir": str(folder / "results"),
        **spec,
    }
    executor = {"kind": "local", "local": {"workers": workers, "threads_per_worker": threads}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"study": study_spec, "executor": executor}))
    study = load_study(path)
    uids = scan_list(study)
    prepare_pyramids(study, uids)  # not timed: shared preprocessing, the same for both layouts
    jobs = expand_jobs(study, uids)
    start = time.perf_counter()
    run_jobs(
        jobs, "local", {"workers": workers, "threads_per_worker": threads}, folder / "submitit"
    )
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "jobs": len(jobs),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="default: params.yaml's profile")
    parser.add_argument("--segmenter", default=str(ROOT / "models" / "segmenter" / "segmenter.pt"))
    parser.add_argument(
        "--scans", type=int, default=4, help="phantom scans of the many-scans study"
    )
    parser.add_argument("--setting", default="3d-C", help="the many-scans study's setting")
    parser.add_argument("--out", default=str(RESULTS), help="folder of workers.json and .md")
    parser.add_argument(
        "--studies",
        choices=("both", "ablation", "many-scans"),
        default="both",
        help="which studies to time (default both)",
    )
    args = parser.parse_args()
    cfg = load_config(ROOT / "params.yaml", profile=args.profile)
    segmenter = Path(args.segmenter)
    if not segmenter.is_file():
        raise SystemExit(
            f"segmenter {segmenter} not found: the ablation's settings 3d-D, 2d-C and 2d-D need "
            f"it; run `dvc repro segmenter` first or pass --segmenter"
        )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        data = root / "phantom"
        size = cfg.data.phantom_size
        write_phantom_dataset(data, scans=args.scans, seed=cfg.data.phantom_seed, size=size)
        first = sorted(p.stem for p in data.glob("subset*/*.mhd"))[0]
        studies = {
            "ablation (8 settings, 1 scan)": {"scans": [first], "settings": list(SETTINGS)},
            f"many scans ({args.setting}, {args.scans} scans)": {"settings": [args.setting]},
        }
        if args.studies != "both":
            studies = {
                name: spec
                for name, spec in studies.items()
                if name.startswith("ablation") == (args.studies == "ablation")
            }
        for name, spec in studies.items():
            spec = {**spec, "seeds": [0], "segmenter": str(segmenter.resolve())}
            results[name] = [run_case(root, data, cfg.profile, spec, w, t) for w, t in LAYOUTS]
    result = {
        "benchmark": "workers",
        "profile": cfg.profile,
        "studies": results,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers.json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    md = [
        f"# Local executor: workers x threads ({cfg.profile} profile)",
        "",
        f"{result['date']}; {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"load average at start {machine['load_average_1min_at_start']}.",
        "Wall time of training and evaluating every job (preprocessing excluded).",
        "",
        "| study | jobs | 1 worker x 2 threads (s) | 2 workers x 1 thread (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, (one, two) in results.items():
        ratio = one["seconds"] / two["seconds"] if two["seconds"] else float("nan")
        md.append(f"| {name} | {one['jobs']} | {one['seconds']} | {two['seconds']} | {ratio:.2f} |")
    md += ["", "ratio > 1: two workers are faster.", ""]
    (out / "workers.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
