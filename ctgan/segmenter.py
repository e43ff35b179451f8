"""The frozen segmenter behind the segmentation term: a small 3D U-Net for lungs and nodules.

This module: the network, its file (save / load) and whole-volume prediction. Its training data
and crops are in ``ctgan.segmenter_data``, its training and Dice in ``ctgan.segmenter_train``.

In the seed the segmentation term runs a TensorFlow V-Net on numpy copies of the volumes, so it
carries no gradient (ctgan-facts §4, §6.3). Here a PyTorch U-Net is trained inside the pipeline on
crops of the active data source, then frozen; the term backpropagates through it into the
generator while its weights never change.

What it sees. The segmentation term takes the same random crop of the generated and of the real
volume (in-plane int(S/2), depth int(S/12): half the extent of the volume along every axis) and
resizes it trilinearly to ``crop_size``. The segmenter is trained on exactly that kind of input:
crops covering a fraction of the scan along each axis (the GAN's 0.5, random fractions, crops
around nodules), taken at the original resolution and at the training resolution(s), resized to
``crop_size``, with flips and small intensity shifts. Inputs are in the networks' range [-1, 1]
(``ctgan.intensity``); outputs are logits of two channels, 0 = lungs and 1 = nodules.

Architecture. ``levels`` resolutions, two 3x3x3 convolutions + InstanceNorm + LeakyReLU each,
max-pooling (1, 2, 2) between them: the crops are thin along depth (8-16 voxels covering about
half the scan's length, i.e. much coarser voxels than in-plane), so only the in-plane axes are
pooled. Any depth >= 1 is accepted; H and W must be >= 2**levels. The head also sees the raw
input, because InstanceNorm removes each crop's absolute intensity (air -1000 HU vs lung -850
HU). InstanceNorm has no running statistics, so the network computes the same function in train
and in eval mode (a parent module calling ``.train()`` cannot change it).

Encoder features (the evaluation's Fréchet distance): :meth:`Segmenter.encoder_features` gives
the global-average-pooled bottleneck, ``(N, C)``, for volumes ``(N, 1, D, H, W)`` or for 2D
slices ``(N, 1, H, W)`` (each fed as a thin slab of 3 copies of itself).

Whole volumes (figures, the real-scan agreement check): :func:`predict_volume` resizes the
volume so that a crop of ``crop_size`` covers half of it along every axis (the GAN's crop
fraction), runs overlapping windows, averages their probabilities and resizes back;
:func:`largest_lung_components` applies the classical mask's two-largest-components rule.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ctgan.config import SegmenterConfig
from ctgan.io import atomic_write
from ctgan.layers import Conv3d, InstanceNorm3d, load_weights

if TYPE_CHECKING:  # matplotlib only for prediction_figure: training runs without it
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHANNELS = ("lungs", "nodules")
# The segmentation term's crop covers half of every axis: int(S/2) of S in-plane, int(S/12) of S/6.
GAN_CROP_FRACTION = 0.5
RANDOM_CROP_FRACTIONS = (0.3, 0.8)  # extent of the random crops, as a fraction of each axis
SLICE_SLAB_DEPTH = 3  # a 2D slice is fed to the encoder as a slab of 3 copies of itself

Array = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------
# The network.


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
        InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.2),
        Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
        InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.2),
    )


class Segmenter(nn.Module):
    """A small 3D U-Net: (N, in_channels, D, H, W) in [-1, 1] -> logits (N, out_channels, D, H, W).

    ``levels`` resolutions with ``base_channels * 2**level`` channels; pooling (1, 2, 2).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        base_channels: int = 8,
        levels: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Segmenter {name} must be an integer >= 1; got {value!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"Segmenter levels must be an integer >= 2; got {levels!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.levels = levels
        widths = [base_channels * 2**level for level in range(levels)]
        self.encoder = nn.ModuleList(
            _conv_block(in_channels if level == 0 else widths[level - 1], widths[level])
            for level in range(levels)
        )
        self.decoder = nn.ModuleList(
            _conv_block(widths[level + 1] + widths[level], widths[level])
            for level in reversed(range(levels - 1))
        )
        # The head also sees the raw input: InstanceNorm removes each crop's absolute intensity
        # level, which is what tells air (-1000 HU) from lung (-850 HU).
        self.head = nn.Sequential(
            Conv3d(widths[0] + in_channels, widths[0], kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
            Conv3d(widths[0], out_channels, kernel_size=1),
        )

    @property
    def architecture(self) -> dict[str, int]:
        """The ints that rebuild this network (saved with its weights)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "levels": self.levels,
        }

    @property
    def minimum_size(self) -> tuple[int, int, int]:
        """Smallest (D, H, W) accepted: in-plane 2**levels, so the bottleneck keeps 2x2 voxels."""
        return (1, 2**self.levels, 2**self.levels)

    @property
    def feature_channels(self) -> int:
        """C of :meth:`encoder_features` (the bottleneck's width)."""
        return self.base_channels * 2 ** (self.levels - 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Segmenter input must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Segmenter input must be (N, {self.in_channels}, D, H, W); got shape "
                f"{tuple(x.shape)}; add batch/channel axes with x[None, None] for a (D, H, W) volume"
            )
        smallest = self.minimum_size
        if any(size < low for size, low in zip(x.shape[2:], smallest, strict=True)):
            raise ValueError(
                f"Segmenter input (D, H, W) = {tuple(x.shape[2:])} is smaller than the network's "
                f"minimum {smallest} ({self.levels} levels pool H and W by 2**{self.levels - 1}); "
                f"resize the crop to the segmenter's crop_size first"
            )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool3d(x, kernel_size=(1, 2, 2))
            x = block(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, D, H, W) in [-1, 1] -> logits (N, 2, D, H, W); sigmoid gives probabilities."""
        self._check_input(x)
        skips = self._encode(x)
        y = skips[-1]
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode="trilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.head(torch.cat([y, x], dim=1))

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled bottleneck features, (N, C) with C = :attr:`feature_channels`.

        Volumes: x is (N, 1, D, H, W). Slices: x is (N, 1, H, W); each slice is fed as a thin
        volume of ``SLICE_SLAB_DEPTH`` copies of itself (any plane: axial, coronal, sagittal). For
        a Fréchet distance, feed real and generated slices the same way and at the same size.
        InstanceNorm makes these features insensitive to a crop's global intensity offset;
        pair them with an intensity metric (e.g. the HU histogram distance).
        """
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.unsqueeze(2).expand(-1, -1, SLICE_SLAB_DEPTH, -1, -1)
        self._check_input(x)
        return self._encode(x)[-1].mean(dim=(2, 3, 4))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and requires_grad False on every parameter; returns the same module."""
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# Saving and loading.


def save_segmenter(
    model: Segmenter,
    path: str | Path,
    cfg: SegmenterConfig,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write state_dict + architecture ints + segmenter config + metrics, atomically."""
    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": "ctgan-segmenter",
        "architecture": model.architecture,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": _plain(dataclasses.asdict(cfg)),
        "metrics": _plain(metrics or {}),
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def read_segmenter_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of a segmenter file (checked format), without building the network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"segmenter weights {path} not found; run the segmenter stage "
            f"(notebooks/02_segmenter.ipynb, `dvc repro segmenter`) first"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"segmenter weights {path} cannot be read (truncated or not a torch file: {err}); "
            f"delete it and rerun the segmenter stage"
        ) from err
    if not isinstance(payload, dict) or payload.get("kind") != "ctgan-segmenter":
        raise ValueError(
            f"{path} is not a ctgan segmenter file (expected a dict with kind 'ctgan-segmenter', "
            f"written by save_segmenter); point to models/segmenter/segmenter.pt"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"segmenter file {path} has format_version {payload.get('format_version')!r}; this "
            f"code reads version {FORMAT_VERSION}; rerun the segmenter stage"
        )
    return payload


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """Rebuild the saved network on ``device``, frozen (eval mode, no parameter requires grad)."""
    payload = read_segmenter_file(path)
    architecture = payload["architecture"]
    model = Segmenter(**architecture)
    load_weights(
        model,
        payload["state_dict"],
        f"segmenter weights in {path} do not fit the architecture it declares {architecture} "
        f"(a file for another architecture?): {{reason}}; rerun the segmenter stage",
    )
    return freeze(model.to(device))  # type: ignore[return-value]


def as_float_array(name: str, value: Array) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) array; got shape {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------
# Whole volumes.


def _window_starts(size: int, window: int) -> list[int]:
    if size <= window:
        return [0]
    count = int(np.ceil((size - window) / (window / 2))) + 1
    return sorted({round(i * (size - window) / (count - 1)) for i in range(count)})


@torch.no_grad()
def predict_volume(
    model: Segmenter,
    volume: Array,
    crop_size: Sequence[int],
    *,
    field_fraction: float = GAN_CROP_FRACTION,
    batch_size: int = 4,
) -> np.ndarray:
    """Probabilities (2, D, H, W) (lungs, nodules) for a whole (D, H, W) volume in [-1, 1].

    The volume is resized so that a ``crop_size`` window covers ``field_fraction`` of it along
    every axis (default 0.5, the scale of the segmentation term's crops; smaller values give
    finer boundaries), windows overlapping by half are averaged, and the probabilities are
    resized back to the volume's shape.
    """
    array = as_float_array("predict_volume volume", volume)
    window = tuple(int(c) for c in crop_size)
    if not RANDOM_CROP_FRACTIONS[0] <= field_fraction <= 1:
        raise ValueError(
            f"field_fraction must be in [{RANDOM_CROP_FRACTIONS[0]}, 1] (the crop extents the "
            f"segmenter was trained on); got {field_fraction}"
        )
    canonical = tuple(max(w, round(w / field_fraction)) for w in window)
    device = next(model.parameters()).device
    x = F.interpolate(
        torch.from_numpy(array)[None, None], size=canonical, mode="trilinear", align_corners=False
    )
    boxes = [
        (slice(z, z + window[0]), slice(y, y + window[1]), slice(x0, x0 + window[2]))
        for z in _window_starts(canonical[0], window[0])
        for y in _window_starts(canonical[1], window[1])
        for x0 in _window_starts(canonical[2], window[2])
    ]
    summed = torch.zeros((model.out_channels, *canonical))
    counts = torch.zeros((1, *canonical))
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        inputs = torch.cat([x[(0, slice(None), *box)][None] for box in chunk]).to(device)
        probabilities = torch.sigmoid(model(inputs)).float().cpu()
        for box, probability in zip(chunk, probabilities, strict=True):
            summed[(slice(None), *box)] += probability
            counts[(slice(None), *box)] += 1
    averaged = (summed / counts)[None]
    restored = F.interpolate(averaged, size=array.shape, mode="trilinear", align_corners=False)
    return restored[0].clamp(0, 1).numpy()


def largest_lung_components(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bool mask: the largest component of ``probability >= threshold``, plus the second largest
    when it is at least a tenth of the first (the two lungs), the rule of the classical mask.

    A cleanup for whole-volume lung masks (figures, the real-scan agreement check); the
    segmentation term itself always uses the network's raw probabilities.
    """
    mask = np.asarray(probability) >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]]
    if count > 1 and sizes[order[1]] >= 0.1 * sizes[order[0]]:
        keep.append(order[1])
    return np.isin(labels, keep)


def prediction_figure(
    volume: np.ndarray,
    lungs: np.ndarray,
    nodules: np.ndarray,
    probabilities: np.ndarray,
    *,
    title: str = "",
) -> Figure:
    """Three axial slices (one through a nodule if any): ground truth vs prediction contours.

    Ground truth filled in colour, predicted probability 0.5 as a contour (lungs cyan, nodules
    red); one row per slice, left the truth, right the prediction.
    """
    depth = volume.shape[0]
    slices = [depth // 4, depth // 2, (3 * depth) // 4]
    nodule_depths = np.flatnonzero(nodules.reshape(depth, -1).max(axis=1) >= 0.5)
    if len(nodule_depths):
        slices[-1] = int(nodule_depths[len(nodule_depths) // 2])
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2 * len(slices)), layout="constrained")
    axes = figure.subplots(len(slices), 2, squeeze=False)
    for row, z in enumerate(slices):
        for column, (label, source) in enumerate(
            (("ground truth", (lungs, nodules)), ("prediction", tuple(probabilities)))
        ):
            ax = axes[row, column]
            ax.imshow(volume[z], cmap="gray", vmin=-1, vmax=1)
            for mask, colour in zip(source, ("cyan", "red"), strict=True):
                if column == 0:
                    ax.imshow(
                        np.ma.masked_less(mask[z], 0.5),
                        cmap="autumn" if colour == "red" else "cool",
                        alpha=0.35,
                        vmin=0,
                        vmax=1,
                    )
                if mask[z].max() >= 0.5 and mask[z].min() < 0.5:
                    ax.contour(mask[z], levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(f"{label}, z = {z}", fontsize=9)
            ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure
