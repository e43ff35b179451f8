"""One figure of several trained 3D models side by side: per model a row with the training
volume's axial centre slice, the reconstruction and three random samples (float32, sampling seed
0, each model's own start scale unless --start-scale), lung window, physical aspect ratio; each
sample titled chest-like or not by ``ctgan.anatomy``. A model given as ``FOLDER#SOURCE@FACTOR``
samples from ``SOURCE`` (``real`` | ``gpnn:<sd>``) with its noise above the start scale times
``FACTOR`` (``realism_start_source.py``'s variants).

    python benchmarks/realism_figure.py benchmarks/models/base benchmarks/models/lr2e-3 \
        --pyramid data/preprocessed --out docs/figures/realism-levers.png
    python benchmarks/realism_figure.py 'benchmarks/models/c3s-i150#gpnn:2.25@0.25' ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realism_start_source import with_start  # noqa: E402

from ctgan.anatomy import chest_like_flags  # noqa: E402
from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.intensity import network_to_hu  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct, sample_volumes  # noqa: E402

LUNG_WINDOW = (-1350.0, 150.0)  # W 1500 / L -600 HU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", nargs="+", help="trained 3D model folders, each FOLDER or FOLDER#SOURCE@FACTOR"
    )
    parser.add_argument("--pyramid", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--start-scale", type=int, default=None)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/realism-levers.png"))
    args = parser.parse_args(argv)
    pyramid = load_pyramid(args.pyramid)
    real = network_to_hu(np.asarray(pyramid.volumes[-1], dtype=np.float32))
    dz, dy, dx = pyramid.spacings_zyx_mm[-1]
    columns = 2 + args.samples
    fig, axes = plt.subplots(
        len(args.models), columns, figsize=(2.2 * columns, 2.3 * len(args.models)), squeeze=False
    )
    for row, spec in zip(axes, args.models, strict=True):
        path, _, variant = spec.partition("#")
        folder = Path(path)
        model = load_trained(folder)
        if variant:
            source, _, factor = variant.partition("@")
            model = with_start(model, source, float(factor or 1.0))
        rec = network_to_hu(np.squeeze(reconstruct(model, precision="float32")))
        samples = network_to_hu(
            sample_volumes(
                model,
                args.samples,
                seed=0,
                progress=False,
                precision="float32",
                start_scale=args.start_scale,
            )
        )
        flags = chest_like_flags(real, samples)
        panels = [("training volume", real), ("reconstruction", rec)] + [
            (f"sample {i + 1}: {'chest-like' if ok else 'not chest-like'}", volume)
            for i, (volume, ok) in enumerate(zip(samples, flags, strict=True))
        ]
        for ax, (title, volume) in zip(row, panels, strict=True):
            ax.imshow(
                volume[volume.shape[0] // 2],
                cmap="gray",
                vmin=LUNG_WINDOW[0],
                vmax=LUNG_WINDOW[1],
                aspect=dy / dx,
            )
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        label = folder.name + (f"\n{variant.replace('@', ' x')}" if variant else "")
        row[0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
