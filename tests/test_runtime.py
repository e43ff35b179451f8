"""ctgan.runtime: glibc's malloc keeps freed memory, so big activations stop page-faulting."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from ctgan.runtime import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_freed_memory_reuses_big_blocks_without_page_faults() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent

    def faults_of_one_big_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensor = torch.ones(64 * 2**20 // 4)  # 64 MB, above glibc's 32 MB mmap limit
        del tensor
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # the heap grows for the first few (torch's aligned allocations leave gaps), then settles;
    # with a fresh mmap every time, each would fault in all 16384 pages of 4 KB again
    for _ in range(12):
        faults_of_one_big_tensor()
    assert sum(faults_of_one_big_tensor() for _ in range(5)) < 1000


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctgan.runtime as runtime

    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    assert runtime.keep_freed_memory() is False
