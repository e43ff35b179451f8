"""ctgan.runtime: inside freed_memory_kept, big freed blocks are reused without page faults."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

import ctgan.runtime as runtime
from ctgan.runtime import freed_memory_kept

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def faults_of_one_big_tensor() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.ones(64 * 2**20 // 4)  # 64 MB, above glibc's 32 MB mmap limit
    del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_big_blocks_are_reused_inside_and_mapped_afresh_after() -> None:
    with freed_memory_kept() as applied:
        assert applied is True
        with freed_memory_kept() as nested:  # nesting keeps the setting
            assert nested is True
        # the heap grows for the first few (torch's aligned allocations leave gaps), then
        # settles; with a fresh mmap each time, every one would fault in its 16384 pages again
        for _ in range(12):
            faults_of_one_big_tensor()
        assert sum(faults_of_one_big_tensor() for _ in range(5)) < 1000
    assert runtime._depth == 0
    # glibc's defaults are back: a big block is an mmap again, faulted in page by page
    assert faults_of_one_big_tensor() > 10000


def test_disabled_or_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with freed_memory_kept(enabled=False) as applied:
        assert applied is False
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    with freed_memory_kept() as applied:
        assert applied is False
    assert runtime._depth == 0
