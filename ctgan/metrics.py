"""The metrics registry: every metric a trained model is scored with, by family.

Six families, every metric registered in :data:`METRICS` with its formula, range and good value:

- ``reconstruction``: the paper's numbers (``ctgan.similarity``): MSE, PSNR (peak 1), SSIM in 3D
  and per plane of the finest-scale reconstruction ``G(z_rec)`` against the real training
  volume, on the paper's scale [0, 1] = (HU + 1000) / 2000.
- ``realism``: K random samples against the real volume: HU distribution inside the body
  (Wasserstein-1, ``ctgan.anatomy``), per-plane Fréchet distance on the frozen segmenter's
  encoder features (``ctgan.features``), lung fraction and lung volume of the whole volume, and the
  Dice of the paired lung masks against the threshold lungs (``ctgan.masks``: how far to trust
  ``ctgan sample --with-masks``; opt-in, :data:`OPT_IN`).
- ``anatomy``: what each sample holds (``ctgan.anatomy``): body, lung fraction of the body, lungs
  on both sides, tissue-class fractions and their L1 distance to the real's, body HU W1, and
  whether it is chest-like; the mean over samples under each name, the real volume's own value
  under ``<name>_real``.
- ``diversity``: how different the K samples are from each other (``ctgan.similarity``).
- ``memorisation``: how close each sample is to the training volume and to its own model's
  reconstruction (``ctgan.similarity``).
- ``verdict``: how many of the K samples are chest-like, and the model-level checks
  (``ctgan.anatomy.model_verdict``: enough chest-like samples, diverse, no copies).

Each registry entry's ``compute`` takes one :class:`MetricInputs` (the real volume, the
reconstruction, the samples, the voxel spacing and the segmenter) and returns a float or a flat
``dict[str, float]``; an entry may also keep per-sample values (``per_sample``: name -> K floats,
in sample order). :func:`compute_metrics` runs them all::

    compute_metrics(MetricInputs(real, reconstruction, samples, spacing_zyx_mm, segmenter))
    -> {family: {name: float}, ..., "per_sample": {name: [K floats]}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from ctgan import anatomy
from ctgan.features import SegmenterLike, frechet_plane, lung_masks_segmenter
from ctgan.intensity import network_to_hu, network_to_paper
from ctgan.similarity import (
    PLANES,
    as_array,
    diversity,
    memorisation,
    mse,
    psnr,
    same_shape,
    ssim_3d,
    ssim_plane,
    voxel_sd_hu,
)

FAMILIES = ("reconstruction", "realism", "anatomy", "diversity", "memorisation", "verdict")
PER_SAMPLE = "per_sample"  # the key of per-sample values in compute_metrics' result


def lung_statistics(name: str, sample_values: np.ndarray, real_value: float) -> dict[str, float]:
    """A per-sample lung quantity summarised as ``{name: mean over samples, name_samples_sd,
    name_real: the real volume's value, name_difference: mean - real}``."""
    mean = float(np.mean(sample_values))
    return {
        name: mean,
        f"{name}_samples_sd": float(np.std(sample_values)),
        f"{name}_real": float(real_value),
        f"{name}_difference": mean - float(real_value),
    }


# ---------------------------------------------------------------------------------------------
# The inputs of one trained model.


@dataclass(frozen=True)
class MetricInputs:
    """Everything the registry's metrics read, for one trained model (one seed).

    ``real`` (D, H, W), ``reconstruction`` (D, H, W) and ``samples`` (K, D, H, W) are in the
    networks' range [-1, 1] (``ctgan.intensity``), numpy or torch (stored as float32 numpy);
    ``spacing_zyx_mm`` is the finest scale's voxel spacing. Without a segmenter the Fréchet
    metrics cannot be computed and the realism family's lungs come from HU thresholds
    (``ctgan.anatomy.lung_mask``; the anatomy family always uses them). Values that several
    metrics share (the anatomy comparison, diversity, memorisation) are computed once.
    """

    real: np.ndarray
    reconstruction: np.ndarray
    samples: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    segmenter: SegmenterLike | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        real = as_array("real", self.real, 3)
        reconstruction = as_array("reconstruction", self.reconstruction, 3)
        samples = as_array("samples", self.samples, 4)
        same_shape("reconstruction", reconstruction, "real", real)
        same_shape("samples[0]", samples[0], "real", real)
        if samples.shape[0] < 2:
            raise ValueError(f"samples must hold K >= 2 volumes; got {samples.shape[0]}")
        if len(self.spacing_zyx_mm) != 3 or not all(s > 0 for s in self.spacing_zyx_mm):
            raise ValueError(
                f"spacing_zyx_mm must be three positive numbers (z, y, x) in mm; "
                f"got {self.spacing_zyx_mm}"
            )
        # Store float32 numpy whatever came in (tensors included); the instance stays frozen.
        object.__setattr__(self, "real", real.astype(np.float32))
        object.__setattr__(self, "reconstruction", reconstruction.astype(np.float32))
        object.__setattr__(self, "samples", samples.astype(np.float32))
        object.__setattr__(self, "spacing_zyx_mm", tuple(float(v) for v in self.spacing_zyx_mm))

    @property
    def lung_method(self) -> str:
        return "threshold" if self.segmenter is None else "segmenter"

    def paper(self, name: str) -> np.ndarray:
        return np.asarray(network_to_paper(getattr(self, name)), dtype=np.float64)

    def hu(self, name: str) -> np.ndarray:
        return np.asarray(network_to_hu(getattr(self, name)), dtype=np.float64)

    def require_segmenter(self, metric: str) -> SegmenterLike:
        if self.segmenter is None:
            raise ValueError(
                f"metric {metric} needs the frozen segmenter; pass "
                f"segmenter=ctgan.segmenter.load_segmenter(...) to MetricInputs"
            )
        return self.segmenter

    @cached_property
    def lung_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample masks (K, D, H, W), real mask (D, H, W)), both by the same method."""
        volumes = np.concatenate([self.samples, self.real[None]])
        if self.segmenter is None:
            masks = np.stack([anatomy.lung_mask(v) for v in network_to_hu(volumes)])
        else:
            masks = lung_masks_segmenter(self.segmenter, volumes, self.device)
        return masks[:-1], masks[-1]

    @cached_property
    def lung_mask_dice_values(self) -> tuple[list[float], float]:
        """(per-sample Dice, the real volume's Dice) of the paired lung mask against the classical
        threshold lung mask (``ctgan.masks.lung_mask_dice``)."""
        # here, not at the top: an opt-in metric; the default evaluation never imports ctgan.masks
        from ctgan.masks import lung_mask_dice, predict_masks

        segmenter = self.require_segmenter("lung_mask_dice")
        values = [
            lung_mask_dice(predict_masks(segmenter, volume)[0], volume, self.spacing_zyx_mm)  # type: ignore[arg-type]
            for volume in np.concatenate([self.samples, self.real[None]])
        ]
        return values[:-1], values[-1]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx_mm)) / 1000.0

    @cached_property
    def anatomy_comparison(self) -> anatomy.AnatomyComparison:
        """Every sample's anatomy against the real volume's (``ctgan.anatomy.compare_anatomy``)."""
        return anatomy.compare_anatomy(self.hu("samples"), self.hu("real"))

    @cached_property
    def diversity_value(self) -> float:
        return diversity(self.paper("samples"))

    @cached_property
    def memorisation_values(self) -> dict[str, float]:
        return memorisation(self.paper("samples"), self.paper("real"), self.paper("reconstruction"))


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric: its family, what it computes from :class:`MetricInputs`, its doc,
    and optionally the per-sample values it keeps (name -> K floats)."""

    name: str
    family: str
    compute: Callable[[MetricInputs], float | dict[str, float]]
    description: str
    per_sample: Callable[[MetricInputs], dict[str, list[float]]] | None = None


def _reconstruction(function: Callable[[np.ndarray, np.ndarray], float]):
    return lambda inputs: function(inputs.paper("reconstruction"), inputs.paper("real"))


def _ssim_plane(plane: str):
    return lambda inputs: ssim_plane(inputs.paper("reconstruction"), inputs.paper("real"), plane)


def _frechet(plane: str):
    def compute(inputs: MetricInputs) -> float:
        segmenter = inputs.require_segmenter(f"frechet_{plane}")
        return frechet_plane(segmenter, inputs.samples, inputs.real, plane, inputs.device)

    return compute


def _lung_fraction(inputs: MetricInputs) -> dict[str, float]:
    samples, real = inputs.lung_masks
    return lung_statistics("lung_fraction", samples.mean(axis=(1, 2, 3)), float(real.mean()))


def _lung_volume_ml(inputs: MetricInputs) -> dict[str, float]:
    samples, real = inputs.lung_masks
    per_voxel = inputs.voxel_volume_ml
    volumes = samples.sum(axis=(1, 2, 3)) * per_voxel
    return lung_statistics("lung_volume_ml", volumes, float(real.sum()) * per_voxel)


def _lung_mask_dice(inputs: MetricInputs) -> dict[str, float]:
    """Dice of the segmenter's lung mask against the classical threshold lung mask of the same
    volume (``ctgan.masks.lung_mask_dice``: ``ctgan.preprocess.compute_lung_mask``; 1.0 when both
    are empty)."""
    samples, real = inputs.lung_mask_dice_values
    return {
        "lung_mask_dice": float(np.mean(samples)),
        "lung_mask_dice_samples_sd": float(np.std(samples)),
        "lung_mask_dice_min": float(np.min(samples)),
        "lung_mask_dice_real": real,
    }


def _hu_wasserstein(inputs: MetricInputs) -> float:
    return float(np.mean(inputs.anatomy_comparison.per_sample["body_hu_wasserstein"]))


def _verdict(inputs: MetricInputs) -> dict[str, float]:
    return anatomy.model_verdict(
        inputs.anatomy_comparison.chest_like,
        inputs.diversity_value,
        inputs.memorisation_values["max_ssim_to_training"],
    )


def _spec(
    name: str, family: str, compute, documented: Callable, extra: str = "", per_sample=None
) -> MetricSpec:
    doc = " ".join((documented.__doc__ or "").split())
    return MetricSpec(name, family, compute, f"{doc} {extra}".strip(), per_sample)


_LUNG_NOTE = (
    "Lungs: the segmenter's lung channel (sigmoid > 0.5) on samples and real alike, or without a "
    "segmenter ctgan.anatomy.lung_mask (inside the body, below -400 HU, not connected to the "
    "outside air). Returns the mean over samples under the metric's name, plus "
    "<name>_samples_sd, <name>_real and <name>_difference (mean - real); a good generator has a "
    "difference ~0."
)
_ANATOMY_NOTE = (
    "Per sample (kept under per_sample, in sample order): body_fraction (body / all voxels), "
    "lung_fraction_of_body, lung_left_fraction and lung_right_fraction (largest lung region of "
    "each half / body), tissue_<class> (fraction of the body; classes "
    + ", ".join(f"{n} [{lo:g}, {hi:g})" for n, lo, hi in anatomy.TISSUE_CLASSES)
    + " HU), tissue_l1 (range [0, 2]), body_hu_wasserstein (HU, range [0, 2000]), the criteria "
    "lung_fraction_ok, lungs_both_sides, tissue_ok, body_w1_ok and chest_like (1 or 0). The "
    "family holds the mean over samples under each name (a share of samples for the 0/1 "
    "criteria; fractions in range [0, 1]) and the real volume's own value, judged against "
    "itself, under <name>_real. Criteria: lung fraction of the body within "
    f"±{anatomy.CHEST_LUNG_FRACTION_TOLERANCE:.0%} of the real's, each half of the body holding a "
    f"lung region of >= {anatomy.LUNG_SIDE_MIN_FRACTION:.0%} of the body, tissue L1 <= "
    f"{anatomy.CHEST_TISSUE_L1_MAX}, body HU W1 <= {anatomy.CHEST_BODY_W1_MAX_HU:g} HU."
)

METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        "mse": _spec("mse", "reconstruction", _reconstruction(mse), mse),
        "psnr": _spec("psnr", "reconstruction", _reconstruction(psnr), psnr),
        "ssim": _spec("ssim", "reconstruction", _reconstruction(ssim_3d), ssim_3d),
        **{
            f"ssim_{plane}": _spec(
                f"ssim_{plane}",
                "reconstruction",
                _ssim_plane(plane),
                ssim_plane,
                f"Plane: {plane}.",
            )
            for plane in PLANES
        },
        "hu_wasserstein": _spec(
            "hu_wasserstein", "realism", _hu_wasserstein, anatomy.hu_wasserstein
        ),
        **{
            f"frechet_{plane}": _spec(
                f"frechet_{plane}", "realism", _frechet(plane), frechet_plane, f"Plane: {plane}."
            )
            for plane in PLANES
        },
        "lung_fraction": _spec(
            "lung_fraction",
            "realism",
            _lung_fraction,
            lung_statistics,
            f"Lung voxels / all voxels, range [0, 1]. {_LUNG_NOTE}",
        ),
        "lung_volume_ml": _spec(
            "lung_volume_ml",
            "realism",
            _lung_volume_ml,
            lung_statistics,
            f"Lung voxels x voxel volume (finest-scale spacing), in ml; range [0, volume of the "
            f"field of view]. {_LUNG_NOTE}",
        ),
        "lung_mask_dice": _spec(
            "lung_mask_dice",
            "realism",
            _lung_mask_dice,
            _lung_mask_dice,
            "How far to trust the paired masks of ctgan sample --with-masks (ctgan.masks): the "
            "segmenter's lung mask with its own post-processing; mean, sd and min over samples, "
            "the real training volume's own under lung_mask_dice_real, per sample under "
            "per_sample. Range [0, 1], 1 = agreement. Opt-in (compute_metrics(inputs, "
            "['lung_mask_dice'])), with a segmenter from ctgan.masks.load_mask_segmenter.",
            per_sample=lambda inputs: {"lung_mask_dice": inputs.lung_mask_dice_values[0]},
        ),
        "anatomy": _spec(
            "anatomy",
            "anatomy",
            lambda inputs: inputs.anatomy_comparison.summary(),
            anatomy.compare_anatomy,
            _ANATOMY_NOTE,
            per_sample=lambda inputs: inputs.anatomy_comparison.per_sample,
        ),
        "diversity": _spec(
            "diversity", "diversity", lambda inputs: inputs.diversity_value, diversity
        ),
        "voxel_sd_hu": _spec(
            "voxel_sd_hu",
            "diversity",
            lambda inputs: voxel_sd_hu(inputs.hu("samples")),
            voxel_sd_hu,
        ),
        "memorisation": _spec(
            "memorisation", "memorisation", lambda inputs: inputs.memorisation_values, memorisation
        ),
        "verdict": _spec(
            "verdict",
            "verdict",
            _verdict,
            anatomy.model_verdict,
            "Range: chest_like_count in [0, K], the checks 1 (met) or 0.",
        ),
    }
)


def _needs_segmenter(name: str) -> bool:
    return name.startswith("frechet_") or name == "lung_mask_dice"


# Asked for by name only: the paired masks' Dice runs the segmenter's windowed whole-volume
# prediction on every sample, measured +9.6 s on a 13.4 s evaluation of one cpu-profile model
# (K = 16, 1 thread): not cheap enough for every evaluate stage.
OPT_IN = ("lung_mask_dice",)


def available_metrics(inputs: MetricInputs) -> list[str]:
    """The metrics computed by default: every registered one the inputs allow (the Fréchet
    distances need a segmenter) except the opt-in ones (:data:`OPT_IN`)."""
    return [
        n
        for n in METRICS
        if n not in OPT_IN and (inputs.segmenter is not None or not _needs_segmenter(n))
    ]


def compute_metrics(
    inputs: MetricInputs, names: list[str] | tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Run registered metrics and nest their values by family.

    By default every metric the inputs allow (:func:`available_metrics`; asking for a Fréchet
    distance by name without a segmenter raises ValueError).

    ``{family: {name: float}}``: the values of dict-valued metrics (lungs, anatomy, memorisation,
    verdict) are merged into their family, e.g. ``{"memorisation": {"max_ssim_to_training": ...,
    ...}}``. Metrics that keep per-sample values add them under ``"per_sample"``:
    ``{"per_sample": {"chest_like": [1.0, 0.0, ...], ...}}`` (K floats each, in sample order).
    """
    if names is None:
        names = available_metrics(inputs)
    names = list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = METRICS[name]
        value = spec.compute(inputs)
        family = results.setdefault(spec.family, {})
        if isinstance(value, dict):
            family.update({key: float(v) for key, v in value.items()})
        else:
            family[name] = float(value)
        if spec.per_sample is not None:
            values = spec.per_sample(inputs)
            results.setdefault(PER_SAMPLE, {}).update(
                {key: [float(v) for v in series] for key, series in values.items()}
            )
    return results
