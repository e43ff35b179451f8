"""The issue's realism criteria, measured on files written by ``ctgan sample`` with code that does
not import ``ctgan``: numpy, scipy, scikit-image and SimpleITK only, written from the issue's
words, not from ``ctgan/anatomy.py`` (a cross-check of the package's metrics and of its export).

What it reads: the exported volumes (int16 HU, any format SimpleITK reads) and the training
volume, the finest scale of ``data/preprocessed/pyramid.npz`` (networks' range, HU = 1000 x).

Its own definitions (simpler than the package's; the differences are the point of the check):

- body: HU > -500, the largest 3D connected component, holes filled slice by slice (axial);
- lungs: body voxels < -400 HU (whatever dark region the body encloses);
- lungs on both sides: split the body at its centre of mass in x; each half holds >= 20 % of the
  lung voxels;
- tissue classes of the body: < -400 (air/lung), -400..-200 (the rest), -200..-50 (fat),
  -50..150 (soft tissue), 150..300 (dense), >= 300 (bone); L1 = sum of |sample - real| over the
  six fractions;
- body HU Wasserstein-1: ``scipy.stats.wasserstein_distance`` of the body voxels' HU;
- SSIM: ``skimage.metrics.structural_similarity`` of two volumes on (HU + 1000) / 2000 clipped
  to [0, 1], data range 1, its default 7-voxel window in 3D; diversity = mean over pairs of
  1 - SSIM; copies = the highest SSIM of a sample to the training volume;
- chest-like: lung fraction within +-30 % of the real volume's, lungs on both sides, L1 <= 0.15,
  W1 <= 50 HU. The issue's bars: >= 75 % chest-like, diversity >= 0.2, every SSIM < 0.9.

    python benchmarks/independent_realism_check.py exports/3d-B exports/3d-C \
        --pyramid data/preprocessed/pyramid.npz
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats
from skimage.metrics import structural_similarity

CLASSES = (-np.inf, -400.0, -200.0, -50.0, 150.0, 300.0, np.inf)


def body_of(hu: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(hu > -500.0)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == (int(np.argmax(sizes)) + 1)
    return np.stack([ndimage.binary_fill_holes(axial) for axial in body])


def measure(hu: np.ndarray) -> dict:
    body = body_of(hu)
    lungs = body & (hu < -400.0)
    values = hu[body]
    fractions = np.histogram(values, bins=CLASSES)[0] / max(values.size, 1)
    x = np.nonzero(body)[2]
    centre = x.mean() if x.size else hu.shape[2] / 2
    lung_x = np.nonzero(lungs)[2]
    left = float((lung_x < centre).mean()) if lung_x.size else 0.0
    return {
        "lung_fraction": float(lungs.sum() / max(body.sum(), 1)),
        "both_sides": bool(lung_x.size and 0.2 <= left <= 0.8),
        "fractions": fractions,
        "values": values,
    }


def unit(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(unit(a), unit(b), data_range=1.0))


def check(samples: list[np.ndarray], real: np.ndarray) -> dict:
    reference = measure(real)
    rows = []
    for hu in samples:
        m = measure(hu)
        l1 = float(np.abs(m["fractions"] - reference["fractions"]).sum())
        w1 = (  # a volume without a body has no HU distribution to compare
            float(stats.wasserstein_distance(m["values"], reference["values"]))
            if m["values"].size
            else float("inf")
        )
        lung_ok = abs(m["lung_fraction"] - reference["lung_fraction"]) <= (
            0.3 * reference["lung_fraction"]
        )
        rows.append(
            {
                "lung_fraction": m["lung_fraction"],
                "both_sides": m["both_sides"],
                "tissue_l1": l1,
                "body_w1_hu": w1,
                "chest_like": bool(lung_ok and m["both_sides"] and l1 <= 0.15 and w1 <= 50.0),
                "ssim_to_training": ssim(hu, real),
            }
        )
    pairs = list(itertools.combinations(range(len(samples)), 2))
    diversity = float(np.mean([1.0 - ssim(samples[i], samples[j]) for i, j in pairs]))
    chest_like = sum(r["chest_like"] for r in rows)
    highest = max(r["ssim_to_training"] for r in rows)
    return {
        "k": len(samples),
        "real_lung_fraction": reference["lung_fraction"],
        "chest_like": chest_like,
        "lungs_both_sides": sum(r["both_sides"] for r in rows),
        "mean_tissue_l1": float(np.mean([r["tissue_l1"] for r in rows])),
        "mean_body_w1_hu": float(np.mean([r["body_w1_hu"] for r in rows])),
        "diversity": diversity,
        "max_ssim_to_training": highest,
        "passes": bool(chest_like >= 0.75 * len(rows) and diversity >= 0.2 and highest < 0.9),
        "samples": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of exported volumes")
    parser.add_argument("--pyramid", type=Path, default=Path("data/preprocessed/pyramid.npz"))
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    with np.load(args.pyramid) as pyramid:
        finest = max(int(k.split("_")[1]) for k in pyramid.files if k.startswith("volume_"))
        real = pyramid[f"volume_{finest}"].astype(np.float64) * 1000.0
    results = {}
    for folder in args.folders:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".mha")))
        paths = [p for p in paths if "_lungs" not in p.name and "_nodules" not in p.name]
        if not paths:
            raise SystemExit(f"{folder}: no .nii.gz or .mha volumes")
        samples = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float64) for p in paths]
        shapes = {s.shape for s in samples}
        if shapes != {real.shape}:
            raise SystemExit(
                f"{folder}: volume shapes {shapes} != the training volume's {real.shape}"
            )
        results[folder.name] = check(samples, real)
        r = results[folder.name]
        print(
            f"{folder.name}: chest-like {r['chest_like']}/{r['k']}, both sides "
            f"{r['lungs_both_sides']}/{r['k']}, lung fraction real {r['real_lung_fraction']:.3f}, "
            f"tissue L1 {r['mean_tissue_l1']:.3f}, W1 {r['mean_body_w1_hu']:.1f} HU, diversity "
            f"{r['diversity']:.3f}, max SSIM {r['max_ssim_to_training']:.3f}: "
            f"{'passes' if r['passes'] else 'fails'}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
