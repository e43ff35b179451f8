"""Hounsfield units <-> the networks' range <-> the paper's metric scale.

Three scales, one place:
- HU: what the scanner and the exported files hold. Out-of-field voxels (-2048 in many LUNA16
  scans) and everything outside the paper's window are clipped to [HU_MIN, HU_MAX] = [-1000, 1000].
- network range [-1, 1]: x = clip(HU, -1000, 1000) / 1000. Centred, so that it matches the tanh
  output of the generators (the seed fed [0, 1] data into a tanh range; ctgan-facts §14).
- paper scale [0, 1]: p = (x + 1) / 2 = (HU + 1000) / 2000, the seed's normalisation; every
  MSE/PSNR/SSIM is computed on this scale, with PSNR peak 1.
"""

from __future__ import annotations

import numpy as np
import torch

HU_MIN = -1000.0
HU_MAX = 1000.0
OUT_OF_FIELD_HU = -2048.0  # the out-of-field value of many LUNA16 scans; clipped like air

Array = np.ndarray | torch.Tensor


def hu_to_network(hu: Array) -> Array:
    """HU -> [-1, 1]: clip to [-1000, 1000] HU, divide by 1000 (float32 for numpy input)."""
    if isinstance(hu, torch.Tensor):
        return (hu.clamp(HU_MIN, HU_MAX) - (HU_MAX + HU_MIN) / 2) / ((HU_MAX - HU_MIN) / 2)
    hu = np.asarray(hu, dtype=np.float32)
    return ((np.clip(hu, HU_MIN, HU_MAX) - (HU_MAX + HU_MIN) / 2) / ((HU_MAX - HU_MIN) / 2)).astype(
        np.float32
    )


def network_to_hu(x: Array) -> Array:
    """[-1, 1] -> HU (float); values outside [-1, 1] are clipped first."""
    if isinstance(x, torch.Tensor):
        return x.clamp(-1, 1) * ((HU_MAX - HU_MIN) / 2) + (HU_MAX + HU_MIN) / 2
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x, -1, 1) * ((HU_MAX - HU_MIN) / 2) + (HU_MAX + HU_MIN) / 2


def network_to_hu_int16(x: Array) -> np.ndarray:
    """[-1, 1] -> int16 HU, rounded: what exported volumes hold."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.rint(network_to_hu(x)).astype(np.int16)


def network_to_paper(x: Array) -> Array:
    """[-1, 1] -> the paper's metric scale [0, 1] = (HU + 1000) / 2000, clipped."""
    if isinstance(x, torch.Tensor):
        return ((x + 1) / 2).clamp(0, 1)
    return np.clip((np.asarray(x, dtype=np.float32) + 1) / 2, 0, 1)
