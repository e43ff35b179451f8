"""Copies that SSIM does not see: each random sample's highest SSIM to the training volume moved
in-plane, over a grid of zooms (per axis) and shifts (``docs/realism.md`` §11).

The layouts of the ``cpu`` profile's 3D samples start from the scan zoomed and shifted at random
(``train.sample_start_zoom_sd``, ``sample_start_shift_sd``). A sample that were only the scan
moved would pass the report's copy check (SSIM to the unmoved scan < 0.9) and still be a copy.
This script aligns the scan to each sample as well as a grid allows: zoom factors 1 + z per axis
(y and x separately) and shifts in voxels of the finest scale, bilinear, border values outside,
the same in every slice; and reports the best SSIM (``ctgan.similarity``'s 3D SSIM on the paper
scale, the report's) next to the unmoved one. The grid holds the identity, so the aligned SSIM is
never below the unmoved one.

    python benchmarks/aligned_copies.py models/3d-B models/3d-C models/3d-D --k 16 --seed 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.gpnn import move_in_plane  # noqa: E402
from ctgan.intensity import network_to_paper  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import sample_volumes  # noqa: E402
from ctgan.similarity import ssim_3d  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def moved(volume: np.ndarray, zoom_y: float, zoom_x: float, shift_y: float, shift_x: float):
    """``volume`` (D, H, W) zoomed in-plane by (zoom_y, zoom_x) about the centre and shifted by
    (shift_y, shift_x) voxels (``ctgan.gpnn.move_in_plane``: the layouts' own move)."""
    source = torch.as_tensor(volume, dtype=torch.float32)
    return move_in_plane(source, zoom_y, zoom_x, shift_y, shift_x).numpy()


def candidates(real: np.ndarray, zooms: list[float], shifts: list[float]) -> list[np.ndarray]:
    """The network-range ``real`` moved by every (zoom y, zoom x, shift y, shift x) of the grid,
    on the paper scale."""
    return [
        network_to_paper(moved(real, 1 + zy, 1 + zx, sy, sx))
        for zy, zx, sy, sx in itertools.product(zooms, zooms, shifts, shifts)
    ]


def best_aligned(sample: np.ndarray, moved_reals: list[np.ndarray]) -> float:
    return max(ssim_3d(sample, candidate) for candidate in moved_reals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--zooms", type=float, nargs="+", default=[-0.16, -0.08, -0.04, 0.0, 0.04, 0.08, 0.16]
    )
    parser.add_argument("--shifts", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/aligned_copies.json")
    args = parser.parse_args(argv)
    real = np.asarray(load_pyramid(args.pyramid).volumes[-1], dtype=np.float32)
    moved_reals = candidates(real, args.zooms, args.shifts)
    real_paper = network_to_paper(real)
    results = {}
    for folder in args.models:
        began = time.perf_counter()
        model = load_trained(folder)
        samples = network_to_paper(
            sample_volumes(model, args.k, seed=args.seed, progress=False, precision="float32")
        )
        plain = [ssim_3d(s, real_paper) for s in samples]
        aligned = [best_aligned(s, moved_reals) for s in samples]
        results[folder.name] = {
            "k": args.k,
            "seed": args.seed,
            "ssim_to_training": plain,
            "aligned_ssim_to_training": aligned,
            "max_ssim": max(plain),
            "max_aligned_ssim": max(aligned),
            "aligned_at_or_over_0.9": sum(a >= 0.9 for a in aligned),
            "seconds": time.perf_counter() - began,
        }
        print(
            f"{folder.name}: max SSIM {max(plain):.3f}, aligned {max(aligned):.3f} "
            f"(mean {np.mean(plain):.3f} -> {np.mean(aligned):.3f}; "
            f"{sum(a >= 0.9 for a in aligned)} of {args.k} aligned >= 0.9)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid = {"zooms": args.zooms, "shifts": args.shifts, "candidates": len(moved_reals)}
    args.out.write_text(json.dumps({"grid": grid, "models": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
