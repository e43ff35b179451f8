"""How much memory a sampling request needs, and how much the machine has.

``ctgan sample --scale`` multiplies every axis of every noise map: a factor of 100 asks for a
million times the voxels, and torch's allocator then fails with a traceback deep inside a
convolution. The CLI checks :func:`sampling_bytes` against :func:`available_bytes` first.

The estimate (measured on this 2 vCPU AMD EPYC machine with peak RSS, untrained pyramids, widths
8-32, outputs (10, 63, 63) to (40, 252, 252)): the finest 3D level holds about 19-28 bytes per
output voxel per generator channel per volume of the batch in float32 (``_BYTES_3D`` = 32 keeps a
margin), the 2D generator about 47 bytes per in-plane pixel and channel (``_BYTES_2D`` = 64); bf16
autocast on a CPU without native bf16 measured 80 (x4, ``_BF16_CPU_FACTOR``). On top: the noise of
every level for all ``n`` volumes (float32) and the returned volumes (float32, one copy while they
are concatenated, int16 while exported).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

_BYTES_3D = 32
_BYTES_2D = 64
_BF16_CPU_FACTOR = 4
_PADDING = 5  # the 3D generator pads its input by 5 voxels on every side (ctgan.nets)

Shape3 = Sequence[int]

GIB = 2**30


def sampling_bytes(
    shape: Shape3,
    *,
    levels: Sequence[Shape3],
    channels: int,
    model: str,
    n: int,
    batch_size: int,
    precision: str,
    device: str,
) -> int:
    """Bytes a request for ``n`` volumes of ``shape`` (z, y, x) needs at its peak.

    ``levels``: the (z, y, x) shape of every level, finest last; ``channels``: the generator
    width; ``precision``: float32 | bf16; ``device``: cpu | cuda."""
    if model not in ("3d", "2d"):
        raise ValueError(f"model must be 3d or 2d; got {model!r}")
    depth, height, width = (int(v) for v in shape)
    batch = min(int(batch_size), int(n))
    if model == "3d":
        padded = math.prod(int(v) + 2 * _PADDING for v in shape)
        activations = batch * channels * padded * _BYTES_3D
    else:
        activations = batch * channels * height * width * _BYTES_2D
    if precision == "bf16" and device == "cpu":
        activations *= _BF16_CPU_FACTOR
    noise = n * sum(math.prod(int(v) for v in level) for level in levels) * 4
    volumes = n * depth * height * width * (4 + 4 + 2)
    return int(activations + noise + volumes)


def available_bytes(device: str) -> int:
    """Memory the request may use: free GPU memory on ``cuda``, else ``MemAvailable`` (Linux),
    else the physical memory."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
