"""The convolution and normalisation layers the networks are built of (2D and 3D), and the CPU
backward by forward convolutions.

``Conv3d`` runs oneDNN on CPU in the channels-last layout (float32 included) and, when training,
its backward as forward convolutions (``_ConvByForwards``); ``InstanceNorm3d`` keeps a
channels-last activation channels-last (docs/performance.md). Also: loading weights with a
readable error, and the bf16 autocast of training and sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch")
NEGATIVE_SLOPE = 0.2


def load_weights(module: nn.Module, state_dict: dict, mismatch: str) -> nn.Module:
    """``module.load_state_dict(state_dict)``; a mismatch (a file written for another
    architecture or version) becomes a ValueError that starts with ``mismatch`` and gives torch's
    reason, instead of torch's multi-line RuntimeError."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(mismatch.replace("{reason}", reason)) from err
    return module


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU raises. ``key`` names the
    params.yaml key in the messages (``train.device``, ``gpnn.device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"{key} must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (the ``bf16`` precision of training and sampling), or a disabled
    one (the networks' own dtype) when ``enabled`` is False."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 autocast is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, torch >= 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_precision(device: str | torch.device) -> str:
    """What ``precision: auto`` means on ``device``: ``"bf16"`` where :func:`native_bf16` holds,
    else ``"float32"`` (training and sampling resolve it the same way)."""
    return "bf16" if native_bf16(device) else "float32"


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")


def _onednn_cpu(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 5D CPU convolution that oneDNN runs: float32, or bf16 under autocast (not float64)."""
    return (
        input.device.type == "cpu"
        and input.dim() == 5
        and weight.dtype != torch.float64
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    """A copy of a 5D weight with channels-last strides (differentiable; the weights are small).

    A tensor with one input channel already counts as "channels-last contiguous" with contiguous
    strides, and torch then reads it as contiguous: ``contiguous(memory_format=...)`` would keep it.
    """
    return torch.empty_like(weight, memory_format=torch.channels_last_3d).copy_(weight)


def _conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: Sequence[int],
) -> torch.Tensor:
    """Stride-1 3D convolution with zero padding; on CPU (not float64) oneDNN in channels-last."""
    if not _onednn_cpu(input, weight):
        return F.conv3d(input, weight, bias, padding=tuple(padding))
    weight = _channels_last(weight)
    if (
        input.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    ):
        return torch.mkldnn_convolution(input, weight, bias, padding, (1, 1, 1), (1, 1, 1), 1)
    return F.conv3d(input, weight, bias, padding=tuple(padding))


class _ConvByForwards(torch.autograd.Function):
    """A stride-1 3D conv on CPU whose backward runs as forward convolutions.

    oneDNN's own backward is slow for these shapes: on the AVX-512 machine of issue 10 a C -> 1
    backward at the finest paper scale took 51 ms against 32 ms for the forward; on this project's
    AVX2 machine a 16 -> 16 float32 conv at the cpu profile's finest scale (10 x 63 x 63) took
    173 ms for the backward against 7 ms for the forward (docs/performance.md). The same gradients:
    - input: the forward conv of the output gradient with the transposed, flipped kernel ("full"
      padding k - 1 - p): 13 ms there;
    - weight, one output channel: a 1 -> k^3 conv with one-hot kernels lays out the k^3 shifted
      copies of the output gradient on the input's grid, then one matrix product with the input
      (C x k^3);
    - weight, several output channels: one conv of the input, channels as the batch, with the output
      gradient, channels as the batch, as its kernel: (C_in, N, ...) * (C_out, N, ...) ->
      (C_in, C_out, k, k, k), transposed: 15 ms there.
    All are ordinary differentiable ops, so double backward (WGAN-GP) works.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return _conv3d(input, weight, bias, padding)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        kernel = tuple(weight.shape[2:])
        full = [k - 1 - p for k, p in zip(kernel, ctx.padding, strict=True)]
        grad = grad.to(input.dtype)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _conv3d(grad, weight.transpose(0, 1).flip(2, 3, 4), None, full)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(input, grad, kernel, ctx.padding).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


def _weight_gradient(
    input: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, ...], padding: Sequence[int]
) -> torch.Tensor:
    """The weight gradient of a stride-1 conv, (C_out, C_in, *kernel), from forward ops only."""
    if grad.shape[1] == 1:
        taps = math.prod(kernel)
        full = [k - 1 - p for k, p in zip(kernel, padding, strict=True)]
        one_hot = torch.eye(taps, dtype=grad.dtype, device=grad.device)
        shifted = _conv3d(grad, one_hot.view(taps, 1, *kernel).flip(2, 3, 4), None, full)
        channels = input.shape[1]
        rows = input.permute(0, 2, 3, 4, 1).reshape(-1, channels)  # (N*D*H*W, C)
        cols = shifted.permute(0, 2, 3, 4, 1).reshape(-1, taps)  # (N*D*H*W, k^3)
        return (rows.t() @ cols).view(1, channels, *kernel)
    by_channel = F.conv3d(input.transpose(0, 1), grad.transpose(0, 1), padding=tuple(padding))
    return by_channel.transpose(0, 1)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN on CPU in the channels-last layout, float32 included.

    - Layout: on CPU (float32, or bf16 under autocast) the weight is passed in channels-last
      (NDHWC) layout, so oneDNN computes in that layout and returns a channels-last activation;
      with :class:`InstanceNorm3d` the whole network stays channels-last. In the contiguous layout
      oneDNN reorders every input and output to its own blocked layout and back: measured here
      (bf16, 2 cores) a 32 -> 32 conv at the finest paper scale took 104 ms contiguous against
      63 ms channels-last. The parameters themselves keep their layout (state dicts unchanged).
    - float32: PyTorch sends a batch-1 float32 3D convolution to oneDNN only when N*C*D*H > 20480
      and to a slow reference kernel otherwise: most of this project's layers at the cpu profile's
      sizes, and the coarse scales at the paper's. Measured here: a float32 sample of the cpu
      profile's 3D model 0.31 -> 0.05 s.
    - Backward (training): :class:`_ConvByForwards`, for a conv with one output channel (the last
      conv of G and D) and for every float32 conv; bf16 keeps oneDNN's own backward (measured only
      on the AVX-512 machine, where it was not the bottleneck).
    bf16 is what autocast would run (input, weight and bias cast to bf16). float64 (the
    ``reference`` numerics, which oneDNN cannot run) goes through ``nn.Conv3d`` unchanged.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            not _onednn_cpu(input, weight)
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or self.stride != (1, 1, 1)
            or self.dilation != (1, 1, 1)
            or self.groups != 1
        ):
            return super()._conv_forward(input, weight, bias)
        padding = tuple(int(p) for p in self.padding)
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            input, weight = input.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if input.dtype != weight.dtype:
            return super()._conv_forward(input, weight, bias)  # torch's dtype error
        with torch.autocast("cpu", enabled=False):
            if torch.is_grad_enabled() and (self.out_channels == 1 or input.dtype == torch.float32):
                return _ConvByForwards.apply(input, weight, bias, padding)
            return _conv3d(input, weight, bias, padding)


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last activation channels-last.

    torch's ``instance_norm`` views ``(N, C, ...)`` as ``(1, N*C, ...)``, which copies a
    channels-last tensor to the contiguous layout (59 ms for 32 channels at the finest paper scale
    in bf16, against 4 ms for the norm itself). The same statistics without the copy: for a batch
    of one, ``batch_norm`` with batch statistics (per channel over D, H, W: the one volume's
    instance statistics; training always runs batches of one); a channels-last batch of N > 1 is
    normalised one volume at a time the same way and concatenated. Anything else goes to torch.
    """

    def _one_volume(self, volume: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(volume, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 5 or input.shape[1] != self.num_features or self.track_running_stats:
            return super().forward(input)
        if input.shape[0] == 1:
            return self._one_volume(input)
        if input.is_contiguous(memory_format=torch.channels_last_3d) and not input.is_contiguous():
            return torch.cat([self._one_volume(volume) for volume in input.split(1)])
        return super().forward(input)


def make_conv(
    spatial_dims: int, in_channels: int, out_channels: int, padding: int, kernel_size: int = 3
) -> nn.Module:
    """Conv2d or Conv3d (:class:`Conv3d`) with a square kernel."""
    _check_spatial_dims(spatial_dims)
    conv = Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(in_channels, out_channels, kernel_size, padding=padding)


def make_norm(spatial_dims: int, channels: int, norm: str) -> nn.Module:
    """InstanceNorm (affine, no running statistics) or BatchNorm, 2D or 3D."""
    _check_spatial_dims(spatial_dims)
    _check_choice("norm", norm, NORMS)
    if norm == "instance":
        cls = InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    cls = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    return cls(channels)


class ConvBlock(nn.Sequential):
    """conv (kernel 3) -> norm -> LeakyReLU(0.2) (or ReLU), for ``spatial_dims`` 2 or 3."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        padding: int,
        norm: str = "instance",
        activation: str = "leaky_relu",
    ) -> None:
        _check_choice("activation", activation, ("leaky_relu", "relu"))
        act = nn.LeakyReLU(NEGATIVE_SLOPE) if activation == "leaky_relu" else nn.ReLU()
        super().__init__(
            make_conv(spatial_dims, in_channels, out_channels, padding),
            make_norm(spatial_dims, out_channels, norm),
            act,
        )
