"""The GPNN baseline's stage: K timed samples, scored like a GAN, saved for galleries.

``evaluate_gpnn(pyramid, cfg.gpnn, segmenter, K, profile)`` draws K samples and the noise-free
output with :func:`ctgan.gpnn.generate_gpnn`, times the sampling, and scores them with the
metrics registry exactly as ``ctgan.evaluate`` scores a GAN; the result has the layout of
``metrics/<model>-<setting>.json`` plus ``timing``. ``save_samples`` writes
``models/gpnn/samples.npz``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctgan.config import GpnnConfig
from ctgan.evaluate import check_finite, result_from_summary, summarise_seeds
from ctgan.features import SegmenterLike
from ctgan.gpnn import generate_gpnn, gpnn_options, reconstruct_gpnn
from ctgan.io import atomic_write, ensure_writable_dir
from ctgan.metrics import MetricInputs, available_metrics, compute_metrics


def evaluate_gpnn(
    pyramid: Any,
    gpnn: GpnnConfig,
    segmenter: SegmenterLike | None,
    num_samples: int,
    profile: str,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The GPNN row of the report: K timed samples and the noise-free output, scored by every
    registered metric against the finest training volume, exactly as ``ctgan.evaluate`` scores a
    GAN (the noise-free output stands in for the reconstruction).

    Returns ``(result, samples (K, D, H, W), noise_free (D, H, W))``; ``result`` has the layout
    of ``ctgan.evaluate.evaluate_model`` (name/model "gpnn", setting "-", one seed) plus
    ``timing`` (seconds per sample, device, threads).
    """
    options = gpnn_options(gpnn)
    device = options["device"]
    started = time.perf_counter()
    samples = generate_gpnn(
        pyramid.volumes, num_samples, seed=seed, noise_sd=gpnn.noise_sd, **options
    )
    seconds = time.perf_counter() - started
    noise_free = reconstruct_gpnn(pyramid.volumes, seed=seed, **options)
    real = np.asarray(pyramid.volumes[-1], dtype=np.float32)
    inputs = MetricInputs(
        real=real,
        reconstruction=noise_free,
        samples=samples,
        spacing_zyx_mm=tuple(float(v) for v in pyramid.spacings_zyx_mm[-1]),  # type: ignore[arg-type]
        segmenter=segmenter,
        device=str(device),
    )
    summary = summarise_seeds([compute_metrics(inputs, available_metrics(inputs))])
    result: dict[str, Any] = {
        "name": "gpnn",
        "model": "gpnn",
        "setting": "-",
        "profile": profile,
        "num_samples": num_samples,
        "seeds": [0],
        "sampling_seed": seed,
        "scale_shape": list(real.shape),
    }
    result = result_from_summary(
        result,
        summary,
        segmenter,
        notes={
            "reconstruction": "the noise-free GPNN output (noise_sd 0), not a trained reconstruction",
            "gpnn": dataclasses.asdict(gpnn),
        },
    )
    result["timing"] = {
        "seconds_per_sample": seconds / num_samples,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    check_finite(result)
    return result, samples, noise_free


def save_samples(
    path: str | Path,
    samples: np.ndarray,
    noise_free: np.ndarray,
    spacing_zyx_mm: Sequence[float],
) -> Path:
    """Write ``samples`` (K, D, H, W), ``noise_free`` (D, H, W) and ``spacing_zyx_mm`` as float32
    arrays in one ``.npz`` (atomically, folders created), for later galleries."""
    path = Path(path)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 4 or samples.shape[1:] != np.shape(noise_free):
        raise ValueError(
            f"samples must be (K, D, H, W) and noise_free (D, H, W) of the same volume shape; "
            f"got {samples.shape} and {np.shape(noise_free)}"
        )
    ensure_writable_dir(path.parent)
    with atomic_write(path) as tmp:
        np.savez(
            tmp,
            samples=samples,
            noise_free=np.asarray(noise_free, dtype=np.float32),
            spacing_zyx_mm=np.asarray(spacing_zyx_mm, dtype=np.float32),
        )
    return path
