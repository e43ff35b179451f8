"""The ``ctgan`` command: ``ctgan phantom``, ``ctgan sample``, ``ctgan info``, ``ctgan study``, ...

Each subcommand is a small ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
that checks them and calls the package. Bad input exits with status 2 and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ctgan import __version__

log = logging.getLogger("ctgan")


class UsageError(Exception):
    """Bad input from the command line; reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctgan",
        description="CT-GAN: learn a multi-scale GAN from one chest CT scan and generate new volumes.",
    )
    parser.add_argument("--version", action="version", version=f"ctgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# --- subcommands (each issue adds its own) ---------------------------------------------------

_SUBCOMMANDS: list = []


_MODEL_DIR_HELP = "a seed folder holding checkpoint.pt, or a setting folder with one seed<k>/"


def _resolve_cli_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is bad input."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but CUDA is not available; use --device cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _load_model_for_cli(model_dir: str, device: str):  # -> ctgan.train.TrainedModel
    """Load a model folder (a seed folder, or a setting folder holding one seed), turning every
    way it can fail into one clear line."""
    from ctgan.train import load_trained

    try:
        return load_trained(model_dir, device=device)
    except FileNotFoundError:
        raise
    except ValueError as err:  # torch's load errors span lines: keep the report to one
        raise UsageError(" ".join(str(err).split())) from err
    except Exception as err:  # a foreign or damaged checkpoint: torch/pickle/key errors of any kind
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageError(
            f"{model_dir} could not be loaded as a ctgan model ({type(err).__name__}: {detail}); "
            f"retrain it with this version of ctgan"
        ) from err


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate volumes from a trained model and export them (.nii.gz / .mha, int16 HU)",
        description=(
            "Generate N volumes from a trained model folder (models/<model>-<setting>/seed<k>) and "
            "write them as int16 HU with the source scan's spacing, origin and direction. "
            "--scale Z Y X resizes every noise map (a 1.5 z factor gives a 1.5x deeper volume at "
            "the same spacing); --inject-from FILE --inject-scale n starts the pyramid at scale n "
            "from FILE, keeping its coarse structure."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help=_MODEL_DIR_HELP)
    p.add_argument("--n", type=int, default=1, help="number of volumes (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--format", choices=("nii.gz", "mha"), default="nii.gz", help="file format")
    p.add_argument(
        "--scale",
        nargs=3,
        type=float,
        default=(1.0, 1.0, 1.0),
        metavar=("Z", "Y", "X"),
        help="size factor per axis (default 1 1 1)",
    )
    p.add_argument("--inject-from", metavar="FILE", help="3D scan in HU (.mhd/.mha/.nii.gz)")
    p.add_argument("--inject-scale", type=int, metavar="n", help="scale to inject at (1..S-1)")
    p.add_argument(
        "--start-scale",
        type=int,
        metavar="k",
        help="scale random samples start at: 0 = pure noise, k > 0 = the real volume of scale "
        "k-1 with fresh noise above (default: the model's train.sample_start_scale)",
    )
    p.add_argument(
        "--start-source",
        choices=("real", "gpnn"),
        help="what samples from a start scale k > 0 start from: the real volume of scale k-1, or "
        "one GPNN layout of the scan's patches per sample (default: the model's "
        "train.sample_start_source; docs/realism.md)",
    )
    p.add_argument(
        "--start-noise-sd",
        type=float,
        metavar="SD",
        help="with --start-source gpnn: sd of the noise the layouts start from; more = more "
        "varied (default: the model's train.sample_start_noise_sd)",
    )
    p.add_argument(
        "--noise-factor",
        type=float,
        metavar="F",
        help="noise amplitudes at and above the start scale times F; less = more faithful, less "
        "varied (default: the model's train.sample_noise_factor)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of the same names in --out (without it, existing files are refused)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="volumes per forward pass")
    p.add_argument(
        "--with-masks",
        action="store_true",
        help="also write each volume's lung and nodule masks (<name>_lungs, <name>_nodules: "
        "uint8 label maps of the same geometry) from the frozen segmenter",
    )
    p.add_argument(
        "--segmenter",
        metavar="FILE",
        help="segmenter weights for --with-masks (default: models/segmenter/segmenter.pt "
        "beside the model folder)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bf16"),
        default="auto",
        help="bf16 autocast (about 2x faster) or float32; auto = bf16 where the device computes "
        "it natively (AVX512-BF16/AMX CPU, bf16 GPU), else float32",
    )
    p.set_defaults(run=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctgan import sample as sampling
    from ctgan.io import ensure_writable_dir
    from ctgan.sample_start import with_sampling

    # Every check first: nothing is generated or written until all input is known to be good.
    if args.n < 1:
        raise UsageError(f"--n must be >= 1; got {args.n}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0; got {args.seed}")
    if (args.inject_from is None) != (args.inject_scale is None):
        raise UsageError("--inject-from and --inject-scale go together; give both or neither")
    injecting = args.inject_from is not None
    if injecting and args.start_scale is not None:
        raise UsageError(
            "--start-scale cannot be combined with --inject-from (injection starts at "
            "--inject-scale from the given volume)"
        )
    if injecting and tuple(args.scale) != (1.0, 1.0, 1.0):
        raise UsageError(
            "--scale cannot be combined with --inject-from (injection keeps the training size)"
        )
    device = _resolve_cli_device(args.device)
    precision = sampling.resolve_precision(args.precision, device)
    model = _load_model_for_cli(args.model_dir, device)
    shape = sampling.output_shape(model, args.scale)
    spacing = sampling.output_spacing_zyx_mm(model, args.scale)
    start_volume = None
    start_options = (args.start_source, args.start_noise_sd, args.noise_factor)
    if injecting and any(option is not None for option in start_options):
        raise UsageError(
            "--start-source, --start-noise-sd and --noise-factor are for random samples; "
            "injection starts from --inject-from with the model's trained noise"
        )
    if not injecting:
        try:
            sampling.resolve_start_scale(model, args.start_scale, args.scale)
            model = with_sampling(model, *start_options)
        except ValueError as err:
            raise UsageError(str(err)) from err
    if injecting:
        sampling.check_injection_scale(model, args.inject_scale)
        start_volume = sampling.read_injection_volume(args.inject_from, model)
    _check_sampling_memory(model, args, shape, device, precision)
    segmenter = _check_provenance_and_masks(model, args, device)
    stem = f"inject{args.inject_scale}_seed{args.seed}" if injecting else f"sample_seed{args.seed}"
    names = [f"{stem}_{i:03d}.{args.format}" for i in range(args.n)]
    if segmenter is not None:
        from ctgan.masks import mask_paths

        names += [p.name for name in names[: args.n] for p in mask_paths(name).values()]
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder; give a folder to write into")
    existing = [name for name in names if (Path(args.out) / name).exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(
            f"--out {args.out} already holds {existing[0]}{more}; give another --out or --seed, "
            f"or --overwrite to replace them"
        )
    out_dir = ensure_writable_dir(args.out)  # PermissionError: reported by main

    common = {
        "n": args.n,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "progress": args.n > 1,
        "precision": precision,
    }
    if injecting:
        volumes = sampling.inject(model, start_volume, args.inject_scale, **common)
    else:
        volumes = sampling.sample_volumes(
            model, scale=args.scale, start_scale=args.start_scale, **common
        )
    paths = [Path(out_dir) / name for name in names[: args.n]]
    written = _write_samples(model, volumes, paths, args, segmenter)
    if segmenter is not None:
        dice = [result["lung_dice"] for result in written]
        print(
            f"paired masks: lung Dice of the segmenter vs the classical threshold mask "
            f"(ctgan.preprocess.compute_lung_mask) mean {sum(dice) / len(dice):.3f}, "
            f"min {min(dice):.3f} over {len(dice)} volume(s)",
            file=sys.stderr,
        )
    spacing_text = " x ".join(f"{v:g}" for v in spacing)
    print(
        f"wrote {len(volumes)} volume(s) of shape (z, y, x) {shape}, spacing {spacing_text} mm, "
        f"to {out_dir} ({precision} on {device})",
        file=sys.stderr,
    )
    return 0


def _check_provenance_and_masks(model, args: argparse.Namespace, device: str):
    """Before any work: the provenance fits the format's header, and with --with-masks the
    segmenter loads (the segmenter, else None)."""
    from ctgan.masks import default_segmenter_path, load_mask_segmenter
    from ctgan.provenance import model_provenance, nifti_fields

    if args.format == "nii.gz":  # the last sample has the longest index
        last = model_provenance(
            model,
            args.seed,
            args.n - 1,
            inject_scale=args.inject_scale,
            scale=tuple(args.scale),
            start_scale=args.start_scale,
        )
        nifti_fields(last)
    if not args.with_masks:
        if args.segmenter is not None:
            raise UsageError("--segmenter is only used with --with-masks; add --with-masks")
        return None
    path = args.segmenter or default_segmenter_path(model)
    return load_mask_segmenter(path, device)


def _write_samples(model, volumes, paths, args: argparse.Namespace, segmenter):
    """Write the volumes (and, with a segmenter, their masks) with their provenance; print every
    path written."""
    from ctgan.masks import write_samples

    written = write_samples(
        model,
        volumes,
        paths,
        args.seed,
        scale=tuple(args.scale),
        inject_scale=args.inject_scale,
        start_scale=args.start_scale,
        segmenter=segmenter,
    )
    for result in written:
        for key in ("volume", "lungs", "nodules"):
            if key in result:
                print(result[key])
    return written


def _check_sampling_memory(model, args: argparse.Namespace, shape, device: str, precision: str):
    """Refuse a request whose estimated peak memory exceeds what the machine has available."""
    from ctgan import memory
    from ctgan import sample as sampling

    config = model.config
    channels = (
        config.train.generator_channels
        if config.model == "3d"
        else config.train.slice_generator_channels
    )
    needed = memory.sampling_bytes(
        shape,
        levels=sampling.scaled_shapes(model, args.scale),
        channels=channels,
        model=config.model,
        n=args.n,
        batch_size=args.batch_size,
        precision=precision,
        device=device,
    )
    available = memory.available_bytes(device)
    if needed > available:
        factors = " ".join(f"{v:g}" for v in args.scale)
        raise UsageError(
            f"--scale {factors} with --n {args.n} gives volumes of (z, y, x) {tuple(shape)} and "
            f"needs about {needed / memory.GIB:.2f} GiB of memory; this machine has "
            f"{available / memory.GIB:.2f} GiB available ({device}); lower --scale, --n or "
            f"--batch-size"
        )


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a trained model folder, or a volume file's provenance",
        description=(
            "Print what a model folder holds: model, setting, profile, every scale's shape and "
            "spacing, the training scan, and its metrics when found (metrics.json in the folder, "
            "else the pipeline's metrics/<model>-<setting>.json three levels up). Given a volume "
            "file (.nii.gz, .mha, .mhd, .nii, .nrrd), print the ctgan provenance in its header "
            "(synthetic: model, setting, seeds, version, source seriesuid), or that it has none."
        ),
    )
    p.add_argument(
        "model_dir", metavar="MODEL_DIR|FILE", help=f"{_MODEL_DIR_HELP}; or a volume file"
    )
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctgan.sample import GEOMETRY_SUFFIXES, describe_model

    if Path(args.model_dir).is_file() and args.model_dir.lower().endswith(GEOMETRY_SUFFIXES):
        from ctgan.provenance import describe_file

        print(describe_file(args.model_dir))  # a volume: its ctgan provenance, or none
        return 0
    model = _load_model_for_cli(args.model_dir, "cpu")
    print(describe_model(model))
    return 0


_SUBCOMMANDS += [_add_sample, _add_info]


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "phantom",
        help="write synthetic chest CT scans in the LUNA16 layout",
        description=(
            "Write N synthetic chest CT scans in the LUNA16 layout (subset0/<uid>.mhd + .raw, "
            "annotations.csv, candidates.csv, seg-lungs-LUNA16/). An existing phantom in OUT_DIR "
            "is replaced; a non-empty folder that is not a phantom is refused unless --force."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if needed)")
    parser.add_argument("--scans", type=int, default=4, help="number of scans (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=256, help="in-plane voxels (default 256)")
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty folder that is not a phantom"
    )
    parser.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from ctgan.phantom import write_phantom_dataset

    if args.scans < 1:
        raise UsageError(f"--scans must be >= 1; got {args.scans}")
    if not 0 <= args.seed < 10**6:
        raise UsageError(f"--seed must be in [0, 999999]; got {args.seed}")
    if not 32 <= args.size <= 1024:
        raise UsageError(f"--size must be in [32, 1024] voxels; got {args.size}")
    uids = write_phantom_dataset(
        args.out_dir, scans=args.scans, seed=args.seed, size=args.size, force=args.force
    )
    print(f"wrote {len(uids)} phantom scan(s) to {args.out_dir}")
    for uid in uids:
        print(uid)
    return 0


_SUBCOMMANDS += [_add_phantom]


def _add_check_params(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "check-params",
        help="check the whole of params.yaml (every key, profile and setting) before a run",
        description=(
            "Validate PARAMS (default params.yaml): unknown keys anywhere, wrong types, an unknown "
            "profile or setting. `make repro` runs it before `dvc repro`; the DVC stage "
            "check_params runs it whenever params.yaml changes."
        ),
    )
    parser.add_argument("params", nargs="?", default="params.yaml", metavar="PARAMS")
    parser.set_defaults(run=_run_check_params)


def _run_check_params(args: argparse.Namespace) -> int:
    from ctgan.config import check_params_file

    summary = check_params_file(args.params)
    print(
        f"{args.params}: valid (profile {summary['profile']}, {summary['settings']} settings, "
        f"{summary['profiles']} profiles)"
    )
    return 0


_SUBCOMMANDS += [_add_check_params]


def _add_study(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "study",
        help="run many trainings (one model per scan, a sweep) and aggregate their metrics",
        description=(
            "Run the study of STUDY_PARAMS (e.g. studies/many-scans/params.yaml): preprocess its "
            "scans once, train and evaluate every (scan, setting, grid point, seed) not finished "
            "yet on the executor of its executor: section, wait, write results/. Rerunning skips "
            "finished jobs and resumes unfinished ones after their last finished scale."
        ),
    )
    parser.add_argument("study_params", metavar="STUDY_PARAMS")
    parser.add_argument(
        "--executor", choices=("local", "slurm"), help="override executor.kind of the study file"
    )
    parser.set_defaults(run=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from ctgan.executors import run_study

    try:
        paths = run_study(args.study_params, kind=args.executor)
    except RuntimeError as err:  # jobs that did not finish: their names and where the logs are
        print(f"ctgan study: error: {err}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


_SUBCOMMANDS += [_add_study]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:  # like argparse's own errors: usage and one line on stderr, exit 2
        parser.print_usage(sys.stderr)
        commands = ", ".join(
            a.__name__.removeprefix("_add_").replace("_", "-") for a in _SUBCOMMANDS
        )
        print(
            f"ctgan: error: a command is required (one of {commands}); see ctgan --help",
            file=sys.stderr,
        )
        return 2
    try:
        return int(args.run(args) or 0)
    except (
        UsageError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
    ) as err:
        print(f"ctgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`ctgan info ... | head`): not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
