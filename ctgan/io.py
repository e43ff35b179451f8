"""Small file helpers: atomic writes (temporary name in the same folder, then rename) and JSON."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"output path {path} exists and is not a folder; remove it or choose another folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"cannot create output folder {path}: {err.strerror}; choose a folder you can write to"
        ) from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(
            f"output folder {path} is not writable; choose a folder you can write to"
        )
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    An interrupted write therefore never leaves a half-written file under the final name; the
    temporary file a killed process left behind is removed by the next write of the same file. The
    temporary name keeps the final suffix (``suffix`` overrides it) so that writers that pick a
    format from the extension (SimpleITK: ``.nii.gz``, ``.mha``) still work.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    prefix = f".{path.name.split('.')[0]}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)  # left by a process killed mid-write: never a final file
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it and rerun the stage that writes it"
        ) from err
