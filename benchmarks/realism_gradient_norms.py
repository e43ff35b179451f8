"""The generator's and discriminator's gradient norms at every Adam step of one training run.

    python benchmarks/realism_gradient_norms.py 3d-C --pyramid ../luna/data/preprocessed \
        --precision bf16 --max-grad-norm 0 --seed 0 --threads 1

Trains one setting of ``--params`` (with ``train.precision`` and ``train.max_grad_norm`` set as
given) through ``ctgan.train.train_model`` and records, before each optimizer step, the total L2
norm of the gradients it is about to apply (after the clip, when ``max_grad_norm`` > 0, and the
norm before it). Which optimizer: each ``ScaleTrainer`` tags its ``opt_g`` as the generator's;
every other Adam step is the discriminator's. Writes ``--out``.jsonl (one row per step:
scale, role, norm before and after the clip) and ``--out``.md: per scale the median and 95th
percentile of G's and D's norms, the largest, how many G steps the clip bound, and the finest
scale's steps around its largest G norm, beside the reconstruction PSNR of the run's history.
Used in docs/realism.md §14 to see what a finest-scale collapse starts from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctgan.config import resolve_config  # noqa: E402
from ctgan.history import read_history  # noqa: E402
from ctgan.preprocess import load_pyramid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def total_norm(parameters) -> float:
    """The L2 norm of all the gradients of ``parameters`` together (those that have one)."""
    norms = [p.grad.norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting")
    parser.add_argument("--pyramid", type=Path, default=ROOT / "data" / "preprocessed")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--max-grad-norm", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", type=Path, default=ROOT / "benchmarks" / "models")
    parser.add_argument(
        "--segmenter", type=Path, default=ROOT / "models" / "segmenter" / "segmenter.pt"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gradient_norms")
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    params["settings"][args.setting].update(
        {"precision": args.precision, "max_grad_norm": args.max_grad_norm}
    )
    cfg = resolve_config(params, setting=args.setting)
    torch.set_num_threads(args.threads)
    segmenter = None
    if cfg.uses("segmentation"):
        from ctgan.segmenter import load_segmenter

        segmenter = load_segmenter(args.segmenter, "cpu")
    from ctgan import scale_trainer
    from ctgan.train import train_model

    rows: list[dict] = []  # one per Adam step, and one per clip (the norm before it)
    scales: list[int] = []  # the scale each ScaleTrainer trains, in the order they start
    original_init = scale_trainer.ScaleTrainer.__init__
    original_step = torch.optim.Adam.step
    original_clip = torch.nn.utils.clip_grad_norm_

    def init(self, context, state, seed):  # tag the generator's optimiser, note the scale
        original_init(self, context, state, seed)
        self.opt_g._ctgan_role = "G"
        scales.append(context.scale)

    def step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        role = getattr(self, "_ctgan_role", "D")
        lr = self.param_groups[0]["lr"]
        rows.append({"role": role, "norm": total_norm(params), "lr": lr, "scale": scales[-1]})
        return original_step(self, *args, **kwargs)

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        rows.append({"role": "G-before-clip", "norm": total_norm(parameters), "scale": scales[-1]})
        return original_clip(parameters, max_norm, *args, **kwargs)

    scale_trainer.ScaleTrainer.__init__ = init
    torch.optim.Adam.step = step
    torch.nn.utils.clip_grad_norm_ = clip
    name = f"{args.setting}-{args.precision}-clip{args.max_grad_norm:g}-seed{args.seed}"
    out_dir = args.models / f"gradient-norms-{name}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a finished run there would not train again
    try:
        train_model(cfg, load_pyramid(args.pyramid), out_dir, seed=args.seed, segmenter=segmenter)
    finally:
        torch.optim.Adam.step = original_step
        scale_trainer.ScaleTrainer.__init__ = original_init
        torch.nn.utils.clip_grad_norm_ = original_clip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = read_history(out_dir)
    psnr = history.groupby("scale")["rec_psnr"].last().round(2).tolist()
    lines = [
        f"# Gradient norms per Adam step: {args.setting}, {args.pyramid}, {args.precision}, "
        f"max_grad_norm {args.max_grad_norm:g}, training seed {args.seed}",
        "",
        f"`benchmarks/realism_gradient_norms.py`; final reconstruction PSNR per scale: "
        f"{' / '.join(map(str, psnr))} dB.",
        "",
        "| scale | G steps | G median | G p95 | G max | D median | D max | G steps clipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    before = [r for r in rows if r["role"] == "G-before-clip"]
    steps = [r for r in rows if r["role"] in ("G", "D")]
    for s in sorted({r["scale"] for r in steps}):
        g = [r["norm"] for r in steps if r["scale"] == s and r["role"] == "G"]
        d = [r["norm"] for r in steps if r["scale"] == s and r["role"] == "D"]
        clipped = sum(
            1
            for r in before
            if r["scale"] == s and args.max_grad_norm and r["norm"] > args.max_grad_norm
        )
        lines.append(
            f"| {s} | {len(g)} | {statistics.median(g):.1f} | {sorted(g)[int(0.95 * len(g))]:.1f} "
            f"| {max(g):.1f} | {statistics.median(d):.2f} | {max(d):.2f} | {clipped} |"
        )
    finest = max(r["scale"] for r in steps)
    gs, ds = cfg.train.g_steps, cfg.train.d_steps
    # the norms the G steps computed: before the clip where there is one
    g = [r["norm"] for r in (before or steps) if r["scale"] == finest and r["role"] != "D"]
    d = [r["norm"] for r in steps if r["scale"] == finest and r["role"] == "D"]
    top = max(range(len(g)), key=g.__getitem__) // gs
    lines += [
        "",
        f"Finest scale, iterations around its largest G norm ({gs} G steps, then {ds} D steps; "
        "G norms before any clip):",
        "",
        "| iteration | G norms | D norms |",
        "|---|---|---|",
    ]
    for it in range(max(0, top - 5), min(len(g) // gs, top + 4)):
        lines.append(
            f"| {it} | {' / '.join(f'{x:.1f}' for x in g[gs * it : gs * (it + 1)])} "
            f"| {' / '.join(f'{x:.2f}' for x in d[ds * it : ds * (it + 1)])} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
