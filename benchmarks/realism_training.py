"""Training-time realism levers: train one 3D setting with one change to the training procedure,
then score its random samples from every start scale (noise amplitudes x 1 and x 0.5 above the
start scale) with the package's metrics, as ``realism_levers.py`` does for a trained model.

Each lever is ``NAME=JSON``; the JSON may hold ``train`` (keys of the setting's train section,
e.g. ``{"train": {"noise_amplitude_factor": 0.1}}``), ``pyramid_dir`` (another preprocessed
scan) and ``setting`` (default 3d-B). Every row is appended to ``--out``.jsonl as it is measured
(so an interrupted study keeps what it finished), and the markdown table is rewritten from all
rows of that file.

    python benchmarks/realism_training.py 'base={}' \
        'noise0.1={"train": {"noise_amplitude_factor": 0.1}}' --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realism_levers import score, score_cells  # noqa: E402

from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.config import resolve_config  # noqa: E402
from ctgan.history import read_history  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_and_score(
    name: str,
    lever: dict,
    params: dict,
    models_dir: Path,
    threads: int,
    k: int,
    seed: int = 0,
    segmenter_path: Path = ROOT / "models" / "segmenter" / "segmenter.pt",
) -> list[dict]:
    """Train ``lever``'s setting (training seed ``seed``) into ``models_dir/name`` and score it;
    one row per (start scale, noise factor). Settings with the segmentation term train with the
    frozen segmenter at ``segmenter_path`` (the pipeline's ``segmenter`` stage)."""
    lever = dict(lever)
    setting = lever.pop("setting", "3d-B")
    pyramid_dir = Path(lever.pop("pyramid_dir", ROOT / "data" / "preprocessed"))
    params = json.loads(json.dumps(params))
    params["settings"][setting].update(lever.pop("train", {}))
    if lever:
        raise SystemExit(
            f"{name}: unknown lever keys {sorted(lever)} (train, pyramid_dir, setting)"
        )
    cfg = resolve_config(params, setting=setting)
    pyramid = load_pyramid(pyramid_dir)
    out = models_dir / name
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(threads)
    began = time.time()
    from ctgan.train import train_model

    segmenter = None
    if cfg.uses("segmentation"):
        from ctgan.segmenter import load_segmenter

        segmenter = load_segmenter(segmenter_path, "cpu")
    train_model(cfg, pyramid, out, seed=seed, segmenter=segmenter)
    seconds = time.time() - began
    model = load_trained(out)
    real = np.asarray(pyramid.volumes[-1], dtype=np.float32)
    rec = reconstruct(model, precision="float32")
    history = read_history(out)
    psnr = history.groupby("scale")["rec_psnr"].last().round(2).tolist()
    rows = []
    # 2D generators have no noise above their coarsest scale: only random samples from scale 0
    starts = range(len(model.scale_shapes)) if setting.startswith("3d") else [0]
    for start in starts:
        for factor in [1.0, 0.5] if start else [1.0]:
            rows.append(
                {
                    "name": name,
                    "setting": setting,
                    "seed": seed,
                    "pyramid": str(pyramid_dir),
                    "train_s": round(seconds),
                    "threads": threads,
                    "rec_psnr": psnr,
                    "amps": [round(a, 4) for a in model.noise_amplitudes],
                    **score(model, real, rec, k, start, factor),
                }
            )
    return rows


def table(rows: list[dict], k: int) -> str:
    header = (
        "| lever | train s (threads) | rec PSNR per scale | start | noise × | chest-like "
        "| lung fraction of body (real) | both sides | tissue L1 | body W1 HU | diversity "
        "| max SSIM to training |\n" + "|---" * 12 + "|\n"
    )
    lines = [
        f"| {r['name']} | {r['train_s']} ({r['threads']}) | {' / '.join(map(str, r['rec_psnr']))} "
        f"| {r['start_scale']} | {r['noise_factor']:g} " + score_cells(r, k)
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", nargs="+", help="NAME=JSON, e.g. 'base={}'")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--models", type=Path, default=ROOT / "benchmarks" / "models")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--k", type=int, default=8, help="samples per row (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--segmenter",
        type=Path,
        default=ROOT / "models" / "segmenter" / "segmenter.pt",
        help="the frozen segmenter for settings with the segmentation term",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/realism_training")
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    levers = []
    for text in args.levers:
        name, sep, spec = text.partition("=")
        if not sep or not name:
            raise SystemExit(f"a lever is NAME=JSON, e.g. 'base={{}}'; got {text!r}")
        levers.append((name, json.loads(spec)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_suffix(".jsonl")
    for name, lever in levers:
        for row in train_and_score(
            name, lever, params, args.models, args.threads, args.k, args.seed, args.segmenter
        ):
            print(json.dumps(row), flush=True)
            with jsonl.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    args.out.with_suffix(".md").write_text(table(rows, args.k))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
