"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch


def cpu_flags() -> tuple[str, float | None, set[str]]:
    """(CPU model name, reported clock in MHz, instruction-set flags) from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return "unknown", None, set()
    text = cpuinfo.read_text()
    name = re.search(r"model name\s*:\s*(.+)", text)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    flags = re.search(r"flags\s*:\s*(.+)", text)
    return (
        name.group(1).strip() if name else "unknown",
        float(mhz.group(1)) if mhz else None,
        set(flags.group(1).split()) if flags else set(),
    )


def machine_info() -> dict[str, object]:
    """CPU, cores, torch version, intra-op threads, Python, GPU and the 1-minute load average."""
    cpu, _, _ = cpu_flags()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def measured_peak_gflops(
    size: int = 4096, repeats: int = 5, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` matrix product per precision (best of ``repeats`` after a
    warm-up), with torch's current thread count on the CPU or on ``device`` (CUDA: timed between
    synchronisations): the practical peak the convolutions compare with.
    Keys: bf16, float32, float64 (the ``reference`` numerics); on CUDA also tf32 (float32 inputs
    with ``torch.set_float32_matmul_precision("high")``, what cuDNN's float32 convolutions use
    while ``torch.backends.cudnn.allow_tf32`` is on; "float32" is then full float32)."""
    device = torch.device(device)
    cases = [("bf16", torch.bfloat16, None), ("float32", torch.float32, "highest")]
    if device.type == "cuda":
        cases.append(("tf32", torch.float32, "high"))
    cases.append(("float64", torch.float64, None))
    saved = torch.get_float32_matmul_precision()
    result = {}
    try:
        for name, dtype, matmul_precision in cases:
            if matmul_precision is not None:
                torch.set_float32_matmul_precision(matmul_precision)
            a = torch.randn(size, size).to(device=device, dtype=dtype)
            b = torch.randn(size, size).to(device=device, dtype=dtype)
            a @ b
            best = float("inf")
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                a @ b
                _synchronize(device)
                best = min(best, time.perf_counter() - start)
            result[name] = round(2 * size**3 / best / 1e9, 1)
    finally:
        torch.set_float32_matmul_precision(saved)
    return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
