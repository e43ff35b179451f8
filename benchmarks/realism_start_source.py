"""What random 3D samples start from (``train.sample_start_source``): the real coarse volume, or
one GPNN layout per sample at several layout noise sds; realism and diversity of each, scored with
the report's metrics. No retraining: every row samples the same trained model through
``ctgan.sample.sample_volumes`` with its config changed.

Per model, per start (``real`` or ``gpnn:<sd>``), per noise factor on the amplitudes above the
start scale and per sampling seed: K samples from the model's own start scale, float32. Rows are
appended to ``--out``.jsonl as they are measured and the markdown table is rewritten from them.

    python benchmarks/realism_start_source.py benchmarks/models/c3s-i150 \
        --sources real gpnn:2.5 gpnn:3.0 --factors 1 0.5 --seeds 0 1 --k 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realism_levers import append_row, realism_table, rewrite_table, score_samples  # noqa: E402

from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct, sample_volumes  # noqa: E402
from ctgan.sample_start import with_sampling  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def with_start(model, source: str, factor: float):
    """``model`` sampling from ``source`` (``real`` | ``gpnn:<sd>``) with the noise amplitudes
    above its start scale times ``factor`` (``train.sample_noise_factor``)."""
    kind, _, sd = source.partition(":")
    if kind not in ("real", "gpnn") or (kind == "real" and sd):
        raise SystemExit(f"a source is real or gpnn:<sd>, e.g. gpnn:2.5; got {source!r}")
    return with_sampling(model, kind, float(sd) if sd else None, factor)


def table(rows: list[dict]) -> str:
    """The rows grouped by model (in the order measured), start, noise factor and seed."""
    order = {name: i for i, name in reversed(list(enumerate(r["model"] for r in rows)))}
    rows = sorted(
        rows, key=lambda r: (order[r["model"]], r["source"], -r["noise_factor"], r["seed"])
    )
    lead = {
        "model": lambda r: r["model"],
        "start from": lambda r: r["source"],
        "noise ×": lambda r: f"{r['noise_factor']:g}",
        "seed": lambda r: r["seed"],
    }
    return realism_table(rows, lead, ("s per sample", lambda r: f"{r['seconds_per_sample']:.2f}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="trained 3D model folders")
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--sources", nargs="+", default=["real", "gpnn:2.5"])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--k", type=int, default=16, help="samples per row (default 16)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "realism_start_source"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    real = np.asarray(load_pyramid(args.pyramid).volumes[-1], dtype=np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_suffix(".jsonl")
    for folder in args.models:
        model = load_trained(folder)
        if tuple(model.scale_shapes[-1]) != real.shape:
            raise SystemExit(f"{folder}: finest scale {model.scale_shapes[-1]} != {real.shape}")
        rec = reconstruct(model, precision="float32")
        for source in args.sources:
            for factor in args.factors:
                varied = with_start(model, source, factor)
                for seed in args.seeds:
                    began = time.perf_counter()
                    samples = sample_volumes(
                        varied, args.k, seed=seed, progress=False, precision="float32"
                    )
                    seconds = (time.perf_counter() - began) / args.k
                    row = {
                        "model": folder.name,
                        "pyramid": str(args.pyramid),
                        "source": source,
                        "start_scale": varied.config.train.sample_start_scale,
                        "noise_factor": factor,
                        "seed": seed,
                        "k": args.k,
                        "threads": args.threads,
                        **score_samples(samples, real, rec),
                        "seconds_per_sample": seconds,
                    }
                    append_row(jsonl, row)
    rewrite_table(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
