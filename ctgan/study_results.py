"""The aggregated table of a study: a row per job (scan, setting, grid point, seed), then the
mean ± sd of every metric over the scans and seeds of each setting and grid point.

Written into the study's ``results_dir``: ``results.tsv`` (a row per job), ``summary.tsv`` (a row
per setting, grid point and metric: n, mean, sd with ddof 1, 0 for one value) and
``summary.json`` (the same, for ``dvc metrics show``). Floats are written in full (``repr``), so
two runs' tables compare bitwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctgan.io import atomic_write, ensure_writable_dir, read_json, write_json
from ctgan.study import MARKER, METRICS_FILE, StudyJob

PER_SAMPLE = "per_sample"  # per-sample lists stay in each model's metrics.json
ID_COLUMNS = ("name", "scan", "setting", "grid", "seed", "key")


def flatten_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{family: {name: value}}`` -> ``{"family.name": value}``, without the per-sample lists."""
    return {
        f"{family}.{name}": float(value)
        for family, values in metrics.items()
        if family != PER_SAMPLE
        for name, value in values.items()
    }


def job_row(job: StudyJob) -> dict[str, Any]:
    """One finished job's row; FileNotFoundError when its folder is missing or of another key."""
    folder = Path(job.model_dir)
    marker = folder / MARKER
    if not marker.is_file() or read_json(marker).get("key") != job.key:
        raise FileNotFoundError(
            f"{folder} holds no finished run of job {job.name} (key {job.key}); run the study "
            f"(ctgan study) until every job has finished"
        )
    grid = json.dumps(job.grid_point, sort_keys=True)
    ids = {"name": job.name, "scan": job.scan, "setting": job.setting, "grid": grid}
    return {
        **ids,
        "seed": job.seed,
        "key": job.key,
        **flatten_metrics(read_json(folder / METRICS_FILE)),
    }


def results_table(jobs: Sequence[StudyJob]) -> pd.DataFrame:
    """A row per job, in the jobs' order; raises naming every unfinished job."""
    rows, missing = [], []
    for job in jobs:
        try:
            rows.append(job_row(job))
        except FileNotFoundError:
            missing.append(job.name)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(jobs)} jobs have not finished ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); rerun the study: finished jobs are skipped"
        )
    return pd.DataFrame(rows)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of every metric over the rows of each (setting, grid point)."""
    metrics = [c for c in table.columns if c not in ID_COLUMNS]
    rows = []
    for (setting, grid), group in table.groupby(["setting", "grid"], sort=False):
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            n = len(values)
            rows.append(
                {
                    "setting": setting,
                    "grid": grid,
                    "metric": metric,
                    "n": n,
                    "mean": float(values.mean()) if n else math.nan,
                    "sd": float(values.std(ddof=1)) if n > 1 else 0.0,
                }
            )
    return pd.DataFrame(rows, columns=["setting", "grid", "metric", "n", "mean", "sd"])


def write_results(jobs: Sequence[StudyJob], results_dir: str | Path) -> dict[str, Path]:
    """Write results.tsv, summary.tsv and summary.json (atomically); returns their paths."""
    out = ensure_writable_dir(results_dir)
    table = results_table(jobs)
    summary = summary_table(table)
    paths = {"results": out / "results.tsv", "summary": out / "summary.tsv"}
    for key, frame in (("results", table), ("summary", summary)):
        with atomic_write(paths[key]) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format=None)
    nested: dict[str, Any] = {}
    for row in summary.itertuples(index=False):
        label = row.setting if row.grid == "{}" else f"{row.setting} {row.grid}"
        nested.setdefault(label, {})[row.metric] = {"mean": row.mean, "sd": row.sd, "n": row.n}
    paths["summary_json"] = write_json(out / "summary.json", {"jobs": len(table), "groups": nested})
    return paths
