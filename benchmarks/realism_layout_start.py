"""What a GPNN layout starts from, against the copies: perturbations of the scan's coarsest volume
that the layouts of ``train.sample_start_source: gpnn`` could start from instead of "the volume
plus white noise" (``docs/realism.md`` §10). No retraining: every row samples the same trained
model with its own sampling keys, its layouts drawn by this script.

A layout (``ctgan.sample_start.gpnn_layouts``) runs GPNN's coarse-to-fine PNN steps over the
training pyramid's scales 0 .. k - 1 from the estimate ``real_0 + noise``. This script replaces
that start with ``perturbed(real_0)``, one per sample, by one of these *starts*:

- ``white:SD``: the package's own start, the volume plus white noise of sd SD (the default);
- ``smooth:F:SD_SMOOTH:SD_WHITE``: plus Gaussian noise drawn on an in-plane grid F times coarser,
  trilinearly upsampled and scaled to sd SD_SMOOTH, plus white noise of sd SD_WHITE;
- ``mix:A:SD``: A x the volume plus white noise of sd SD (A = 1 is ``white``, 0 is noise alone);
- ``warp:AMP:GRID:SD``: the volume displaced in-plane by a smooth random field (sd AMP voxels of
  the coarsest scale, drawn on a GRID x GRID lattice, trilinearly upsampled, the same in every
  slice), plus white noise of sd SD;
- ``affine:S:T:SD``: the volume scaled in-plane by 1 + N(0, S) per axis and shifted by N(0, T)
  voxels per axis, plus white noise of sd SD;
- ``model``: the package's own layouts with the model's sampling keys (``--max-correlation``
  replaces its ``train.sample_start_max_correlation``: layouts that give the scan back are drawn
  again, ``docs/realism.md`` §13).

Per model, start, noise factor (``train.sample_noise_factor``) and sampling seed: K samples from
the model's start scale, scored with the report's metrics; plus, per layout, its Pearson
correlation with the scan's own volume of the layout's scale (``layout_copies``: how many are
>= 0.98, i.e. the scan's arrangement given back). Rows are appended to ``--out``.jsonl as they are
measured and the markdown table is rewritten from all of them.

    python benchmarks/realism_layout_start.py models/3d-B models/3d-C \
        --starts white:2.5 warp:1:4:1.0 --factors 0.1 --seeds 0 1 --k 16 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realism_levers import append_row, realism_table, rewrite_table, score_samples  # noqa: E402

import ctgan.sample_start as sample_start  # noqa: E402
from ctgan import gpnn  # noqa: E402
from ctgan.checkpoint import load_trained  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402
from ctgan.sample import reconstruct, sample_volumes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STARTS = {"white": 1, "smooth": 3, "mix": 2, "warp": 3, "affine": 3, "model": 0}


def parse_start(text: str) -> tuple[str, list[float]]:
    kind, *values = text.split(":")
    if STARTS.get(kind) != len(values):
        raise SystemExit(
            f"a start is one of white:SD, smooth:F:SD_SMOOTH:SD_WHITE, mix:A:SD, "
            f"warp:AMP:GRID:SD, affine:S:T:SD, model; got {text!r}"
        )
    return kind, [float(v) for v in values]


def _resample(volume: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """``volume`` (D, H, W) read at the in-plane coordinates (gx, gy) in [-1, 1] (border)."""
    depth = volume.shape[0]
    zz = torch.linspace(-1, 1, depth)[:, None, None].expand_as(gx)
    grid = torch.stack([gx, gy, zz], dim=-1)[None]
    return F.grid_sample(
        volume[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[0, 0]


def perturbed_start(real: torch.Tensor, start: str, generator: torch.Generator) -> torch.Tensor:
    """The estimate a layout's PNN steps start from, for one sample (module docstring)."""
    kind, values = parse_start(start)
    if kind == "affine":  # the package's own zoomed and shifted start (train.sample_start_*)
        spread, shift, sd = values
        return gpnn.start_estimate(real, generator, sd, spread, shift)
    shape = tuple(real.shape)
    white = torch.randn(shape, generator=generator) * values[-1]
    if kind == "white":
        return real + white
    if kind == "mix":
        return values[0] * real + white
    if kind == "smooth":
        factor, sd = values[0], values[1]
        small = (shape[0], max(1, round(shape[1] / factor)), max(1, round(shape[2] / factor)))
        field = torch.randn(small, generator=generator)
        field = F.interpolate(field[None, None], size=shape, mode="trilinear", align_corners=True)
        field = field[0, 0] / field.std()
        return real + sd * field + white
    # warp: a smooth random in-plane displacement field
    zz, yy, xx = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    to_unit = torch.tensor([2 / (shape[2] - 1), 2 / (shape[1] - 1)])  # voxels -> [-1, 1]
    amplitude, lattice = values[0], int(values[1])
    field = torch.randn((1, 2, 1, lattice, lattice), generator=generator)
    field = F.interpolate(field, size=shape, mode="trilinear", align_corners=True)[0]
    gx = xx + field[0] * amplitude * to_unit[0]
    gy = yy + field[1] * amplitude * to_unit[1]
    return _resample(real, gx, gy) + white


def cached(layouts_of):
    """``layouts_of`` (a ``gpnn_layouts``) drawing each (model, scale, n, seed) once: sampling and
    the copy count use the same layouts."""
    drawn: dict[tuple, torch.Tensor] = {}

    def layouts(model, scale: int, n: int, seed: int) -> torch.Tensor:
        key = (id(model.real_volumes), scale, n, seed)
        if key not in drawn:
            drawn[key] = layouts_of(model, scale, n, seed)
        return drawn[key]

    return layouts


def layouts_from(start: str):
    """A stand-in for ``ctgan.sample_start.gpnn_layouts`` whose PNN steps start from ``start``
    (the model's gpnn section otherwise: patch, steps, alpha, search radius)."""

    def draw(model, scale: int, n: int, seed: int) -> torch.Tensor:
        options = gpnn.gpnn_options(model.config.gpnn)
        reals = [
            torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in model.real_volumes[:scale]
        ]
        steps = (options["iterations"], options["iterations"])  # as gpnn_layouts: no finest here
        radius = options["search_radius"]
        out = []
        for k in range(n):
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + k)
            estimate = perturbed_start(reals[0], start, generator)
            with torch.no_grad():  # _generate_one runs the PNN steps from this estimate
                layout = gpnn._generate_one(
                    reals,
                    estimate,
                    tuple(options["patch_size"]),
                    steps,
                    options["alpha"],
                    None if radius is None else tuple(radius),
                    options["chunk_size"],
                )
            out.append(layout.clamp(-1.0, 1.0))
        return torch.stack(out)[:, None]

    return cached(draw)


def table(rows: list[dict]) -> str:
    lead = {
        "model": lambda r: r["model"],
        "layout start": lambda r: r["start"],
        "noise ×": lambda r: f"{r['noise_factor']:g}",
        "seed": lambda r: r["seed"],
    }
    copies = ("layouts ≥ 0.98 corr. to the scan's", lambda r: f"{r['layout_copies']}/{r['k']}")
    return realism_table(rows, lead, copies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", nargs="+", type=Path, help="trained 3D model folders (gpnn start)"
    )
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--starts", nargs="+", default=["white:2.5"])
    parser.add_argument("--factors", type=float, nargs="+", default=[0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--k", type=int, default=16, help="samples per row (default 16)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--max-correlation",
        type=float,
        default=None,
        help="with the start 'model': the models' train.sample_start_max_correlation instead",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "realism_layout_start"
    )
    args = parser.parse_args(argv)
    for start in args.starts:
        parse_start(start)
    torch.set_num_threads(args.threads)
    real = np.asarray(load_pyramid(args.pyramid).volumes[-1], dtype=np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_suffix(".jsonl")
    original = sample_start.gpnn_layouts
    for folder in args.models:
        base = load_trained(folder)
        if args.max_correlation is not None:
            train = dataclasses.replace(
                base.config.train, sample_start_max_correlation=args.max_correlation
            )
            base = dataclasses.replace(base, config=dataclasses.replace(base.config, train=train))
        if base.config.train.sample_start_source != "gpnn":
            raise SystemExit(
                f"{folder}: samples start from {base.config.train.sample_start_source}"
            )
        scale = base.config.train.sample_start_scale
        layout_real = torch.as_tensor(np.asarray(base.real_volumes[scale - 1], dtype=np.float32))
        rec = reconstruct(base, precision="float32")
        for start in args.starts:
            for factor in args.factors:
                model = sample_start.with_sampling(base, noise_factor=factor)
                sample_start.gpnn_layouts = (
                    cached(original) if start == "model" else layouts_from(start)
                )
                try:
                    for seed in args.seeds:
                        began = time.perf_counter()
                        samples = sample_volumes(
                            model, args.k, seed=seed, progress=False, precision="float32"
                        )
                        seconds = (time.perf_counter() - began) / args.k
                        layouts = sample_start.gpnn_layouts(model, scale, args.k, seed)
                        correlation = [
                            gpnn.correlation(layout, layout_real) for layout in layouts[:, 0]
                        ]
                        row = {
                            "model": f"{folder.parent.name}/{folder.name}"
                            if folder.name.startswith("seed")
                            else folder.name,
                            "start": start
                            if start != "model"
                            else f"model (corr < {base.config.train.sample_start_max_correlation:g})",
                            "noise_factor": factor,
                            "seed": seed,
                            "k": args.k,
                            "threads": args.threads,
                            **score_samples(samples, real, rec),
                            "layout_copies": sum(c >= 0.98 for c in correlation),
                            "layout_max_correlation": max(correlation),
                            "seconds_per_sample": seconds,
                        }
                        append_row(jsonl, row)
                finally:
                    sample_start.gpnn_layouts = original
    rewrite_table(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
