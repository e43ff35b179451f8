"""The LUNA16 layout: scans by SeriesInstanceUID, annotations, candidates, lung masks, world <-> voxel.

A LUNA16 folder holds ``subset*/<seriesuid>.mhd`` (+ ``.raw`` or ``.zraw``), ``annotations.csv``
(seriesuid, coordX, coordY, coordZ, diameter_mm; world millimetres), optionally ``candidates.csv``
(seriesuid, coordX, coordY, coordZ, class) and ``seg-lungs-LUNA16/<seriesuid>.mhd`` lung masks
(label 3 = left lung, 4 = right lung, 5 = trachea and main bronchi, as in the LUNA16 masks). The CSV
files may also sit in a ``CSVFILES/`` sub-folder, as in some downloads.

This module is the one place where SimpleITK images become numpy: arrays are ``(z, y, x)`` as
``GetArrayFromImage`` returns them, while spacing, origin and direction stay in SimpleITK order
``(x, y, z)``. Files are only read, never modified.

Annotation rows whose seriesuid matches no scan of the folder are normal in a partial LUNA16
download (annotations.csv lists all ten subsets): :meth:`Luna16Folder.annotations` logs a warning
and keeps them by default, and raises ``ValueError`` with ``strict=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # imported where files are read, so that a machine without SimpleITK
    import SimpleITK as sitk  # can still import ctgan.preprocess (load_pyramid) and the rest

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
LUNG_MASK_FOLDER = "seg-lungs-LUNA16"
LEFT_LUNG_LABEL = 3
RIGHT_LUNG_LABEL = 4
TRACHEA_LABEL = 5
_MAX_LISTED = 10


@dataclass(frozen=True)
class Scan:
    """One volume: ``array`` is ``(z, y, x)`` as stored; geometry in SimpleITK order ``(x, y, z)``."""

    array: np.ndarray
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 floats, row-major 3x3
    path: Path

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx_mm(self) -> tuple[float, float, float]:
        return (self.spacing_xyz_mm[2], self.spacing_xyz_mm[1], self.spacing_xyz_mm[0])


def _listing(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _voxel_file(header: Path) -> Path | None:
    """The ElementDataFile a MetaImage header names (None for LOCAL or a file list)."""
    text = header.read_text(encoding="latin-1")
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value.upper() == "LOCAL" or value.upper().startswith("LIST") or "%" in value:
                return None
            return header.parent / value
    raise ValueError(
        f"{header} is not a MetaImage header: it has no ElementDataFile line; expected a .mhd "
        f"file written as in LUNA16"
    )


def _check_readable(path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"scan header {path} not found; expected a MetaImage .mhd file (LUNA16 layout: "
            f"subset*/<seriesuid>.mhd)"
        )
    if path.suffix.lower() == ".mhd":
        voxel_file = _voxel_file(path)
        if voxel_file is not None and not voxel_file.is_file():
            raise FileNotFoundError(
                f"voxel file {voxel_file} named by header {path} is missing; copy the .raw/.zraw "
                f"file beside its header"
            )


def read_image(path: str | Path) -> sitk.Image:
    """Read an image with SimpleITK, turning its errors into a ValueError naming the file."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = _size_mismatch(path)
        if reason is None:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
            # SimpleITK appends a stale errno ("No such file or directory") to errors about files
            # that exist: it would send the user looking for a missing file
            reason = "" if "No such file or directory" in reason else reason
            reason = f"SimpleITK: {reason}" if reason else "SimpleITK could not read the voxels"
        raise ValueError(
            f"cannot read {path}: the voxel file is corrupt or truncated ({reason}); "
            f"download or copy the scan again"
        ) from err


_ELEMENT_BYTES = {"CHAR": 1, "SHORT": 2, "INT": 4, "LONG": 8, "FLOAT": 4, "DOUBLE": 8}


def _size_mismatch(header: Path) -> str | None:
    """For an uncompressed .mhd whose voxel file is smaller than DimSize x ElementType says, a
    sentence saying so (None when the sizes agree or the header cannot tell)."""
    if header.suffix.lower() != ".mhd":
        return None
    fields = {}
    for line in header.read_text(encoding="latin-1").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    element = fields.get("ElementType", "").removeprefix("MET_").removeprefix("U")
    voxel_file = _voxel_file(header)
    if voxel_file is not None and fields.get("CompressedData", "False") != "False":
        return _compressed_mismatch(fields, voxel_file)
    if element not in _ELEMENT_BYTES:
        return None
    if voxel_file is None or "DimSize" not in fields:
        return None
    expected = int(np.prod([int(v) for v in fields["DimSize"].split()])) * _ELEMENT_BYTES[element]
    actual = voxel_file.stat().st_size
    if actual >= expected:
        return None
    return (
        f"header DimSize {fields['DimSize']} x {fields['ElementType']} needs {expected} bytes, "
        f"{voxel_file.name} holds {actual}"
    )


def _compressed_mismatch(fields: dict[str, str], voxel_file: Path) -> str:
    """Why a compressed (.zraw) voxel file cannot be read: its size against the header's
    CompressedDataSize when the header gives one, else that it does not decompress."""
    actual = voxel_file.stat().st_size
    declared = fields.get("CompressedDataSize", "")
    if declared.isdigit() and actual != int(declared):
        return (
            f"the compressed voxel file {voxel_file.name} holds {actual} bytes, the header's "
            f"CompressedDataSize is {declared}"
        )
    return (
        f"the compressed voxel file {voxel_file.name} ({actual} bytes) does not decompress to "
        f"DimSize {fields.get('DimSize', '?')} x {fields.get('ElementType', '?')}"
    )


def read_image_information(path: str | Path) -> sitk.ImageFileReader:
    """The header of an image (size, spacing, origin, direction) without reading its voxels."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"cannot read the header of {path}: {err}") from err
    return reader


def scan_from_image(image: sitk.Image, path: Path) -> Scan:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    return Scan(
        array=array,
        spacing_xyz_mm=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin_xyz_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
        path=Path(path),
    )


def read_scan(path: str | Path) -> Scan:
    """Read a .mhd (+ .raw / .zraw) volume; the array is ``(z, y, x)`` exactly as stored."""
    path = Path(path)
    return scan_from_image(read_image(path), path)


# ---------------------------------------------------------------------------------------------
# World millimetres <-> continuous voxel indices (x, y, z), for any direction matrix:
# world = origin + direction @ (index * spacing)   (ITK's TransformContinuousIndexToPhysicalPoint)


def _geometry(
    origin: Any, spacing: Any, direction: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    origin_array = np.asarray(origin, dtype=np.float64).reshape(3)
    spacing_array = np.asarray(spacing, dtype=np.float64).reshape(3)
    direction_array = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if np.any(spacing_array <= 0):
        raise ValueError(f"spacing must be > 0 in x, y and z; got {spacing_array.tolist()}")
    if abs(np.linalg.det(direction_array)) < 1e-9:
        raise ValueError(
            f"direction must be an invertible 3x3 matrix (9 floats); got {direction_array.tolist()}"
        )
    return origin_array, spacing_array, direction_array


def world_to_voxel(
    points_xyz_mm: Any,
    origin_xyz_mm: Any,
    spacing_xyz_mm: Any,
    direction: Any = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> np.ndarray:
    """World points ``(..., 3)`` in mm (x, y, z) -> continuous voxel indices ``(..., 3)`` (x, y, z)."""
    origin, spacing, matrix = _geometry(origin_xyz_mm, spacing_xyz_mm, direction)
    points = np.asarray(points_xyz_mm, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3) (x, y, z in mm); got {points.shape}")
    return (
        np.linalg.solve(matrix, (points - origin).reshape(-1, 3).T).T.reshape(points.shape)
        / spacing
    )


def voxel_to_world(
    index_xyz: Any,
    origin_xyz_mm: Any,
    spacing_xyz_mm: Any,
    direction: Any = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> np.ndarray:
    """Continuous voxel indices ``(..., 3)`` (x, y, z) -> world points ``(..., 3)`` in mm."""
    origin, spacing, matrix = _geometry(origin_xyz_mm, spacing_xyz_mm, direction)
    index = np.asarray(index_xyz, dtype=np.float64)
    if index.shape[-1:] != (3,):
        raise ValueError(f"indices must have shape (..., 3) (x, y, z); got {index.shape}")
    return (index * spacing) @ matrix.T + origin


# ---------------------------------------------------------------------------------------------


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse {path} as CSV ({err}); expected columns {columns}") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"expected {', '.join(columns)}, found {', '.join(map(str, table.columns)) or 'none'}"
        )
    table = table.loc[:, list(columns)].copy()
    table["seriesuid"] = table["seriesuid"].astype(str)
    for column in columns[1:]:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise ValueError(
                f"{path}: column {column} must be numeric; row {row + 2} holds "
                f"{table[column].iloc[row]!r}"
            )
        table[column] = values
    return table


class Luna16Folder:
    """A folder in the LUNA16 layout (read-only)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"LUNA16 folder {self.root} not found; put LUNA16 there (subset*/<seriesuid>.mhd) "
                f"or point data.luna16_dir at your download, or set data.source: phantom (or "
                f"write a phantom there with `ctgan phantom {self.root}`)"
            )
        self._scans = {
            path.stem: path
            for path in sorted(self.root.glob("subset*/*.mhd"))
            if path.parent.is_dir()
        }

    def __repr__(self) -> str:
        return f"Luna16Folder({str(self.root)!r}, scans={len(self._scans)})"

    def seriesuids(self) -> list[str]:
        """The SeriesInstanceUIDs of all scans under ``subset*/``, sorted."""
        return sorted(self._scans)

    def find_scan(self, seriesuid: str) -> Path:
        """The .mhd header of a scan."""
        if seriesuid not in self._scans:
            raise ValueError(
                f"seriesuid {seriesuid!r} is not in {self.root} (looked in subset*/*.mhd); "
                f"available: {_listing(self.seriesuids())}"
            )
        return self._scans[seriesuid]

    def read_scan(self, seriesuid: str) -> Scan:
        return read_scan(self.find_scan(seriesuid))

    def _csv_path(self, name: str) -> Path | None:
        for candidate in (self.root / name, self.root / "CSVFILES" / name):
            if candidate.is_file():
                return candidate
        return None

    def _check_uids(self, table: pd.DataFrame, path: Path, strict: bool) -> None:
        unmatched = sorted(set(table["seriesuid"]) - set(self._scans))
        if not unmatched:
            return
        message = (
            f"{path}: {len(unmatched)} seriesuid(s) match no scan under {self.root}/subset*/: "
            f"{_listing(unmatched)}"
        )
        if strict:
            raise ValueError(
                f"{message}; expected every row to name a scan of this folder (fix the CSV or "
                f"add the missing subsets)"
            )
        log.warning("%s; their rows are kept but cannot be used", message)

    def annotations(self, seriesuid: str | None = None, *, strict: bool = False) -> pd.DataFrame:
        """Nodule annotations (world mm): all rows, or those of one scan (empty when it has none).

        No annotations.csv means no nodules (an empty table). Rows naming no scan of the folder
        are logged (``strict=True``: ``ValueError``).
        """
        path = self._csv_path("annotations.csv")
        if path is None:
            table = pd.DataFrame({c: pd.Series(dtype=float) for c in ANNOTATION_COLUMNS})
            table["seriesuid"] = table["seriesuid"].astype(str)
        else:
            table = _read_csv(path, ANNOTATION_COLUMNS)
            self._check_uids(table, path, strict)
            bad = table["diameter_mm"] <= 0
            if bad.any():
                raise ValueError(
                    f"{path}: diameter_mm must be > 0; row {int(np.flatnonzero(bad)[0]) + 2} "
                    f"holds {table['diameter_mm'][bad].iloc[0]}"
                )
        if seriesuid is not None:
            self.find_scan(seriesuid)
            table = table[table["seriesuid"] == seriesuid].reset_index(drop=True)
        return table

    def candidates(
        self, seriesuid: str | None = None, *, strict: bool = False
    ) -> pd.DataFrame | None:
        """candidates.csv (world mm, class 1 = nodule, 0 = not), None when the folder has none."""
        path = self._csv_path("candidates.csv")
        if path is None:
            return None
        table = _read_csv(path, CANDIDATE_COLUMNS)
        self._check_uids(table, path, strict)
        if seriesuid is not None:
            self.find_scan(seriesuid)
            table = table[table["seriesuid"] == seriesuid].reset_index(drop=True)
        return table

    def lung_mask_path(self, seriesuid: str) -> Path | None:
        path = self.root / LUNG_MASK_FOLDER / f"{seriesuid}.mhd"
        return path if path.is_file() else None

    def lung_mask(self, seriesuid: str) -> Scan | None:
        """The official lung mask (labels 3, 4, 5) or None; its geometry must equal the scan's."""
        scan_path = self.find_scan(seriesuid)
        path = self.lung_mask_path(seriesuid)
        if path is None:
            return None
        mask = read_scan(path)
        check_same_geometry(mask, read_image_information(scan_path), path, scan_path)
        return mask

    def summary(self) -> dict[str, Any]:
        """What the folder holds: scans per subset, annotation/candidate rows, lung masks."""
        subsets: dict[str, int] = {}
        for path in self._scans.values():
            subsets[path.parent.name] = subsets.get(path.parent.name, 0) + 1
        annotations = self._csv_path("annotations.csv")
        candidates = self._csv_path("candidates.csv")
        masks = sorted(p.stem for p in (self.root / LUNG_MASK_FOLDER).glob("*.mhd"))
        return {
            "root": str(self.root),
            "scans": len(self._scans),
            "subsets": dict(sorted(subsets.items())),
            "annotation_rows": 0 if annotations is None else len(pd.read_csv(annotations)),
            "candidate_rows": None if candidates is None else len(pd.read_csv(candidates)),
            "lung_masks": len(masks),
            "scans_with_lung_mask": len(set(masks) & set(self._scans)),
        }


def check_same_geometry(
    mask: Scan, reference: sitk.ImageFileReader | Scan, mask_path: Path, scan_path: Path
) -> None:
    """Raise ValueError when a mask's size, spacing, origin or direction differ from its scan's."""
    if isinstance(reference, Scan):
        size = tuple(reversed(reference.shape_zyx))
        spacing, origin, direction = (
            reference.spacing_xyz_mm,
            reference.origin_xyz_mm,
            reference.direction,
        )
    else:
        size = tuple(int(v) for v in reference.GetSize())
        spacing, origin, direction = (
            reference.GetSpacing(),
            reference.GetOrigin(),
            reference.GetDirection(),
        )
    mask_size = tuple(reversed(mask.shape_zyx))
    problems = []
    if mask_size != size:
        problems.append(f"size (x, y, z) {mask_size} != {size}")
    if not np.allclose(mask.spacing_xyz_mm, spacing, atol=1e-3):
        problems.append(f"spacing {mask.spacing_xyz_mm} != {tuple(spacing)}")
    if not np.allclose(mask.origin_xyz_mm, origin, atol=1e-2):
        problems.append(f"origin {mask.origin_xyz_mm} != {tuple(origin)}")
    if not np.allclose(mask.direction, direction, atol=1e-4):
        problems.append(f"direction {mask.direction} != {tuple(direction)}")
    if problems:
        raise ValueError(
            f"lung mask {mask_path} does not match its scan {scan_path}: {'; '.join(problems)}; "
            f"expected the mask on the scan's voxel grid"
        )
