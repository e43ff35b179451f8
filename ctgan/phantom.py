"""A synthetic chest CT written in the exact LUNA16 layout: the pipeline's default data source.

``write_phantom_dataset(out_dir, scans, seed, size)`` writes ``subset0/<uid>.mhd`` + ``.raw``
(uncompressed int16 HU, identity direction, a LUNA16-like non-zero origin, in-plane spacing
~350 mm / size, 2.5 mm slices, 100-130 slices), ``annotations.csv`` (the planted nodules, world mm),
``candidates.csv`` (the nodules as class 1 plus false candidates as class 0),
``seg-lungs-LUNA16/<uid>.mhd`` (label 3 = left lung, 4 = right lung, 5 = trachea and main bronchi,
the values of the LUNA16 masks) and ``phantom.json`` (what wrote the folder).

Anatomy is built in millimetres (so every ``size`` gives the same chest), in patient coordinates
as ITK uses them (LPS: +x = patient's left, +y = posterior, +z = superior); slice 0 is the most
inferior, as in LUNA16. Painted in order: table, body (skin, fat, muscle), abdomen below the
diaphragm, mediastinum, spine, ribs, sternum, lungs (-850 HU with texture and a gravity gradient),
heart, aorta, trachea and bronchi, pulmonary vessel trees, nodules; then partial-volume blur,
correlated Gaussian noise, and -2048 outside the circular field of view as in many LUNA16 scans.
Each seed gives a different body, lung shape, vessel tree and set of nodules.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ctgan.io import ensure_writable_dir
from ctgan.luna16 import LEFT_LUNG_LABEL, LUNG_MASK_FOLDER, RIGHT_LUNG_LABEL, TRACHEA_LABEL

log = logging.getLogger(__name__)

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001.9"
MARKER_FILE = "phantom.json"
FIELD_OF_VIEW_MM = 350.0
SLICE_SPACING_MM = 2.5
OUT_OF_FIELD_HU = -2048
_PHANTOM_ENTRIES = ("subset0", LUNG_MASK_FOLDER, "annotations.csv", "candidates.csv", MARKER_FILE)

# Tissue values (HU) before blur and noise.
AIR_HU = -1000.0
FAT_HU = -100.0
SKIN_HU = 30.0
MUSCLE_HU = 45.0
SOFT_TISSUE_HU = 35.0
LIVER_HU = 55.0
BLOOD_HU = 40.0
LUNG_HU = -850.0
CORTICAL_BONE_HU = 700.0
CANCELLOUS_BONE_HU = 230.0
DISC_HU = 80.0
NODULE_HU = 30.0


@dataclass(frozen=True)
class PhantomScan:
    """One generated scan: int16 HU ``(z, y, x)``, its lung labels, nodules and geometry."""

    seriesuid: str
    hu: np.ndarray
    labels: np.ndarray
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    nodules: pd.DataFrame  # coordX, coordY, coordZ (world mm), diameter_mm


def phantom_uid(seed: int, index: int) -> str:
    """A valid-looking SeriesInstanceUID, unique per (seed, index)."""
    return f"{UID_PREFIX}{seed:06d}{index:04d}"


class _Grid:
    """Millimetre coordinates of the voxel centres, relative to the body centre (x, y) and slice 0 (z)."""

    def __init__(self, depth: int, size: int, spacing_xy: float) -> None:
        self.depth, self.size, self.spacing_xy = depth, size, spacing_xy
        self.spacing = np.array([SLICE_SPACING_MM, spacing_xy, spacing_xy])  # (z, y, x)
        centre = (size - 1) / 2
        self.x = ((np.arange(size) - centre) * spacing_xy).astype(np.float32)[None, None, :]
        self.y = ((np.arange(size) - centre) * spacing_xy).astype(np.float32)[None, :, None]
        self.z = (np.arange(depth) * SLICE_SPACING_MM).astype(np.float32)[:, None, None]

    def to_index(self, point_zyx_mm: np.ndarray) -> np.ndarray:
        centre = (self.size - 1) / 2
        return np.asarray(point_zyx_mm) / self.spacing + np.array([0.0, centre, centre])


def _superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, power: float = 2.0):
    return np.abs(x / a) ** power + np.abs(y / b) ** power <= 1.0


def _paint_tube(
    volume: np.ndarray,
    grid: _Grid,
    start_zyx: np.ndarray,
    end_zyx: np.ndarray,
    radius_start: float,
    radius_end: float,
    value: float,
    where: np.ndarray | None = None,
    return_mask: bool = False,
) -> np.ndarray | None:
    """Set ``value`` inside a tapered cylinder (capsule) between two points (mm); returns its mask."""
    start, end = np.asarray(start_zyx, float), np.asarray(end_zyx, float)
    radius_start, radius_end = float(radius_start), float(radius_end)
    reach = max(radius_start, radius_end)
    low = np.floor(grid.to_index(np.minimum(start, end) - reach)).astype(int)
    high = np.ceil(grid.to_index(np.maximum(start, end) + reach)).astype(int) + 1
    shape = np.array(volume.shape)
    low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
    if np.any(high <= low):
        return np.zeros(volume.shape, dtype=bool) if return_mask else None
    z = grid.z[low[0] : high[0]]
    y = grid.y[:, low[1] : high[1]]
    x = grid.x[:, :, low[2] : high[2]]
    (z0, y0, x0), (dz, dy, dx) = start.tolist(), (end - start).tolist()
    length_sq = dz * dz + dy * dy + dx * dx or 1e-9
    t = np.clip(((z - z0) * dz + (y - y0) * dy + (x - x0) * dx) / length_sq, 0.0, 1.0)
    distance_sq = (z - z0 - t * dz) ** 2 + (y - y0 - t * dy) ** 2 + (x - x0 - t * dx) ** 2
    radius = radius_start + t * (radius_end - radius_start)
    inside = distance_sq <= radius**2
    box = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    if where is not None:
        inside &= where[box]
    volume[box][inside] = value
    if not return_mask:
        return None
    full = np.zeros(volume.shape, dtype=bool)
    full[box] = inside
    return full


def _rotate_away(direction: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at ``angle`` from ``direction``, around a random perpendicular axis."""
    perpendicular = np.cross(direction, rng.standard_normal(3))
    perpendicular /= np.linalg.norm(perpendicular) + 1e-12
    turned = np.cos(angle) * direction + np.sin(angle) * perpendicular
    return turned / np.linalg.norm(turned)


def _grow_tree(
    volume: np.ndarray,
    grid: _Grid,
    lung: np.ndarray,
    root_zyx: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: float,
    rng: np.random.Generator,
    value: float,
) -> None:
    """Paint a branching vessel tree inside ``lung`` (radius x0.78, length x0.8 per generation)."""
    stack = [(np.asarray(root_zyx, float), direction / np.linalg.norm(direction), radius, length)]
    while stack:
        start, heading, r, segment_length = stack.pop()
        end = start + heading * segment_length
        index = np.rint(grid.to_index(end)).astype(int)
        if np.any(index < 0) or np.any(index >= np.array(lung.shape)):
            continue
        thinnest = 0.5 * grid.spacing_xy  # thinner vessels are drawn as partial-volume lines
        _paint_tube(volume, grid, start, end, max(r, thinnest), max(r * 0.9, thinnest), value, lung)
        if not lung[tuple(index)] and r < 1.5:
            continue
        if r * 0.78 < 0.45:
            continue
        spread = rng.uniform(0.35, 0.7)
        for sign in (1.0, -1.0):
            child = _rotate_away(heading, sign * spread * rng.uniform(0.6, 1.0), rng)
            stack.append((end, child, r * 0.78, segment_length * rng.uniform(0.74, 0.86)))


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], factor: tuple[int, int, int]
) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: coarse Gaussian noise, upsampled linearly."""
    coarse_shape = tuple(max(2, s // f) for s, f in zip(shape, factor, strict=True))
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
    fine = ndimage.zoom(coarse, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    return fine / 2.0


def generate_phantom_scan(seed: int, index: int, size: int = 256) -> PhantomScan:
    """Build one synthetic chest CT (int16 HU, ``(z, y, x)``) with its lung labels and nodules."""
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 voxels in-plane; got {size}")
    rng = np.random.default_rng([seed, index])
    depth = int(rng.integers(100, 131))
    field_of_view = rng.uniform(330.0, 370.0)
    grid = _Grid(depth, size, field_of_view / size)
    x, y, z = grid.x, grid.y, grid.z
    height = (depth - 1) * SLICE_SPACING_MM
    shape = (depth, size, size)
    volume = np.full(shape, AIR_HU, dtype=np.float32)

    # Body outline (mm): semi-axes, body centre shifted anteriorly so the table fits below.
    body_a, body_b = rng.uniform(135, 165), rng.uniform(100, 120)
    body_y = -rng.uniform(15, 30)
    fat = rng.uniform(6, 14)
    muscle_lateral, muscle_posterior = rng.uniform(7, 11), rng.uniform(16, 22)
    taper = 1.0 - 0.12 * np.clip((z - 0.85 * height) / (0.15 * height), 0, 1)  # narrower at top

    # Scanner table: carbon shell around foam, curved, below the body.
    table_top = body_y + body_b + rng.uniform(4, 15) + 0.0006 * x**2
    table = (y >= table_top) & (y < table_top + 35)
    table_plane = np.broadcast_to(table, (1, size, size))
    volume[:, table_plane[0]] = -800.0
    shell = ((y >= table_top) & (y < table_top + 3)) | (
        (y >= table_top + 32) & (y < table_top + 35)
    )
    volume[:, np.broadcast_to(shell, (1, size, size))[0]] = 250.0

    yb = y - body_y
    body = _superellipse(x, yb, body_a * taper, body_b, 2.3)
    volume[body] = SKIN_HU
    volume[_superellipse(x, yb, body_a * taper - 2.0, body_b - 2.0, 2.3)] = FAT_HU
    muscle_inner_a = body_a * taper - fat
    inside_fat = _superellipse(x, yb, muscle_inner_a, body_b - fat, 2.3)
    volume[inside_fat] = MUSCLE_HU
    cavity_a = muscle_inner_a - muscle_lateral
    cavity_b_front, cavity_b_back = body_b - fat - 8.0, body_b - fat - muscle_posterior
    cavity_b = np.where(yb > 0, cavity_b_back, cavity_b_front).astype(np.float32)
    cavity = (x / cavity_a) ** 2 + (yb / cavity_b) ** 2 <= 1.0
    volume[cavity] = SOFT_TISSUE_HU

    # Lungs: above the diaphragm domes, below the apices, lateral to the mediastinum.
    dome_z = rng.uniform(0.12, 0.22) * height
    dome_rise = rng.uniform(20, 35)
    apex_z = rng.uniform(0.88, 0.97) * height
    mid_z = dome_z + 0.45 * (apex_z - dome_z)
    mediastinum = rng.uniform(14, 24)
    lung_centre_x = cavity_a * 0.55
    lung_y = body_y + rng.uniform(-5, 8)
    lung_b = rng.uniform(1.0, 1.15) * cavity_b_back
    spine_y = body_y + cavity_b_back - rng.uniform(8, 14)
    spine_radius = rng.uniform(15, 19)
    aorta_x, aorta_y, aorta_radius = (
        rng.uniform(18, 26),
        spine_y - spine_radius - 12,
        rng.uniform(10, 13),
    )
    heart_centre = np.array(
        [dome_z + rng.uniform(35, 55), body_y - rng.uniform(15, 30), rng.uniform(15, 30)]
    )
    heart_axes = np.array([rng.uniform(45, 60), rng.uniform(40, 50), rng.uniform(50, 65)])
    heart = (
        ((z - heart_centre[0]) / heart_axes[0]) ** 2
        + ((y - heart_centre[1]) / heart_axes[1]) ** 2
        + ((x - heart_centre[2]) / heart_axes[2]) ** 2
    ) <= 1.0
    apex_scale = np.sqrt(np.clip(1 - ((z - mid_z) / (apex_z - mid_z)) ** 2, 0, 1))
    apex_scale = np.where(z < mid_z, 1.0, apex_scale).astype(np.float32)
    lungs = np.zeros(shape, dtype=bool)
    labels = np.zeros(shape, dtype=np.uint8)
    for side, label, dome_offset in ((1.0, LEFT_LUNG_LABEL, 0.0), (-1.0, RIGHT_LUNG_LABEL, 12.0)):
        lateral = (x - side * lung_centre_x) / (lung_centre_x * 1.1)
        anteroposterior = (y - lung_y) / lung_b
        radial = lateral**2 + anteroposterior**2
        diaphragm = dome_z + dome_offset + dome_rise * np.clip(1 - radial, 0, 1)
        lung = (
            (radial <= apex_scale**2)
            & (z > diaphragm)
            & (z < apex_z)
            & (x * side > mediastinum)
            & cavity
        )
        ring = (x / (cavity_a - 3)) ** 2 + (yb / (cavity_b - 3)) ** 2 <= 1.0
        lung &= ring
        lungs |= lung
        labels[lung] = label
        # Below the dome: liver on the right, spleen and stomach on the left.
        below = cavity & (z <= diaphragm) & (x * side > -5)
        volume[below] = LIVER_HU if side < 0 else SOFT_TISSUE_HU + 5
    vertebral = ((x / (spine_radius * 1.15)) ** 2 + ((y - spine_y) / spine_radius) ** 2) <= 1.0
    aorta_column = ((x - aorta_x) ** 2 + (y - aorta_y) ** 2) <= (aorta_radius + 4) ** 2
    keep_out = heart | np.broadcast_to(
        ndimage.binary_dilation(vertebral[0], iterations=max(1, int(6 / grid.spacing_xy)))
        | aorta_column[0],
        (1, size, size),
    )
    lungs &= ~keep_out
    labels[~lungs] = 0

    texture = _smooth_noise(rng, shape, (6, 16, 16))
    gravity = 35.0 * np.clip((y - lung_y) / lung_b, -1, 1)  # posterior (dependent) lung is denser
    lung_values = LUNG_HU + gravity + 25.0 * texture
    volume[lungs] = np.broadcast_to(lung_values, shape)[lungs]

    # Heart and great vessels.
    volume[heart] = BLOOD_HU
    arch_z = min(apex_z - 25, heart_centre[0] + heart_axes[0] + rng.uniform(25, 45))
    descending_top = np.array([arch_z, aorta_y, aorta_x])
    ascending_top = np.array([arch_z + 10, body_y - 15, 5.0])
    _paint_tube(
        volume,
        grid,
        np.array([-10, aorta_y, aorta_x]),
        descending_top,
        aorta_radius,
        aorta_radius,
        BLOOD_HU,
    )
    _paint_tube(volume, grid, descending_top, ascending_top, aorta_radius, aorta_radius, BLOOD_HU)
    _paint_tube(
        volume, grid, ascending_top, heart_centre, aorta_radius + 1, aorta_radius + 1, BLOOD_HU
    )

    # Spine: vertebral bodies (cortical shell, cancellous core) with discs, canal, posterior arch.
    level = rng.uniform(24, 30)
    phase = rng.uniform(0, level)
    disc = ((z + phase) % level) < 5.0
    shell = np.broadcast_to(vertebral, shape) & ~disc
    core = ((x / (spine_radius * 1.15 - 3)) ** 2 + ((y - spine_y) / (spine_radius - 3)) ** 2) <= 1.0
    volume[shell] = CORTICAL_BONE_HU
    volume[np.broadcast_to(core, shape) & ~disc] = CANCELLOUS_BONE_HU
    volume[np.broadcast_to(vertebral, shape) & disc] = DISC_HU
    canal_y = spine_y + spine_radius + 9
    canal_distance = np.sqrt(x**2 + (y - canal_y) ** 2)
    arch = (canal_distance <= 13) & (y >= canal_y - 3)
    spinous = (np.abs(x) <= 4) & (y >= canal_y) & (y <= canal_y + 34)
    volume[np.broadcast_to(arch | spinous, shape) & ~disc] = CORTICAL_BONE_HU - 150
    volume[np.broadcast_to(canal_distance <= 8, shape)] = 15.0

    # Ribs: tubes around the chest wall from the spine to the front, sloping down anteriorly.
    rib_spacing = rng.uniform(22, 27)
    rib_a = body_a - fat - muscle_lateral + 5
    rib_b_back, rib_b_front = cavity_b_back + 5, cavity_b_front + 5
    angles = np.linspace(np.deg2rad(80), np.deg2rad(-55), 10)
    for rib_z in np.arange(dome_z - 10, height + 20, rib_spacing):
        drop = rng.uniform(30, 45)
        for side in (1.0, -1.0):
            points = []
            for k, angle in enumerate(angles):
                b = rib_b_back if np.sin(angle) > 0 else rib_b_front
                points.append(
                    [
                        rib_z - drop * k / (len(angles) - 1),
                        body_y + b * np.sin(angle),
                        side * (rib_a * np.cos(angle) + 12 * (k == 0)),
                    ]
                )
            for start, end in zip(points[:-1], points[1:], strict=True):
                _paint_tube(
                    volume, grid, np.array(start), np.array(end), 4.5, 4.5, CORTICAL_BONE_HU - 100
                )
                _paint_tube(
                    volume, grid, np.array(start), np.array(end), 2.5, 2.5, CANCELLOUS_BONE_HU
                )
    sternum = _superellipse(x, y - (body_y - cavity_b_front - 5), 14, 6, 2.0) & (z > dome_z + 20)
    volume[sternum] = CORTICAL_BONE_HU - 150

    # Trachea (air in a soft wall) down to the carina, main bronchi into the lungs (label 5).
    carina = np.array([heart_centre[0] + heart_axes[0] + rng.uniform(0, 15), body_y + 5, 0.0])
    trachea_top = np.array([height + 10, body_y - 10, 0.0])
    airway = np.zeros(shape, dtype=bool)
    _paint_tube(volume, grid, trachea_top, carina, 11.0, 11.0, SOFT_TISSUE_HU)
    airway |= _paint_tube(volume, grid, trachea_top, carina, 8.5, 8.5, AIR_HU, return_mask=True)
    hila = []
    for side in (1.0, -1.0):
        hilum = carina + np.array(
            [-rng.uniform(15, 25), rng.uniform(-5, 10), side * (mediastinum + 12)]
        )
        hila.append((side, hilum))
        _paint_tube(volume, grid, carina, hilum, 8.0, 6.5, SOFT_TISSUE_HU)
        airway |= _paint_tube(volume, grid, carina, hilum, 6.0, 4.5, AIR_HU, return_mask=True)
        # Lobar bronchi: short air tubes inside the lung.
        for _ in range(3):
            heading = _rotate_away(np.array([-0.3, 0.0, side]), rng.uniform(0.3, 1.0), rng)
            end = hilum + heading * rng.uniform(20, 35)
            _paint_tube(volume, grid, hilum, end, 3.0, 1.4, SOFT_TISSUE_HU, where=lungs)
            _paint_tube(volume, grid, hilum, end, 2.0, 0.7, AIR_HU, where=lungs)
    labels[airway & ~lungs] = TRACHEA_LABEL

    # Pulmonary vessel trees (arteries and veins) from each hilum.
    for side, hilum in hila:
        for _ in range(int(rng.integers(8, 13))):
            heading = np.array(
                [rng.uniform(-1, 1), rng.uniform(-0.6, 0.6), side * rng.uniform(0.4, 1.0)]
            )
            start = hilum + np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0])
            _grow_tree(
                volume,
                grid,
                lungs,
                start,
                heading,
                rng.uniform(2.5, 4.5),
                rng.uniform(18, 28),
                rng,
                BLOOD_HU,
            )

    # Nodules: 1-3 solid spheres, 3-30 mm, well inside a lung.
    inner = ndimage.binary_erosion(lungs, iterations=2)
    rows = []
    lung_voxels = np.argwhere(inner)
    for _ in range(int(rng.integers(1, 4))):
        diameter = float(np.exp(rng.uniform(np.log(4.0), np.log(25.0))))
        for _attempt in range(50):
            centre_index = lung_voxels[rng.integers(len(lung_voxels))]
            centre = centre_index * grid.spacing + np.array([0.0, grid.y.min(), grid.x.min()])
            reach = (diameter / 2 + 3) / grid.spacing
            low = np.floor(centre_index - reach).astype(int)
            high = np.ceil(centre_index + reach).astype(int) + 1
            if np.any(low < 0) or np.any(high > np.array(shape)):
                continue
            if inner[tuple(slice(a, b) for a, b in zip(low, high, strict=True))].mean() > 0.9:
                break
        z_mm, y_mm, x_mm = (grid.z, grid.y, grid.x)
        nodule = ((z_mm - centre[0]) ** 2 + (y_mm - centre[1]) ** 2 + (x_mm - centre[2]) ** 2) <= (
            diameter / 2
        ) ** 2
        volume[nodule & lungs] = NODULE_HU
        rows.append((centre_index, diameter))

    # Partial volume, noise, field of view.
    volume = ndimage.gaussian_filter(volume, sigma=(0.4, 0.7, 0.7), mode="nearest")
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6))
    noise *= rng.uniform(12, 18) / max(float(noise.std()), 1e-6)
    volume += noise
    field = (x**2 + y**2) > (field_of_view / 2) ** 2
    volume[np.broadcast_to(field, shape)] = OUT_OF_FIELD_HU
    hu = np.clip(np.rint(volume), -3024, 3071).astype(np.int16)

    origin = (
        -field_of_view / 2 + rng.uniform(-10, 10),
        -field_of_view / 2 + rng.uniform(-20, 10),
        -rng.uniform(250, 380),
    )
    spacing = (grid.spacing_xy, grid.spacing_xy, SLICE_SPACING_MM)
    nodules = pd.DataFrame(
        [
            {
                "coordX": origin[0] + index_zyx[2] * spacing[0],
                "coordY": origin[1] + index_zyx[1] * spacing[1],
                "coordZ": origin[2] + index_zyx[0] * spacing[2],
                "diameter_mm": diameter,
            }
            for index_zyx, diameter in rows
        ]
    )
    return PhantomScan(
        seriesuid=phantom_uid(seed, index),
        hu=hu,
        labels=labels,
        spacing_xyz_mm=spacing,
        origin_xyz_mm=origin,
        nodules=nodules,
    )


def _write_mhd(array: np.ndarray, scan: PhantomScan, path: Path, compress: bool) -> None:
    image = sitk.GetImageFromArray(array)  # (z, y, x) -> SimpleITK (x, y, z)
    image.SetSpacing(scan.spacing_xyz_mm)
    image.SetOrigin(scan.origin_xyz_mm)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=compress)


def _false_candidates(scan: PhantomScan, rng: np.random.Generator, count: int) -> list[dict]:
    """Candidate points that are not nodules: random lung voxels (vessels, parenchyma)."""
    lung_voxels = np.argwhere(scan.labels == LEFT_LUNG_LABEL) if count else np.empty((0, 3))
    right = np.argwhere(scan.labels == RIGHT_LUNG_LABEL)
    lung_voxels = np.concatenate([lung_voxels, right]) if count else lung_voxels
    rows = []
    for index_zyx in (
        lung_voxels[rng.integers(len(lung_voxels), size=count)] if len(lung_voxels) else []
    ):
        rows.append(
            {
                "seriesuid": scan.seriesuid,
                "coordX": scan.origin_xyz_mm[0] + index_zyx[2] * scan.spacing_xyz_mm[0],
                "coordY": scan.origin_xyz_mm[1] + index_zyx[1] * scan.spacing_xyz_mm[1],
                "coordZ": scan.origin_xyz_mm[2] + index_zyx[0] * scan.spacing_xyz_mm[2],
                "class": 0,
            }
        )
    return rows


def _prepare_output(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"phantom output {out_dir} exists and is not a folder; choose a folder")
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not (out_dir / MARKER_FILE).is_file() and not force:
        raise FileExistsError(
            f"{out_dir} is not empty and holds no phantom ({MARKER_FILE} missing); choose an "
            f"empty folder, or pass force=True (--force) to write the phantom's files into it"
        )
    for name in _PHANTOM_ENTRIES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    ensure_writable_dir(out_dir)


def write_phantom_dataset(
    out_dir: str | Path, scans: int = 4, seed: int = 0, size: int = 256, *, force: bool = False
) -> list[str]:
    """Write ``scans`` synthetic chest CTs in the LUNA16 layout under ``out_dir``; return their uids.

    An existing phantom in ``out_dir`` (it has ``phantom.json``) is replaced. A non-empty folder
    that is not a phantom is refused (``FileExistsError``) unless ``force``: then the phantom's
    entries (subset0/, seg-lungs-LUNA16/, the CSV files) are replaced and other files left alone.
    """
    if isinstance(scans, bool) or not isinstance(scans, int) or scans < 1:
        raise ValueError(f"scans must be an integer >= 1; got {scans!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 10**6:
        raise ValueError(f"seed must be an integer in [0, 999999]; got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 1024:
        raise ValueError(f"size must be an integer in [32, 1024] voxels; got {size!r}")
    out_dir = Path(out_dir)
    _prepare_output(out_dir, force)
    subset = ensure_writable_dir(out_dir / "subset0")
    masks = ensure_writable_dir(out_dir / LUNG_MASK_FOLDER)
    annotations, candidates, uids = [], [], []
    rng = np.random.default_rng([seed, 10**6])
    for index in range(scans):
        scan = generate_phantom_scan(seed, index, size)
        _write_mhd(scan.hu, scan, subset / f"{scan.seriesuid}.mhd", compress=False)
        _write_mhd(scan.labels, scan, masks / f"{scan.seriesuid}.mhd", compress=True)
        for row in scan.nodules.itertuples(index=False):
            nodule = {"seriesuid": scan.seriesuid, **row._asdict()}
            annotations.append(nodule)
            candidates.append(
                {**{k: nodule[k] for k in ("seriesuid", "coordX", "coordY", "coordZ")}, "class": 1}
            )
        candidates.extend(_false_candidates(scan, rng, count=int(rng.integers(5, 11))))
        uids.append(scan.seriesuid)
        log.info(
            "phantom scan %d/%d: %s, shape %s", index + 1, scans, scan.seriesuid, scan.hu.shape
        )
    pd.DataFrame(
        annotations, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    ).to_csv(out_dir / "annotations.csv", index=False)
    pd.DataFrame(candidates, columns=["seriesuid", "coordX", "coordY", "coordZ", "class"]).to_csv(
        out_dir / "candidates.csv", index=False
    )
    (out_dir / MARKER_FILE).write_text(
        json.dumps({"scans": scans, "seed": seed, "size": size, "seriesuids": uids}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return uids
