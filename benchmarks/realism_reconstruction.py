"""How far the reconstruction itself is from the training volume's intensities: a bound on the
random samples' realism.

A random sample is the reconstruction's generator fed other noise; if the reconstruction G(z_rec)
already misses the tissue-class criterion of ``ctgan/anatomy.py`` (tissue L1 <= 0.15, body HU
W1 <= 50), the samples cannot be expected to meet it. For each model this scores the finest
reconstruction (float32) with the package's own anatomy metrics against the finest training
volume: its PSNR (paper scale), RMSE in HU, the six tissue-class fractions of the body, the tissue
L1 and the body HU Wasserstein-1. As a yardstick, the training volume plus white Gaussian noise of
a few standard deviations is scored the same way (seed 0).

    python benchmarks/realism_reconstruction.py 'lr2e-3=models/3d-B/seed0@data/preprocessed' \
        --out benchmarks/results/realism_reconstruction
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.anatomy import TISSUE_NAMES, compare_anatomy  # noqa: E402
from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.intensity import HU_MAX, HU_MIN, network_to_hu  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct  # noqa: E402

NOISE_SD_HU = (25.0, 50.0, 100.0)


def score_volume(name: str, volume_hu: np.ndarray, real_hu: np.ndarray) -> dict:
    """The anatomy metrics of one volume against the training volume, plus its PSNR and RMSE."""
    comparison = compare_anatomy(volume_hu[None], real_hu)
    summary = comparison.summary()
    rmse_hu = float(np.sqrt(np.mean((np.clip(volume_hu, HU_MIN, HU_MAX) - real_hu) ** 2)))
    rmse_paper = rmse_hu / (HU_MAX - HU_MIN)
    return {
        "name": name,
        "psnr_db": None if rmse_paper == 0 else -20.0 * math.log10(rmse_paper),
        "rmse_hu": rmse_hu,
        "tissue_l1": summary["tissue_l1"],
        "body_hu_wasserstein": summary["body_hu_wasserstein"],
        "chest_like": bool(summary["chest_like"] >= 1.0),
        "fractions": {n: summary[f"tissue_{n}"] for n in TISSUE_NAMES},
        "fractions_real": {n: summary[f"tissue_{n}_real"] for n in TISSUE_NAMES},
    }


def parse_model(text: str) -> tuple[str, Path, Path]:
    """``NAME=MODEL_DIR@PYRAMID_DIR`` -> (name, model folder, pyramid folder)."""
    name, sep, rest = text.partition("=")
    model_dir, at, pyramid_dir = rest.partition("@")
    if not (sep and at and name):
        raise SystemExit(f"a model is NAME=MODEL_DIR@PYRAMID_DIR; got {text!r}")
    return name, Path(model_dir), Path(pyramid_dir)


def write_results(out: Path, rows: list[dict], markdown: str) -> None:
    """``out``.json (every row) and ``out``.md (``markdown``), and print the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def table(rows: list[dict]) -> str:
    names = " | ".join(TISSUE_NAMES)
    header = (
        f"| volume | PSNR dB | RMSE HU | tissue L1 (≤ 0.15) | body W1 HU (≤ 50) | chest-like "
        f"| fractions ({names}) |\n" + "|---" * 7 + "|\n"
    )
    lines = []
    for r in rows:
        fractions = " / ".join(f"{r['fractions'][n]:.3f}" for n in TISSUE_NAMES)
        psnr = "—" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        lines.append(
            f"| {r['name']} | {psnr} | {r['rmse_hu']:.1f} | {r['tissue_l1']:.3f} "
            f"| {r['body_hu_wasserstein']:.1f} | {'yes' if r['chest_like'] else 'no'} "
            f"| {fractions} |"
        )
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIR@PYRAMID_DIR")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/realism_reconstruction")
    )
    args = parser.parse_args(argv)
    rows, pyramids_seen = [], set()
    for text in args.models:
        name, model_dir, pyramid_dir = parse_model(text)
        real_hu = network_to_hu(np.asarray(load_pyramid(Path(pyramid_dir)).volumes[-1], np.float32))
        if pyramid_dir not in pyramids_seen:
            pyramids_seen.add(pyramid_dir)
            rows.append(score_volume(f"{pyramid_dir}: training volume", real_hu, real_hu))
            rng = np.random.default_rng(0)
            for sd in NOISE_SD_HU:
                noisy = real_hu + rng.normal(0.0, sd, real_hu.shape).astype(np.float32)
                rows.append(
                    score_volume(f"{pyramid_dir}: training + noise sd {sd:g} HU", noisy, real_hu)
                )
        rec_hu = network_to_hu(
            np.asarray(reconstruct(load_trained(Path(model_dir)), precision="float32"), np.float32)
        )
        rows.append(
            {**score_volume(f"{name}: reconstruction", rec_hu, real_hu), "model": str(model_dir)}
        )
        print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, rows, table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
