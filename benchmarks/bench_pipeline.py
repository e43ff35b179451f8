"""Wall time of the default pipeline: `dvc repro --force` in this repository, stage by stage.

    .venv/bin/python benchmarks/bench_pipeline.py

Runs every stage (forced, so nothing is skipped) with the repository's params.yaml as it is (its
`profile:` decides), records the time at which each stage starts from DVC's own output, and writes
benchmarks/results/pipeline.json and pipeline.md with the machine, torch version and thread count.
The evaluate stages' layout cache (.cache/gpnn-layouts) is emptied first: the time is a fresh run's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_pipeline() -> tuple[float, list[tuple[str, float]], str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    shutil.rmtree(ROOT / ".cache" / "gpnn-layouts", ignore_errors=True)  # as in a fresh clone
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro", "--force"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    starts: list[tuple[str, float]] = []
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        match = re.match(r"Running stage '([^']+)'", line)
        if match:
            starts.append((match.group(1), time.perf_counter() - start))
    code = proc.wait()
    total = time.perf_counter() - start
    if code != 0:
        sys.stderr.write("".join(lines[-60:]))
        raise SystemExit(f"dvc repro failed with exit code {code}")
    return total, starts, "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    total, starts, _ = run_pipeline()
    stages = []
    for i, (name, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else total
        stages.append({"stage": name, "seconds": round(t1 - t0, 1)})
    params = (ROOT / "params.yaml").read_text()
    profile = re.search(r"^profile:\s*(\w+)", params, re.M)
    result = {
        "benchmark": "pipeline",
        "profile": profile.group(1) if profile else "?",
        "total_seconds": round(total, 1),
        "stages": stages,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Pipeline wall time ({result['profile']} profile)",
        "",
        f"{result['date']}; {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"torch {result['machine']['torch']}, {result['machine']['threads']} threads.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {s['stage']} | {s['seconds']} |" for s in stages],
        f"| **total** | **{result['total_seconds']}** ({result['total_seconds'] / 60:.1f} min) |",
        "",
    ]
    (RESULTS / "pipeline.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
