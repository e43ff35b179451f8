"""GPNN: a training-free generative patch-nearest-neighbour baseline, in 3D.

Granot et al., "Drop the GAN: In Defense of Patches Nearest Neighbors as Single Image Generative
Models" (CVPR 2022), applied to a volume as VGPNN applies it to space-time. No network, no
training: a sample is made coarse to fine over the GANs' own training pyramid
(``ctgan.preprocess.load_pyramid``, coarsest first).

- At the start scale the estimate is the real volume of that scale plus Gaussian noise
  (``noise_sd``, in the networks' range [-1, 1]); the noise is what makes samples differ.
- At every scale, ``iterations`` steps of PNN: every patch of the estimate (a *query*) is replaced
  by the patch of the real volume (the *values*) whose *key* patch scores best, and overlapping
  patches are averaged back into a volume (fold).
- The score is GPNN's normalised distance ``d(q, k) / (alpha + min_q' d(q', k))``: a key already
  close to some query is penalised, so every part of the real volume tends to be used
  (completeness; small ``alpha`` = strong push).
- The keys of the first step at a scale are the real volume of the scale below upsampled to this
  scale, so that their blur matches the blur of the upsampled estimate; later steps use the real
  volume of the scale itself.

Search. At the start scale the search is exact: the distance matrix (queries x keys) is computed
in chunks of ``chunk_size`` queries, twice per step (once for the per-key minima, once for the
scores), so that memory stays at ``chunk_size x keys`` floats whatever the volume. Its cost grows
with the square of the voxel count (about 50 s per step at 10x63x63 on a 2-vCPU machine), so the
finer scales search only a window (``search_radius``) around each patch's nearest-neighbour
field carried up from the scale below, with the same normalised score over the keys each query
considered; VGPNN uses PatchMatch there for the same reason. ``search_radius=None`` keeps the
exact search everywhere. The sample's own scales are the pyramid's from ``start_scale`` on; this
module's :func:`generate_gpnn` is the algorithm, ``ctgan.baseline`` its pipeline stage.

Everything runs in float32 on the given device;
the noise is drawn on the CPU from a generator seeded by (seed, sample index), so sample *i*
depends only on the seed and *i*, on CPU and GPU alike.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ctgan import layers

if TYPE_CHECKING:
    from ctgan.sections import GpnnConfig

log = logging.getLogger(__name__)

Patch = tuple[int, int, int]


def _check_patch(patch_size: Sequence[int]) -> Patch:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p < 1 for p in patch):
        raise ValueError(
            f"patch_size must be three positive sizes (z, y, x) in voxels; got {list(patch_size)}"
        )
    return patch  # type: ignore[return-value]


def _check_radius(search_radius: Sequence[int]) -> Patch:
    radius = tuple(int(r) for r in search_radius)
    if len(radius) != 3 or any(r < 0 for r in radius):
        raise ValueError(
            f"search_radius must be three sizes >= 0 (z, y, x) in voxels, or None for the exact "
            f"search; got {list(search_radius)}"
        )
    return radius  # type: ignore[return-value]


def _check_volumes(volumes: Sequence[np.ndarray | torch.Tensor], patch: Patch) -> None:
    for s, volume in enumerate(volumes):
        shape = tuple(volume.shape)
        if len(shape) != 3:
            raise ValueError(
                f"pyramid_volumes[{s}] must be a (D, H, W) volume; got shape {shape}. Pass "
                f"TrainingPyramid.volumes (coarsest first)"
            )
        if any(n < p for n, p in zip(shape, patch, strict=True)):
            raise ValueError(
                f"pyramid_volumes[{s}] of shape {shape} is smaller than the patch {patch}; use a "
                f"smaller gpnn.patch_size or a later gpnn.start_scale"
            )
        if not np.all(np.isfinite(np.asarray(volume, dtype=np.float32))):
            raise ValueError(f"pyramid_volumes[{s}] holds NaN or inf values")


def extract_patches(volume: torch.Tensor, patch: Patch) -> torch.Tensor:
    """Every patch of a ``(D, H, W)`` volume at stride 1, flattened: ``(N, pz * py * px)``."""
    pz, py, px = patch
    windows = volume.unfold(0, pz, 1).unfold(1, py, 1).unfold(2, px, 1)  # (nz, ny, nx, pz, py, px)
    return windows.reshape(-1, pz * py * px)


def fold_patches(patches: torch.Tensor, shape: tuple[int, int, int], patch: Patch) -> torch.Tensor:
    """Inverse of :func:`extract_patches`: each voxel is the mean of the patches covering it."""
    pz, py, px = patch
    depth, height, width = shape
    grid = (depth - pz + 1, height - py + 1, width - px + 1)
    windows = patches.reshape(*grid, pz, py, px)
    total = torch.zeros(shape, dtype=patches.dtype, device=patches.device)
    for dz in range(pz):  # add each patch offset as one shifted slab (pz * py * px slab adds)
        for dy in range(py):
            for dx in range(px):
                region = (
                    slice(dz, dz + grid[0]),
                    slice(dy, dy + grid[1]),
                    slice(dx, dx + grid[2]),
                )
                total[region] += windows[:, :, :, dz, dy, dx]
    return total / _patch_count(tuple(shape), patch, patches.dtype, patches.device)


@functools.lru_cache(maxsize=32)
def _patch_count(
    shape: tuple[int, int, int], patch: Patch, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """How many patches cover each voxel of a ``shape`` volume: along an axis of n voxels and
    patch p, min(i + 1, n - i, p, n - p + 1) at voxel i; their product, computed once per shape."""
    counts = []
    for n, p in zip(shape, patch, strict=True):
        index = torch.arange(n)
        counts.append(torch.minimum(index + 1, n - index).clamp(max=min(p, n - p + 1)))
    return (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]).to(
        dtype=dtype, device=device
    )


def nearest_keys(
    queries: torch.Tensor, keys: torch.Tensor, alpha: float, chunk_size: int
) -> torch.Tensor:
    """Exact search: for each query, the index of the key with the lowest GPNN score.

    score(q, k) = ||q - k|| / (alpha + min over all queries q' of ||q' - k||). ``queries``
    (Nq, P), ``keys`` (Nk, P); the (chunk_size, Nk) distance blocks are computed twice (minima,
    then scores) so that no Nq x Nk matrix is held.
    """

    def distances(start: int) -> torch.Tensor:  # (chunk, Nk)
        block = queries[start : start + chunk_size]
        return torch.cdist(block, keys, compute_mode="use_mm_for_euclid_dist")

    key_minimum = torch.full((keys.shape[0],), float("inf"), device=keys.device)
    for start in range(0, queries.shape[0], chunk_size):
        key_minimum = torch.minimum(key_minimum, distances(start).min(dim=0).values)
    scale = 1.0 / (alpha + key_minimum)  # (Nk,)
    chosen = [
        (distances(start) * scale).argmin(dim=1) for start in range(0, queries.shape[0], chunk_size)
    ]
    return torch.cat(chosen)


def _window_offsets(radius: Patch, device: torch.device) -> torch.Tensor:
    """(O, 3) offsets of a (2r+1)-wide window, the zero offset first (it wins ties)."""
    axes = [torch.arange(-r, r + 1, device=device) for r in radius]
    offsets = torch.cartesian_prod(*axes).reshape(-1, 3)
    zero = (offsets == 0).all(dim=1)
    return torch.cat([offsets[zero], offsets[~zero]])


def local_nearest_keys(
    queries: torch.Tensor,
    keys: torch.Tensor,
    grid: Patch,
    sources: torch.Tensor,
    radius: Patch,
    alpha: float,
    chunk_size: int,
) -> torch.Tensor:
    """Windowed search: query i considers only the keys within ``radius`` of ``sources[i]``.

    ``grid``: the patch grid (nz, ny, nx) of queries and keys alike; ``sources`` (Nq, 3): each
    query's current source position on that grid (its upsampled nearest-neighbour field). The
    score is GPNN's, with each key's minimum taken over the queries that considered it.
    """
    offsets = _window_offsets(radius, queries.device)  # (O, 3)
    limits = torch.tensor(grid, device=queries.device) - 1
    strides = torch.tensor([grid[1] * grid[2], grid[2], 1], device=queries.device)
    key_norms = (keys * keys).sum(dim=1)  # (Nk,)
    candidates, distances = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]  # (chunk, P)
        position = (sources[start : start + chunk_size, None, :] + offsets).clamp(min=0)
        index = (torch.minimum(position, limits) * strides).sum(dim=2)  # (chunk, O)
        cross = torch.bmm(keys[index], block[:, :, None])[:, :, 0]  # (chunk, O): q . k
        squared = (block * block).sum(dim=1, keepdim=True) + key_norms[index] - 2 * cross
        candidates.append(index)
        distances.append(squared.clamp(min=0).sqrt())
    index, distance = torch.cat(candidates), torch.cat(distances)  # (Nq, O)
    key_minimum = torch.full((keys.shape[0],), float("inf"), device=keys.device)
    key_minimum = key_minimum.scatter_reduce(0, index.reshape(-1), distance.reshape(-1), "amin")
    scores = distance / (alpha + key_minimum[index])
    return index.gather(1, scores.argmin(dim=1, keepdim=True))[:, 0]


def _grid(shape: Sequence[int], patch: Patch) -> Patch:
    return tuple(int(n) - p + 1 for n, p in zip(shape, patch, strict=True))  # type: ignore[return-value]


def _positions(grid: Patch, device: torch.device) -> torch.Tensor:
    """(N, 3) grid coordinates of every patch, in extract_patches order."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.cartesian_prod(*axes).reshape(-1, 3)


def _unravel(index: torch.Tensor, grid: Patch) -> torch.Tensor:
    z = index // (grid[1] * grid[2])
    y = (index // grid[2]) % grid[1]
    return torch.stack([z, y, index % grid[2]], dim=1)


def _upsample_sources(sources: torch.Tensor, old: Patch, new: Patch) -> torch.Tensor:
    """Carry a nearest-neighbour field to the next scale: its displacements (source - position),
    resized to the new grid (nearest) and scaled by the grid ratio, added to the new positions."""
    device = sources.device
    displacement = (sources - _positions(old, device)).T.reshape(1, 3, *old).float()
    resized = F.interpolate(displacement, size=new, mode="nearest")[0].reshape(3, -1).T
    ratio = torch.tensor(
        [(b - 1) / (a - 1) if a > 1 else 1.0 for a, b in zip(old, new, strict=True)],
        device=device,
    )
    moved = _positions(new, device) + torch.round(resized * ratio).long()
    return torch.minimum(moved.clamp(min=0), torch.tensor(new, device=device) - 1)


def _resize(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear, align_corners=True: the pyramid's own resize rule (``preprocess.resize_volume``)."""
    resized = F.interpolate(
        volume[None, None], size=tuple(shape), mode="trilinear", align_corners=True
    )
    return resized[0, 0]


def _generate_one(
    reals: list[torch.Tensor],
    start: torch.Tensor,
    patch: Patch,
    iterations: tuple[int, int],
    alpha: float,
    search_radius: Patch | None,
    chunk_size: int,
) -> torch.Tensor:
    """One sample, coarse to fine from the estimate ``start`` at the first scale: ``iterations``
    PNN steps per scale (module docstring)."""
    estimate = start
    sources = torch.empty(0, 3)  # the nearest-neighbour field: (N, 3) source grid positions
    grid = _grid(reals[0].shape, patch)
    for s, real in enumerate(reals):
        if s > 0:
            estimate = _resize(estimate, real.shape)
            new_grid = _grid(real.shape, patch)
            sources = _upsample_sources(sources, grid, new_grid)
            grid = new_grid
        values = extract_patches(real, patch)
        blurred = extract_patches(_resize(reals[s - 1], real.shape), patch) if s > 0 else values
        steps = iterations[1] if 0 < s == len(reals) - 1 else iterations[0]
        for step in range(steps):
            queries = extract_patches(estimate, patch)
            keys = blurred if step == 0 else values
            if s == 0 or search_radius is None:
                chosen = nearest_keys(queries, keys, alpha, chunk_size)
            else:
                chosen = local_nearest_keys(
                    queries, keys, grid, sources, search_radius, alpha, chunk_size
                )
            sources = _unravel(chosen, grid)
            estimate = fold_patches(values[chosen], tuple(real.shape), patch)  # type: ignore[arg-type]
    return estimate


def move_in_plane(
    volume: torch.Tensor,
    zoom_y: float | torch.Tensor,
    zoom_x: float | torch.Tensor,
    shift_y: float | torch.Tensor,
    shift_x: float | torch.Tensor,
) -> torch.Tensor:
    """``volume`` (D, H, W) zoomed in-plane about its centre by ``zoom_y`` and ``zoom_x`` (> 1
    enlarges) and shifted by ``shift_y`` and ``shift_x`` voxels (> 0 moves the content towards
    higher indices), the same in every slice; bilinear, the border value outside."""
    depth, height, width = (int(n) for n in volume.shape)
    zz, yy, xx = torch.meshgrid(
        *[torch.linspace(-1, 1, n) for n in (depth, height, width)], indexing="ij"
    )
    gx = xx / zoom_x - shift_x * 2 / (width - 1)
    gy = yy / zoom_y - shift_y * 2 / (height - 1)
    grid = torch.stack([gx, gy, zz], dim=-1)[None].to(device=volume.device, dtype=volume.dtype)
    return F.grid_sample(
        volume[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[0, 0]


def start_estimate(
    real: torch.Tensor,
    generator: torch.Generator,
    noise_sd: float,
    zoom_sd: float = 0.0,
    shift_sd: float = 0.0,
) -> torch.Tensor:
    """The estimate one sample starts from at the start scale: ``real`` (D, H, W) plus Gaussian
    noise of sd ``noise_sd``, drawn on the CPU from ``generator``.

    With ``zoom_sd`` or ``shift_sd`` > 0 (the samples' layout start, ``ctgan.sample_start``), the
    volume is first scaled in-plane by 1 + N(0, ``zoom_sd``) along y and x (one factor per axis)
    and shifted by N(0, ``shift_sd``) voxels along y and x, the same in every slice (bilinear,
    the border value outside): the PNN steps then start from an arrangement that is not the
    scan's own (``docs/realism.md`` §10).
    """
    noise = torch.randn(tuple(real.shape), generator=generator) * float(noise_sd)
    if zoom_sd == 0 and shift_sd == 0:
        return real + noise.to(real.device)
    draw = torch.randn(4, generator=generator)  # zoom x, zoom y, shift x, shift y
    moved = move_in_plane(
        real,
        zoom_y=1 + zoom_sd * draw[1],
        zoom_x=1 + zoom_sd * draw[0],
        shift_y=-draw[3] * shift_sd,
        shift_x=-draw[2] * shift_sd,
    )
    return moved + noise.to(real.device)


def generate_gpnn(
    pyramid_volumes: Sequence[np.ndarray | torch.Tensor],
    num_samples: int,
    *,
    seed: int = 0,
    patch_size: Sequence[int] = (3, 7, 7),
    iterations: int = 10,
    finest_iterations: int | None = None,
    alpha: float = 0.005,
    noise_sd: float = 0.75,
    zoom_sd: float = 0.0,
    shift_sd: float = 0.0,
    start_scale: int = 0,
    search_radius: Sequence[int] | None = (1, 3, 3),
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
    max_correlation: float = 1.0,
    max_draws: int = 10,
) -> np.ndarray:
    """``num_samples`` GPNN samples at the finest scale: float32 ``(K, D, H, W)`` in [-1, 1].

    ``pyramid_volumes``: the training pyramid's volumes, coarsest first, in [-1, 1]
    (``TrainingPyramid.volumes``). Generation starts at ``pyramid_volumes[start_scale]`` plus
    Gaussian noise of sd ``noise_sd`` (``noise_sd=0`` gives the noise-free output, the baseline's
    "reconstruction"); ``zoom_sd`` and ``shift_sd`` (default 0: GPNN's start) first scale and
    shift that volume in-plane at random (:func:`start_estimate`). ``patch_size`` (z, y, x) must
    fit every scale used. ``iterations``: PNN
    steps per scale (GPNN: 10), ``finest_iterations`` at the finest scale (default: the
    same; the finest scale costs the most and mostly sharpens); ``alpha``: GPNN's completeness parameter (0.005);
    ``search_radius`` (z, y, x): at the scales after the start scale, each query searches only
    the keys within this radius of its upsampled nearest-neighbour field (VGPNN uses PatchMatch
    there); None = exact search over all keys at every scale (memory and time grow with the
    square of the voxel count). ``chunk_size``: queries per distance block (memory only: the
    result does not depend on it). ``max_correlation`` < 1: a sample whose Pearson correlation
    with the finest volume used reaches it gives the scan's own arrangement back (a copy) and is
    drawn again from the next start of its generator, up to ``max_draws`` draws in all (then the
    least correlated draw is kept, with a warning); 1.0 (GPNN's own rule) keeps every first draw.
    Sample *k* depends only on ``seed`` and *k*.
    """
    patch = _check_patch(patch_size)
    radius = None if search_radius is None else _check_radius(search_radius)
    finest = iterations if finest_iterations is None else finest_iterations
    for name, value in (
        ("num_samples", num_samples),
        ("iterations", iterations),
        ("finest_iterations", finest),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (GPNN: 0.005); got {alpha!r}")
    if not noise_sd >= 0:
        raise ValueError(f"noise_sd must be >= 0 (0 = the noise-free output); got {noise_sd!r}")
    for name, value in (("zoom_sd", zoom_sd), ("shift_sd", shift_sd)):
        if not 0 <= value < (0.5 if name == "zoom_sd" else math.inf):
            raise ValueError(
                f"{name} must be >= 0 (0 = the start volume unmoved)"
                + (" and < 0.5" if name == "zoom_sd" else "")
                + f"; got {value!r}"
            )
    if not -1.0 < max_correlation <= 1.0:
        raise ValueError(
            f"max_correlation must be in (-1, 1] (1 = keep every draw, GPNN's rule); got "
            f"{max_correlation!r}"
        )
    if isinstance(max_draws, bool) or not isinstance(max_draws, int) or max_draws < 1:
        raise ValueError(f"max_draws must be an integer >= 1; got {max_draws!r}")
    if len(pyramid_volumes) < 1:
        raise ValueError("pyramid_volumes must hold at least one (D, H, W) volume; got none")
    if not 0 <= start_scale < len(pyramid_volumes):
        raise ValueError(
            f"start_scale must index the pyramid's {len(pyramid_volumes)} scales "
            f"(0 = coarsest); got {start_scale}"
        )
    used = list(pyramid_volumes)[start_scale:]
    _check_volumes(used, patch)
    device = torch.device(device)
    reals = [
        torch.as_tensor(np.asarray(v, dtype=np.float32)).to(device) for v in used
    ]  # (D_s, H_s, W_s), coarsest used scale first
    bounded = max_correlation < 1.0  # 1.0: GPNN's rule, every first draw is kept unscored
    samples = []
    for k in range(num_samples):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + k)
        draws: list[tuple[float, torch.Tensor]] = []
        for draw in range(1, (max_draws if bounded else 1) + 1):
            with torch.no_grad():
                start = start_estimate(reals[0], generator, noise_sd, zoom_sd, shift_sd)
                sample = _generate_one(
                    reals, start, patch, (iterations, finest), alpha, radius, chunk_size
                ).clamp(-1.0, 1.0)
            draws.append((correlation(sample, reals[-1]) if bounded else 0.0, sample))
            if draws[-1][0] < max_correlation:
                break
            log.info(
                "GPNN sample %d: draw %d gives the scan back (correlation %.4f >= %g)%s",
                k + 1,
                draw,
                draws[-1][0],
                max_correlation,
                "; drawing again" if draw < max_draws else "",
            )
        kept_correlation, sample = min(draws, key=lambda draw: draw[0])
        if kept_correlation >= max_correlation:
            log.warning(
                "GPNN sample %d: all %d draws correlate >= %g with the scan; keeping the least "
                "correlated (%.4f)",
                k + 1,
                len(draws),
                max_correlation,
                kept_correlation,
            )
        samples.append(sample.cpu().numpy())
        log.info("GPNN sample %d/%d done", k + 1, num_samples)
    return np.stack(samples).astype(np.float32)


def correlation(volume: torch.Tensor, reference: torch.Tensor) -> float:
    """Pearson correlation of two volumes of the same shape (1.0: the same up to an affine map of
    the intensities; 0 where either is constant)."""
    if volume.shape != reference.shape:
        raise ValueError(
            f"correlation needs volumes of the same shape; got {tuple(volume.shape)} and "
            f"{tuple(reference.shape)}"
        )
    a = volume.double().flatten() - volume.double().mean()
    b = reference.double().flatten() - reference.double().mean()
    norm = float(a.norm() * b.norm())
    return 0.0 if norm == 0.0 else float((a @ b) / norm)


def reconstruct_gpnn(pyramid_volumes: Sequence[np.ndarray | torch.Tensor], **kwargs) -> np.ndarray:
    """The noise-free GPNN output ``(D, H, W)``: :func:`generate_gpnn` with ``noise_sd=0``."""
    kwargs.pop("noise_sd", None)
    return generate_gpnn(pyramid_volumes, 1, noise_sd=0.0, **kwargs)[0]


def resolve_device(name: str) -> torch.device:
    """``gpnn.device``: 'auto' -> CUDA when available, else CPU; 'cuda' without a GPU raises."""
    return layers.resolve_device(name, "gpnn.device")


def gpnn_options(gpnn: GpnnConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`generate_gpnn` and :func:`reconstruct_gpnn` that a
    ``gpnn`` section of params.yaml sets (all but the noise), with its device resolved."""
    return {
        "patch_size": gpnn.patch_size,
        "iterations": gpnn.iterations,
        "finest_iterations": gpnn.finest_iterations,
        "alpha": gpnn.alpha,
        "start_scale": gpnn.start_scale,
        "search_radius": None if gpnn.exact_search else gpnn.search_radius,
        "chunk_size": gpnn.chunk_size,
        "device": resolve_device(gpnn.device),
    }
