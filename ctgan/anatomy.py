"""Anatomy of a CT volume in HU, and whether a generated volume is chest-like.

The paper's metrics score only the reconstruction from the fixed noise; these look at what a
random sample holds: a body, lungs on both sides inside it, the tissue mix of a chest, the HU
distribution of the body. Every function takes volumes in HU, ``(D, H, W)`` = ``(z, y, x)``
(``ctgan.intensity.network_to_hu`` of the networks' [-1, 1] range).

Definitions (every threshold is a named constant below):

- **body**: voxels above ``BODY_THRESHOLD_HU`` (-500 HU); the largest 3D connected component
  (face connectivity); then holes filled in every axial slice, so that the lungs, enclosed by the
  chest wall in-plane, are inside the body.
- **lungs**: voxels of the body below ``LUNG_THRESHOLD_HU`` (-400 HU) that are not connected to the
  outside air: 3D components (face connectivity) of the voxels below -400 HU that touch a voxel
  outside the body are dropped: an air pocket enclosed in one slice but open to the air in the
  next is not a lung, and a chest wall that leaks in one slice loses the whole lung connected to
  the leak. Measured on the training pyramids: no finest scale leaks (phantom and the real
  LIDC-IDRI-0001 scan, smoke/cpu/paper profiles); the real scan's coarsest scale (4x28x28) does
  (lung fraction of the body 0.008, against 0.147 for body voxels below -400 HU).
- **lungs on both sides**: the body is split at its centre of mass in x (the image's left-right
  axis) into two halves; each half must hold a connected lung region (the lung mask cut at the
  split, 3D components) of at least ``LUNG_SIDE_MIN_FRACTION`` (2 %) of the body's volume.
  Cutting at the split keeps two lungs joined through the airways at coarse resolution apart;
  the price is that one dark region across the midline counts on both sides (the tissue-class
  and lung-fraction criteria still see it).
- **tissue classes** of the body, half-open HU intervals [low, high) that cover the whole axis:
  air/lung < -400; transition -400..-200 (partial volume at lung edges; the issue's five
  classes leave it out, so it is a class of its own here and every body voxel is counted once);
  fat -200..-50; soft tissue -50..150 (-50 itself is soft tissue); dense 150..300; bone >= 300.
  The fractions are of the body's voxels and sum to 1; their L1 distance to the real volume's
  (sum of absolute differences over the six classes) lies in [0, 2].
- **body HU Wasserstein-1**: ``scipy.stats.wasserstein_distance`` between the HU values inside
  the sample's body and inside the real volume's body; a sample without body uses all its voxels.

A sample is **chest-like** when all four hold (the issue's criteria): its lung fraction of the
body is within ±``CHEST_LUNG_FRACTION_TOLERANCE`` (30 %) of the real volume's, it has lungs on
both sides, its tissue-class L1 is <= ``CHEST_TISSUE_L1_MAX`` (0.15), and its body HU W1 is
<= ``CHEST_BODY_W1_MAX_HU`` (50 HU). A model **passes** when at least ``CHEST_LIKE_MIN_SHARE``
(6 of 8) of its samples are chest-like, its samples are diverse (mean pairwise 1 - SSIM >=
``DIVERSITY_MIN`` = 0.2) and none is a copy (highest SSIM to the training volume <
``MAX_SSIM_TO_TRAINING`` = 0.9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from ctgan.similarity import Array, as_array

# Body: voxels above this, largest component, holes filled per axial slice.
BODY_THRESHOLD_HU = -500.0
# Lungs and the air/lung tissue class: below this, inside the body, not connected to outside air.
LUNG_THRESHOLD_HU = -400.0
# Each half of the body must hold a lung region of at least this share of the body's voxels.
LUNG_SIDE_MIN_FRACTION = 0.02
# Tissue classes: (name, low HU inclusive, high HU exclusive), covering the whole HU axis.
TISSUE_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("air_lung", -np.inf, LUNG_THRESHOLD_HU),
    ("transition", LUNG_THRESHOLD_HU, -200.0),
    ("fat", -200.0, -50.0),
    ("soft_tissue", -50.0, 150.0),
    ("dense", 150.0, 300.0),
    ("bone", 300.0, np.inf),
)
TISSUE_NAMES = tuple(name for name, _, _ in TISSUE_CLASSES)
# The chest-like criteria of one sample against the real volume.
CHEST_LUNG_FRACTION_TOLERANCE = 0.30  # |lung fraction - real's| <= 0.30 x real's
CHEST_TISSUE_L1_MAX = 0.15
CHEST_BODY_W1_MAX_HU = 50.0
# The model-level checks.
CHEST_LIKE_MIN_SHARE = 0.75  # at least 6 of 8 samples chest-like
DIVERSITY_MIN = 0.2  # mean pairwise 1 - SSIM of the samples
MAX_SSIM_TO_TRAINING = 0.9  # every sample's SSIM to the training volume must stay below this


def body_mask(volume_hu: Array) -> np.ndarray:
    """Boolean body mask of a (D, H, W) HU volume (module docstring: threshold -500 HU, largest
    3D component, holes filled per axial slice). Empty when no voxel is above the threshold."""
    hu = as_array("volume_hu", volume_hu, 3)
    labels, count = ndimage.label(hu > BODY_THRESHOLD_HU)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(axial) for axial in largest])


def lung_mask(volume_hu: Array, body: np.ndarray | None = None) -> np.ndarray:
    """Boolean lung mask: body voxels below -400 HU not connected (3D) to air outside the body."""
    hu = as_array("volume_hu", volume_hu, 3)
    body = body_mask(hu) if body is None else np.asarray(body, dtype=bool)
    if body.shape != hu.shape:
        raise ValueError(f"body must have the volume's shape {hu.shape}; got {body.shape}")
    low = hu < LUNG_THRESHOLD_HU
    labels, _ = ndimage.label(low)
    touching_outside = np.unique(labels[low & ~body])
    return low & body & ~np.isin(labels, touching_outside)


def lung_side_fractions(lungs: np.ndarray, body: np.ndarray) -> tuple[float, float]:
    """(left, right): the largest connected lung region in each half of the body (split at the
    body's centre of mass in x, the last axis), as a fraction of the body's voxels.

    "Left" is the half of lower x (the image's left; the patient's right in radiological
    display). Both 0 for an empty body.
    """
    total = int(body.sum())
    if total == 0:
        return 0.0, 0.0
    split = float(np.nonzero(body)[2].mean())
    x = np.arange(body.shape[2])
    fractions = []
    for half in (x < split, x >= split):
        labels, count = ndimage.label(lungs & half[None, None, :])
        largest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
        fractions.append(largest / total)
    return fractions[0], fractions[1]


def tissue_fractions(volume_hu: Array, body: np.ndarray) -> dict[str, float]:
    """Fraction of the body's voxels in each class of :data:`TISSUE_CLASSES` (zeros if no body)."""
    hu = as_array("volume_hu", volume_hu, 3)
    values = hu[np.asarray(body, dtype=bool)]
    if values.size == 0:
        return dict.fromkeys(TISSUE_NAMES, 0.0)
    return {
        name: float(np.mean((values >= low) & (values < high)))
        for name, low, high in TISSUE_CLASSES
    }


def tissue_l1(fractions: Mapping[str, float], real_fractions: Mapping[str, float]) -> float:
    """L1 distance between two tissue-class fraction sets: sum over classes of |f - f_real|."""
    return float(sum(abs(fractions[name] - real_fractions[name]) for name in TISSUE_NAMES))


def hu_wasserstein(samples_hu: Array, real_hu: Array) -> float:
    """Mean over samples of the Wasserstein-1 distance (HU) between body voxels of sample and real.

    W1(u, v) = integral |F_u(t) - F_v(t)| dt over the HU axis (``scipy.stats.wasserstein_distance``),
    each volume restricted to its own :func:`body_mask`; a sample without body (all air) uses all
    its voxels. Range [0, 2000] HU; 0 means the same HU distribution. Lower is better.
    """
    samples = as_array("samples_hu", samples_hu, 4)
    real = as_array("real_hu", real_hu, 3)
    real_body = body_mask(real)
    if not real_body.any():
        raise ValueError(
            f"real_hu has no body (no voxel above {BODY_THRESHOLD_HU} HU); pass a CT volume in HU "
            f"(ctgan.intensity.network_to_hu), not the network or paper scale"
        )
    real_values = real[real_body]
    distances = []
    for sample in samples:
        body = body_mask(sample)
        values = sample[body] if body.any() else sample.ravel()
        distances.append(stats.wasserstein_distance(real_values, values))
    return float(np.mean(distances))


@dataclass(frozen=True)
class Anatomy:
    """What :func:`measure_anatomy` finds in one volume; ``values`` are the body's HU values."""

    body_fraction: float  # body voxels / all voxels
    lung_fraction_of_body: float  # lung voxels / body voxels (0 without body)
    lung_left_fraction: float  # largest lung region of each half / body voxels
    lung_right_fraction: float
    tissue: dict[str, float]  # class -> fraction of the body
    values: np.ndarray  # HU inside the body (all voxels when there is no body)

    @property
    def lungs_both_sides(self) -> bool:
        return min(self.lung_left_fraction, self.lung_right_fraction) >= LUNG_SIDE_MIN_FRACTION


def measure_anatomy(volume_hu: Array) -> Anatomy:
    """Body, lungs, lung sides and tissue classes of one (D, H, W) HU volume."""
    hu = as_array("volume_hu", volume_hu, 3)
    body = body_mask(hu)
    lungs = lung_mask(hu, body)
    total = int(body.sum())
    left, right = lung_side_fractions(lungs, body)
    return Anatomy(
        body_fraction=total / hu.size,
        lung_fraction_of_body=float(lungs.sum()) / total if total else 0.0,
        lung_left_fraction=left,
        lung_right_fraction=right,
        tissue=tissue_fractions(hu, body),
        values=hu[body] if total else hu.ravel(),
    )


def sample_checks(sample: Anatomy, real: Anatomy) -> dict[str, float]:
    """One sample against the real volume: the compared values and each chest-like criterion."""
    lung_error = abs(sample.lung_fraction_of_body - real.lung_fraction_of_body)
    l1 = tissue_l1(sample.tissue, real.tissue)
    w1 = float(stats.wasserstein_distance(real.values, sample.values))
    checks = {
        "lung_fraction_ok": lung_error
        <= CHEST_LUNG_FRACTION_TOLERANCE * real.lung_fraction_of_body,
        "lungs_both_sides": sample.lungs_both_sides,
        "tissue_ok": l1 <= CHEST_TISSUE_L1_MAX,
        "body_w1_ok": w1 <= CHEST_BODY_W1_MAX_HU,
    }
    return {
        "body_fraction": sample.body_fraction,
        "lung_fraction_of_body": sample.lung_fraction_of_body,
        "lung_left_fraction": sample.lung_left_fraction,
        "lung_right_fraction": sample.lung_right_fraction,
        **{f"tissue_{name}": sample.tissue[name] for name in TISSUE_NAMES},
        "tissue_l1": l1,
        "body_hu_wasserstein": w1,
        **{name: float(ok) for name, ok in checks.items()},
        "chest_like": float(all(checks.values())),
    }


@dataclass(frozen=True)
class AnatomyComparison:
    """K samples measured against the real volume: per-sample values and the real's own."""

    real: dict[str, float]  # the real volume judged against itself (W1 0, L1 0)
    per_sample: dict[str, list[float]]  # name -> K values, in sample order

    @property
    def chest_like(self) -> np.ndarray:
        return np.asarray(self.per_sample["chest_like"], dtype=bool)

    def summary(self) -> dict[str, float]:
        """Mean over samples of every per-sample value (for a 0/1 criterion: the share of samples
        meeting it), and the real volume's own value under ``<name>_real``."""
        values: dict[str, float] = {}
        for name, series in self.per_sample.items():
            values[name] = float(np.mean(series))
            values[f"{name}_real"] = float(self.real[name])
        return values


def compare_anatomy(samples_hu: Array, real_hu: Array) -> AnatomyComparison:
    """Measure K samples (K, D, H, W) and the real volume (D, H, W), all in HU, and judge each
    sample chest-like or not (module docstring)."""
    samples = as_array("samples_hu", samples_hu, 4)
    real_array = as_array("real_hu", real_hu, 3)
    if samples.shape[1:] != real_array.shape:
        raise ValueError(
            f"samples_hu must be (K, D, H, W) with (D, H, W) = {real_array.shape}; got "
            f"{samples.shape}"
        )
    real = measure_anatomy(real_array)
    if real.body_fraction == 0:
        raise ValueError(
            f"real_hu has no body (no voxel above {BODY_THRESHOLD_HU} HU); pass a CT volume in HU "
            f"(ctgan.intensity.network_to_hu), not the network or paper scale"
        )
    rows = [sample_checks(measure_anatomy(sample), real) for sample in samples]
    per_sample = {name: [row[name] for row in rows] for name in rows[0]}
    return AnatomyComparison(real=sample_checks(real, real), per_sample=per_sample)


def chest_like_flags(real_hu: Array, samples_hu: Array) -> np.ndarray:
    """Boolean (K,): is each sample chest-like against the real volume (both in HU)."""
    return compare_anatomy(samples_hu, real_hu).chest_like


def model_verdict(
    chest_like: np.ndarray, diversity: float, max_ssim_to_training: float
) -> dict[str, float]:
    """The model-level verdict: how many samples are chest-like, and the issue's three checks.

    ``chest_like_count`` of ``chest_like_of``; ``enough_chest_like`` (share >= 0.75),
    ``diverse`` (diversity >= 0.2), ``not_copies`` (max SSIM to training < 0.9), and ``passes``
    (all three), each 1.0 or 0.0.
    """
    flags = np.asarray(chest_like, dtype=bool)
    if flags.ndim != 1 or flags.size == 0:
        raise ValueError(f"chest_like must be a non-empty 1-D array of flags; got {flags.shape}")
    checks = {
        "enough_chest_like": flags.mean() >= CHEST_LIKE_MIN_SHARE,
        "diverse": diversity >= DIVERSITY_MIN,
        "not_copies": max_ssim_to_training < MAX_SSIM_TO_TRAINING,
    }
    return {
        "chest_like_count": float(flags.sum()),
        "chest_like_of": float(flags.size),
        **{name: float(ok) for name, ok in checks.items()},
        "passes": float(all(checks.values())),
    }
