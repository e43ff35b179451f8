"""What the tissue-class bar asks: the chest-like values of the real training volume blurred
in-plane (Gaussian, sigma in voxels of the finest scale) against itself, on the phantom and on the
real LUNA16 sample (cpu pyramid).

    .venv/bin/python benchmarks/tissue_blur.py [--phantom-pyramid data/preprocessed]
                                               [--luna16 ../shared/data/luna16-sample]

A sample as smooth as the scan blurred by sigma cannot do better than that row on tissue L1 and
body W1 (``ctgan.anatomy``). Writes benchmarks/results/tissue_blur.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan import anatomy  # noqa: E402
from ctgan.config import load_config  # noqa: E402
from ctgan.intensity import network_to_hu  # noqa: E402
from ctgan.luna16 import Luna16Folder  # noqa: E402
from ctgan.preprocess import load_pyramid, preprocess_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.35, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom-pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--luna16", type=Path, default=ROOT.parent / "shared/data/luna16-sample")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tissue_blur.md")
    args = parser.parse_args()
    cfg = load_config(args.params)
    volumes = {"phantom": load_pyramid(args.phantom_pyramid).volumes[-1]}
    if args.luna16.is_dir():
        scan = preprocess_scan(Luna16Folder(args.luna16), None, cfg.pyramid)
        volumes["LUNA16 sample"] = scan.volumes[-1]
    lines = [
        "# The real volume blurred in-plane, against itself (`benchmarks/tissue_blur.py`)",
        "",
        f"Finest scale of the `{cfg.profile}` pyramid; bars: tissue L1 <= "
        f"{anatomy.CHEST_TISSUE_L1_MAX}, body W1 <= {anatomy.CHEST_BODY_W1_MAX_HU} HU.",
        "",
        "| volume | sigma (voxels, y and x) | tissue L1 | body W1 HU | chest-like |",
        "|---|---|---|---|---|",
    ]
    for name, volume in volumes.items():
        real_hu = network_to_hu(np.asarray(volume, dtype=np.float32))
        real = anatomy.measure_anatomy(real_hu)
        for sigma in SIGMAS:
            blurred = anatomy.measure_anatomy(gaussian_filter(real_hu, sigma=(0, sigma, sigma)))
            row = anatomy.sample_checks(blurred, real)
            lines.append(
                f"| {name} | {sigma} | {row['tissue_l1']:.3f} | "
                f"{row['body_hu_wasserstein']:.1f} | {'yes' if row['chest_like'] else 'no'} |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
