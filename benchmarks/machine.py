"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
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
