"""What the finest scale asks of the generator, with and without ``pyramid.anti_aliasing``.

The 3D recipe of the ``cpu`` profile starts random samples at the finest scale S from a volume of
scale S - 1, so the finest generator G_S has to add what scale S holds and scale S - 1 does not.
Two measurements (``docs/realism.md`` §13), each scored with the package's anatomy metrics against
the finest training volume (``benchmarks/realism_reconstruction.score_volume``):

1. **Per scan and resize rule**: the cpu pyramid of the phantom and of the LUNA16 sample scan,
   resized as the seed does (trilinear from full resolution, aliasing) and low-passed first
   (``anti_aliasing``). For each: the finest volume's tissue-class fractions, and scale S - 1
   upsampled to scale S against scale S (PSNR, tissue L1, body W1): how much of the finest scale
   the coarser one already predicts.
2. **Per trained model** (``NAME=MODEL_DIR@PYRAMID_DIR``): G_S run on the real volume of scale
   S - 1 with the fixed reconstruction noise (zeros above scale 0), what the samples' finest scale
   starts from, scored the same way: the bound a sample of that model can reach.

    python benchmarks/realism_anti_aliasing.py --luna16 ../shared/data/luna16-sample \
        --models 'B=models/3d-B/seed0@data/preprocessed' \
        --out benchmarks/results/realism_anti_aliasing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realism_reconstruction import parse_model, score_volume, write_results  # noqa: E402

from ctgan.anatomy import TISSUE_NAMES  # noqa: E402
from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.config import resolve_config  # noqa: E402
from ctgan.intensity import network_to_hu  # noqa: E402
from ctgan.luna16 import Luna16Folder  # noqa: E402
from ctgan.nets import upsample  # noqa: E402
from ctgan.preprocess import load_pyramid, preprocess_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def scan_rows(name: str, root: Path, params: dict) -> list[dict]:
    """Part 1 for one scan: one row per resize rule."""
    rows = []
    for anti_aliasing in (False, True):
        cfg = resolve_config(params, setting="3d-B")
        pyramid_cfg = dataclasses.replace(cfg.pyramid, anti_aliasing=anti_aliasing)
        pyramid = preprocess_scan(Luna16Folder(root), None, pyramid_cfg)
        finest = np.asarray(pyramid.volumes[-1], dtype=np.float32)
        real_hu = network_to_hu(finest)
        coarser = torch.as_tensor(np.asarray(pyramid.volumes[-2], dtype=np.float32))
        below = upsample(coarser[None, None], finest.shape)[0, 0].numpy()  # as G_S gets it
        row = score_volume("scale S-1 upsampled", network_to_hu(below), real_hu)
        rows.append(
            {
                "part": "scan",
                "scan": name,
                "anti_aliasing": anti_aliasing,
                "shape": list(finest.shape),
                **row,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def model_row(name: str, model_dir: Path, pyramid_dir: Path) -> dict:
    """Part 2 for one model: G_S on the real volume of scale S - 1."""
    model = load_trained(model_dir)
    volumes = load_pyramid(pyramid_dir).volumes
    finest = len(volumes) - 1
    below = torch.as_tensor(np.asarray(volumes[finest - 1], dtype=np.float32))[None, None]
    with torch.no_grad():
        out = model.generator.forward_scale(
            finest, model.reconstruction_noise[finest].float(), below
        )
    real_hu = network_to_hu(np.asarray(volumes[-1], dtype=np.float32))
    row = score_volume("G_S on real S-1", network_to_hu(out[0, 0].clamp(-1, 1).numpy()), real_hu)
    result = {
        "part": "model",
        "model": name,
        "model_dir": str(model_dir),
        "pyramid": str(pyramid_dir),
        "anti_aliasing": bool(model.config.pyramid.anti_aliasing),
        **row,
    }
    print(json.dumps(result), flush=True)
    return result


def table(rows: list[dict]) -> str:
    names = " / ".join(TISSUE_NAMES)
    lines = [
        "# The finest scale with and without anti-aliasing (`benchmarks/realism_anti_aliasing.py`)",
        "",
        "Bars of a chest-like sample: tissue L1 <= 0.15, body W1 <= 50 HU. Fractions of the body: "
        f"{names}.",
        "",
        "## Scale S - 1 upsampled against scale S (how much the coarser scale predicts)",
        "",
        "| scan | resize | PSNR dB | tissue L1 | body W1 HU | finest volume's fractions |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["part"] == "scan"):
        fractions = " / ".join(f"{r['fractions_real'][n]:.3f}" for n in TISSUE_NAMES)
        rule = "anti-aliased" if r["anti_aliasing"] else "seed (aliasing)"
        lines.append(
            f"| {r['scan']} | {rule} | {r['psnr_db']:.2f} | {r['tissue_l1']:.3f} "
            f"| {r['body_hu_wasserstein']:.1f} | {fractions} |"
        )
    models = [r for r in rows if r["part"] == "model"]
    if models:
        lines += [
            "",
            "## G_S on the real volume of scale S - 1 (the bound of the samples' finest scale)",
            "",
            "| model | pyramid | PSNR dB | tissue L1 | body W1 HU | fractions | real's |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in models:
            fractions = " / ".join(f"{r['fractions'][n]:.3f}" for n in TISSUE_NAMES)
            real = " / ".join(f"{r['fractions_real'][n]:.3f}" for n in TISSUE_NAMES)
            rule = "anti-aliased" if r["anti_aliasing"] else "seed (aliasing)"
            lines.append(
                f"| {r['model']} | {rule} | {r['psnr_db']:.2f} | {r['tissue_l1']:.3f} "
                f"| {r['body_hu_wasserstein']:.1f} | {fractions} | {real} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--phantom", type=Path, default=ROOT / "data" / "phantom")
    parser.add_argument("--luna16", type=Path, default=None, help="a LUNA16-layout folder")
    parser.add_argument("--models", nargs="*", default=[], help="NAME=MODEL_DIR@PYRAMID_DIR")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "realism_anti_aliasing"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = yaml.safe_load(args.params.read_text())
    params["profile"] = "cpu"
    rows = scan_rows("phantom", args.phantom, params)
    if args.luna16 is not None:
        rows += scan_rows("LUNA16 sample", args.luna16, params)
    for text in args.models:
        rows.append(model_row(*parse_model(text)))
    write_results(args.out, rows, table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
