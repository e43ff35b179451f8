"""Atomic writes and JSON helpers."""

from __future__ import annotations

import os
import stat

import pytest

from ctgan.io import atomic_write, ensure_writable_dir, read_json, write_json


def test_atomic_write_renames_on_success_with_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "volume.nii.gz"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert list(target.parent.iterdir()) == [target]


def test_atomic_write_leaves_nothing_under_the_final_name_on_failure(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_removes_a_temporary_file_left_by_a_killed_process(tmp_path):
    stale = tmp_path / ".checkpoint.abc123.tmp.pt"
    stale.write_bytes(b"half-written")
    other = tmp_path / ".history.abc123.tmp.tsv"
    other.write_bytes(b"not ours")
    with atomic_write(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"new")
    assert not stale.exists() and other.exists()


def test_json_round_trip(tmp_path):
    path = write_json(tmp_path / "m.json", {"psnr": 20.5, "seeds": [0, 1]})
    assert read_json(path) == {"psnr": 20.5, "seeds": [0, 1]}


def test_read_json_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.json not found"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON .*delete it and rerun"):
        read_json(bad)


def test_output_folder_that_is_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises((NotADirectoryError, PermissionError), match=r"afile"):
        ensure_writable_dir(afile)
    with pytest.raises((NotADirectoryError, PermissionError), match=r"afile"):
        ensure_writable_dir(afile / "sub")
