"""The evaluate stage: every metric of :mod:`ctgan.metrics` for every seed of one model-setting.

``evaluate_model(models/<model>-<setting>, pyramid, segmenter, K, seed)`` loads each
``seed<k>/`` folder, draws K random samples (``ctgan.sample.sample_volumes``) and the
reconstruction (``ctgan.sample.reconstruct``), computes the registry's metrics against the
finest scale of the training pyramid, and summarises every value as mean ± sd over seeds.

The result (``write_metrics`` -> ``metrics/<model>-<setting>.json``)::

    {"name": "3d-D", "model": "3d", "setting": "D", "profile": "cpu",
     "num_samples": K, "seeds": [0, 1, 2], "sampling_seed": 0,
     "mse": mean, "psnr": mean, "ssim": mean,          # the paper's numbers, flat for `dvc metrics show`
     "reconstruction": {"mse": {"mean": .., "sd": .., "per_seed": [..]}, "psnr": {...}, ...},
     "realism": {"hu_wasserstein": {...}, "frechet_axial": {...}, "lung_fraction": {...}, ...},
     "anatomy": {"lung_fraction_of_body": {...}, "lung_fraction_of_body_real": {...}, ...},
     "diversity": {"diversity": {...}, "voxel_sd_hu": {...}},
     "memorisation": {"max_ssim_to_training": {...}, "copies_of_training": {...}, ...},
     "verdict": {"chest_like_count": {...}, "chest_like_of": {...}, "passes": {...}, ...},
     "per_sample": {"chest_like": [[K values of seed 0], [K values of seed 1], ...], ...},
     "config": {"profile": "cpu", "setting": "3d-D", "terms": [...], "pyramid": {...},
                "train": {...}, "loss_weights": {...}},   # the training procedure of the model
     "notes": {...}}                                   # how the metrics were computed

``sd`` is the sample standard deviation over seeds (ddof 1), 0 for a single seed. ``per_sample``
keeps every sample's anatomy values and chest-like flag, one list per seed, in sample order
(sample *i* of a seed is the *i*-th of ``sample_volumes(model, K, seed=sampling_seed)``).
``config`` is the first seed's resolved config without the data and evaluate sections, so that
a report can say which training procedure produced the numbers.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ctgan import anatomy
from ctgan.features import SegmenterLike
from ctgan.io import write_json
from ctgan.metrics import FAMILIES, PER_SAMPLE, MetricInputs, compute_metrics
from ctgan.sample import reconstruct, sample_volumes
from ctgan.similarity import MEMORISATION_SSIM_THRESHOLD, PSNR_CAP_DB

log = logging.getLogger(__name__)

SEED_FOLDER = re.compile(r"^seed(\d+)$")
FLAT_METRICS = ("mse", "psnr", "ssim")


class PyramidLike(Protocol):
    """What evaluation reads from ``ctgan.preprocess.TrainingPyramid``."""

    volumes: list[np.ndarray]  # (D, H, W) in [-1, 1], coarsest first
    spacings_zyx_mm: list[tuple[float, float, float]]


def seed_folders(model_dir: str | Path) -> list[tuple[int, Path]]:
    """``(k, model_dir/seed<k>)`` for every seed folder holding a checkpoint, sorted by k."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model folder {model_dir} not found; run the train stage for this setting first"
        )
    found = []
    for child in model_dir.iterdir():
        match = SEED_FOLDER.match(child.name)
        if match and child.is_dir() and (child / "checkpoint.pt").is_file():
            found.append((int(match.group(1)), child))
    if not found:
        raise FileNotFoundError(
            f"{model_dir} holds no seed<k>/checkpoint.pt; run the train stage for this setting "
            f"(models/<model>-<setting>/seed<k>/) first"
        )
    return sorted(found)


def _load_trained(folder: Path, device: str) -> Any:
    from ctgan.train import load_trained

    return load_trained(folder, device=device)


def evaluate_trained(
    model: Any,
    real: np.ndarray,
    spacing_zyx_mm: tuple[float, float, float],
    segmenter: SegmenterLike | None,
    num_samples: int,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Every registered metric of one trained model (``ctgan.train.TrainedModel``), by family.

    ``real`` is the finest training volume (D, H, W) in [-1, 1]. Without a segmenter the Fréchet
    metrics are left out and the lungs come from HU thresholds.
    """
    metrics, _ = _evaluate_trained(
        model, real, spacing_zyx_mm, segmenter, num_samples, seed, device, progress
    )
    return metrics


def _evaluate_trained(
    model: Any,
    real: np.ndarray,
    spacing_zyx_mm: tuple[float, float, float],
    segmenter: SegmenterLike | None,
    num_samples: int,
    seed: int,
    device: str,
    progress: bool,
    layout_cache: str | Path | None = None,
) -> tuple[dict[str, dict[str, float]], MetricInputs]:
    """``evaluate_trained``'s metrics and the inputs they were computed on (the samples and the
    reconstruction, which the evaluate notebook's figures show without drawing them again)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(
            f"num_samples must be an integer >= 2 (diversity needs pairs); got {num_samples!r}"
        )
    finest = tuple(int(v) for v in model.scale_shapes[-1])
    if finest != tuple(real.shape):
        raise ValueError(
            f"the model's finest scale {finest} differs from the training volume's {real.shape}; "
            f"evaluate against the pyramid the model was trained on (data/preprocessed)"
        )
    # float32 whatever the machine: the metrics must not depend on its bf16 support
    samples = sample_volumes(
        model,
        num_samples,
        seed=seed,
        batch_size=1,
        device=device,
        progress=progress,
        precision="float32",
        layout_cache=layout_cache,
    )  # (K, D, H, W)
    inputs = MetricInputs(
        real=np.asarray(real, dtype=np.float32),
        reconstruction=reconstruct(model, precision="float32"),
        samples=samples,
        spacing_zyx_mm=tuple(float(v) for v in spacing_zyx_mm),  # type: ignore[arg-type]
        segmenter=segmenter,
        device=device,
    )
    return compute_metrics(inputs), inputs


def summarise_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """``{family: {name: {"mean", "sd", "per_seed"}}}`` over seeds (sd with ddof 1, 0 for one);
    the per-sample lists become ``{"per_sample": {name: [list of seed 0, list of seed 1, ...]}}``."""
    if not per_seed:
        raise ValueError("summarise_seeds needs the metrics of at least one seed; got none")
    summary: dict[str, dict[str, Any]] = {}
    for family, values in per_seed[0].items():
        if family == PER_SAMPLE:
            summary[family] = {
                name: [list(result[family][name]) for result in per_seed] for name in values
            }
            continue
        summary[family] = {}
        for name in values:
            series = [float(result[family][name]) for result in per_seed]
            summary[family][name] = {
                "mean": float(np.mean(series)),
                "sd": float(np.std(series, ddof=1)) if len(series) > 1 else 0.0,
                "per_seed": series,
            }
    return summary


def result_from_summary(
    header: dict[str, Any],
    summary: dict[str, dict[str, Any]],
    segmenter: SegmenterLike | None,
    before_notes: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics file's layout (module docstring): ``header`` (name, model, setting, ...), the
    flat paper metrics, every family, the per-sample values, ``before_notes`` and the notes on how
    it was computed (``notes`` added to the common ones). Shared by the GANs and the GPNN stage."""
    result = dict(header)
    result.update({m: summary["reconstruction"][m]["mean"] for m in FLAT_METRICS})
    result.update({family: summary.get(family, {}) for family in FAMILIES})
    result[PER_SAMPLE] = summary.get(PER_SAMPLE, {})
    result.update(before_notes or {})
    result["notes"] = {
        "scale": "reconstruction metrics on [0, 1] = (HU + 1000) / 2000 of the finest scale",
        **(notes or {}),
        "psnr_cap_db": PSNR_CAP_DB,
        "lung_method": "threshold" if segmenter is None else "segmenter",
        "frechet_features": (
            "not computed (no segmenter)"
            if segmenter is None
            else "frozen segmenter encoder (CT-specific; not comparable with Inception SIFID/FID)"
        ),
        "memorisation_ssim_threshold": MEMORISATION_SSIM_THRESHOLD,
        "chest_like_criteria": chest_like_criteria(),
    }
    return result


def evaluate_model(
    model_dir: str | Path,
    pyramid: PyramidLike,
    segmenter: SegmenterLike | None,
    num_samples: int,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every ``seed<k>/`` of ``model_dir`` and summarise as mean ± sd over seeds.

    ``pyramid``: the training pyramid (its finest volume and spacing are the reference);
    ``segmenter``: the frozen segmenter (``ctgan.segmenter.load_segmenter``), or None to skip the
    Fréchet metrics; ``num_samples`` = K random samples per seed, drawn with ``seed``.
    Returns the JSON layout of the module docstring.
    """
    return evaluate_model_samples(
        model_dir, pyramid, segmenter, num_samples, seed, device, progress
    )[0]


def evaluate_model_samples(
    model_dir: str | Path,
    pyramid: PyramidLike,
    segmenter: SegmenterLike | None,
    num_samples: int,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    layout_cache: str | Path | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``evaluate_model``'s result with the first seed's K samples ``(K, D, H, W)`` and its
    reconstruction ``(D, H, W)``, in [-1, 1]: the very volumes the metrics scored (float32,
    ``seed``), for the figures (as ``ctgan.baseline.evaluate_gpnn`` returns the GPNN's).
    ``layout_cache``: a folder that keeps the samples' GPNN layouts for the other settings'
    evaluations (``ctgan.sample_start.gpnn_layouts``; the same volumes either way)."""
    folders = seed_folders(model_dir)
    real = np.asarray(pyramid.volumes[-1], dtype=np.float32)
    spacing = tuple(float(v) for v in pyramid.spacings_zyx_mm[-1])
    per_seed = []
    config = None
    first: MetricInputs | None = None
    for k, folder in folders:
        log.info("evaluating %s (seed %d): %d samples", folder, k, num_samples)
        model = _load_trained(folder, device)
        config = model.config
        metrics, inputs = _evaluate_trained(
            model,
            real,
            spacing,  # type: ignore[arg-type]
            segmenter,
            num_samples,
            seed,
            device,
            progress,
            layout_cache,
        )
        per_seed.append(metrics)
        if first is None:
            first = inputs
    assert config is not None and first is not None
    summary = summarise_seeds(per_seed)
    name = config.setting or Path(model_dir).name
    result: dict[str, Any] = {
        "name": name,
        "model": config.model,
        "setting": name.split("-")[-1],
        "profile": config.profile,
        "num_samples": num_samples,
        "seeds": [k for k, _ in folders],
        "sampling_seed": seed,
        "scale_shape": list(real.shape),
    }
    result = result_from_summary(
        result, summary, segmenter, before_notes={"config": training_procedure(config)}
    )
    check_finite(result)
    return result, first.samples, first.reconstruction


def training_procedure(config: Any) -> dict[str, Any]:
    """What produced a model: its resolved config (``Config.to_dict()``) without the data and
    evaluate sections, the GPNN baseline's and the downstream check's (profile, setting, terms,
    pyramid, train, loss weights, segmenter)."""
    values = dict(config.to_dict())
    for key in ("data", "evaluate", "gpnn", "downstream"):
        values.pop(key, None)
    return values


def chest_like_criteria() -> dict[str, float]:
    """The chest-like criteria and model checks of ``ctgan.anatomy``, as recorded in a result."""
    return {
        "body_threshold_hu": anatomy.BODY_THRESHOLD_HU,
        "lung_threshold_hu": anatomy.LUNG_THRESHOLD_HU,
        "lung_side_min_fraction_of_body": anatomy.LUNG_SIDE_MIN_FRACTION,
        "lung_fraction_tolerance": anatomy.CHEST_LUNG_FRACTION_TOLERANCE,
        "tissue_l1_max": anatomy.CHEST_TISSUE_L1_MAX,
        "body_w1_max_hu": anatomy.CHEST_BODY_W1_MAX_HU,
        "chest_like_min_share": anatomy.CHEST_LIKE_MIN_SHARE,
        "diversity_min": anatomy.DIVERSITY_MIN,
        "max_ssim_to_training_below": anatomy.MAX_SSIM_TO_TRAINING,
    }


def check_finite(result: dict[str, Any]) -> None:
    """Raise ValueError naming the first metric whose mean over seeds is not finite."""
    for family in FAMILIES:
        for name, entry in result.get(family, {}).items():
            if not math.isfinite(entry["mean"]):
                raise ValueError(
                    f"metric {family}.{name} is not finite ({entry['mean']}); the samples or the "
                    f"reconstruction are degenerate: check the training history of this model"
                )


def write_metrics(path: str | Path, result: dict[str, Any]) -> Path:
    """Write an :func:`evaluate_model` result as JSON, atomically (parent folders created)."""
    missing = [
        key for key in ("num_samples", "seeds", *FLAT_METRICS, *FAMILIES) if key not in result
    ]
    if missing:
        raise ValueError(
            f"metrics result lacks {', '.join(missing)}; pass the dict evaluate_model returns"
        )
    return write_json(path, result)


def metrics_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per metric of an :func:`evaluate_model` result: family, metric, mean, sd, per seed."""
    rows = [
        {
            "family": family,
            "metric": name,
            "mean": entry["mean"],
            "sd": entry["sd"],
            "per_seed": entry["per_seed"],
        }
        for family in FAMILIES
        for name, entry in result.get(family, {}).items()
    ]
    if not rows:
        raise ValueError(
            f"result holds none of the families {', '.join(FAMILIES)}; pass the dict "
            f"evaluate_model returns"
        )
    return pd.DataFrame(rows)


def anatomy_summary(result: dict[str, Any]) -> pd.DataFrame:
    """The anatomy family of an :func:`evaluate_model` result beside the training volume's own
    values: one row per quantity, columns ``samples`` (mean over samples, mean over seeds),
    ``sd over seeds`` and ``real`` (the training volume judged against itself)."""
    values = result.get("anatomy", {})
    names = [name for name in values if not name.endswith("_real")]
    if not names:
        raise ValueError(
            "result holds no anatomy family; pass the dict evaluate_model returns (written by "
            "this version of ctgan.evaluate)"
        )
    return pd.DataFrame(
        {
            "samples": [values[n]["mean"] for n in names],
            "sd over seeds": [values[n]["sd"] for n in names],
            "real": [values.get(f"{n}_real", {}).get("mean", math.nan) for n in names],
        },
        index=pd.Index(names, name="quantity"),
    )


def per_sample_table(result: dict[str, Any], seed_index: int = 0) -> pd.DataFrame:
    """Every sample of one seed (rows, in sample order) with its anatomy values and chest-like
    flag (columns), from an :func:`evaluate_model` result's ``per_sample``."""
    per_sample = result.get(PER_SAMPLE, {})
    if not per_sample:
        raise ValueError("result holds no per_sample values; pass the dict evaluate_model returns")
    seeds = len(next(iter(per_sample.values())))
    if not 0 <= seed_index < seeds:
        raise ValueError(f"seed_index must be in [0, {seeds - 1}]; got {seed_index}")
    frame = pd.DataFrame({name: lists[seed_index] for name, lists in per_sample.items()})
    frame.index.name = "sample"
    return frame
