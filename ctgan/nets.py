"""The networks of CT-GAN: conv blocks shared by 2D and 3D, the per-scale generators, the
per-scale discriminator and the growing generator pyramid (ctgan-facts §3).

Layout everywhere: volumes are ``(N, 1, D, H, W)``. The 2D slice-stack generator turns the depth
axis into channels internally, ``(N, 1, D, H, W) -> (N, D, H, W)``, and back.

Deliberate departures from the seed (docs in the README, ctgan-facts §6):
- InstanceNorm by default (the seed's figures), BatchNorm only for ``norm="batch"`` (the seed's
  code, used by the ``reference`` precision);
- the 3D generator pads its noise by 5 zero voxels on every side, as CT-GAN 1.0 did (HEAD dropped
  the padding and cannot run): input = pad(up(x_prev) + z, 5), so a noise map has the shape of the
  scale's *output*;
- the 2D generator ends in tanh like the 3D one (the seed's had no output activation) and has no
  noise at scales >= 1, as the seed (its noise lines are commented out; ctgan-facts §6.15).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch")
MODELS = ("3d", "2d")
NOISE_PADDING = 5  # 5 unpadded 3x3x3 convs shrink each axis by 10 voxels
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


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (the ``bf16`` precision of training and sampling), or a disabled
    one (the networks' own dtype) when ``enabled`` is False."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


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


def upsample(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of ``(N, C, D, H, W)`` to ``shape = (D, H, W)``, align_corners=True (seed)."""
    if tuple(volume.shape[2:]) == tuple(shape):
        return volume
    return F.interpolate(volume, size=tuple(shape), mode="trilinear", align_corners=True)


class VolumeGenerator(nn.Module):
    """One scale of the 3D generator (the paper's G_s): 5 unpadded 3x3x3 convs, tanh, residual.

    ``forward(noise, previous)``: ``noise`` and ``previous`` (the upsampled previous output, or
    None at scale 0) are ``(N, 1, D, H, W)``; both are zero-padded by 5 voxels (CT-GAN 1.0), run
    through the body (which shrinks each axis by 10) and the result is added to ``previous``.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(3, 1, channels, padding=0, norm=norm),
            *(ConvBlock(3, channels, channels, padding=0, norm=norm) for _ in range(3)),
            make_conv(3, channels, 1, padding=0),
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        x = noise if previous is None else previous + noise
        # (N, 1, D, H, W); cast back so the residual path stays in the noise's dtype under autocast
        out = self.body(F.pad(x, (NOISE_PADDING,) * 6)).to(noise.dtype)
        return out if previous is None else out + previous


class SliceStackGenerator(nn.Module):
    """One scale of the 2D generator: depth slices as channels, conv + 3 down + 3 up + conv.

    Scale 0 maps the noise ``(N, 1, D, H, W)``; scales >= 1 map only the upsampled previous output
    (no noise, as the seed). Max-pooling and transposed convs can shrink H and W (28 -> 24); the
    output is resized back trilinearly. Residual over the upsampled previous output.
    """

    def __init__(self, depth: int, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.depth = depth
        self.first = make_conv(2, depth, channels, padding=1)
        blocks: list[nn.Module] = []
        for _ in range(3):
            blocks += [
                ConvBlock(2, channels, channels, padding=1, norm=norm, activation="relu"),
                ConvBlock(2, channels, channels, padding=1, norm=norm, activation="relu"),
                nn.MaxPool2d(2),
            ]
        for _ in range(3):
            blocks += [
                nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1),
                ConvBlock(2, channels, channels, padding=1, norm=norm, activation="relu"),
                ConvBlock(2, channels, channels, padding=1, norm=norm, activation="relu"),
            ]
        self.middle = nn.Sequential(*blocks)
        self.last = make_conv(2, channels, depth, padding=1)

    def forward(self, noise: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        source = noise if previous is None else previous
        n, _, depth, height, width = source.shape
        if depth != self.depth:
            raise ValueError(
                f"the 2D generator of this scale was built for depth {self.depth} (slices are its "
                f"channels); got a volume of depth {depth}. Only H and W can change."
            )
        slices = source.reshape(n, depth, height, width)  # (N, D, H, W)
        out = torch.tanh(self.last(self.middle(self.first(slices)))).to(
            noise.dtype
        )  # (N, D, H', W')
        out = upsample(out.unsqueeze(1), (depth, height, width))  # (N, 1, D, H, W)
        return out if previous is None else out + previous


class Discriminator(nn.Module):
    """The per-scale patch discriminator (3D for both models, as the seed): 5 convs, padding 1.

    conv 1->C + LeakyReLU, 3 x [conv C->C + norm + LeakyReLU], conv C->1; output (N, 1, D, H, W)
    logits, one per voxel patch.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_conv(3, 1, channels, padding=1),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            *(ConvBlock(3, channels, channels, padding=1, norm=norm) for _ in range(3)),
            make_conv(3, channels, 1, padding=1),
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.body(volume)


def _copy_matching(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s tensors into ``target``, module by module; a layer (e.g. the 2D first/last
    conv when the depth changes) with any tensor of another shape keeps its fresh initialisation."""
    own = target.state_dict()
    theirs = source.state_dict()

    def layer(key: str) -> str:
        return key.rsplit(".", 1)[0]

    mismatched = {layer(k) for k, v in own.items() if k not in theirs or theirs[k].shape != v.shape}
    own.update({k: theirs[k] for k in own if layer(k) not in mismatched})
    target.load_state_dict(own)


class GeneratorPyramid(nn.Module):
    """The growing stack of per-scale generators, coarsest first.

    ``add_scale(depth)`` appends a generator initialised from the previous scale's weights where
    shapes allow (2D: the first/last convs are fresh when the depth changes), and freezes every
    earlier scale (``requires_grad=False``, kept in eval mode).

    ``forward(noises, start_scale=0, start_volume=None)``: ``noises[s]`` has the shape
    ``(N, 1, D_s, H_s, W_s)`` of scale ``s``'s output (bigger maps give bigger volumes; the 3D
    generator pads internally). ``start_volume`` (any shape, resized to scale ``start_scale``) stands
    in for the upsampled output of scale ``start_scale - 1``: injection. Returns the finest output,
    or every scale's output with ``return_all=True``.
    """

    def __init__(self, model: str, channels: int, norm: str = "instance") -> None:
        super().__init__()
        _check_choice("model", model, MODELS)
        _check_choice("norm", norm, NORMS)
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels}")
        self.model = model
        self.channels = channels
        self.norm = norm
        self.depths: list[int] = []
        self.scales = nn.ModuleList()

    def __len__(self) -> int:
        return len(self.scales)

    def _build_scale(self, depth: int) -> nn.Module:
        if self.model == "3d":
            return VolumeGenerator(self.channels, self.norm)
        return SliceStackGenerator(depth, self.channels, self.norm)

    def add_scale(self, depth: int) -> nn.Module:
        """Append the generator of the next scale (``depth`` = D_s, used by the 2D model)."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        new = self._build_scale(depth)
        if len(self.scales) > 0:
            _copy_matching(new, self.scales[-1])
        for scale in self.scales:
            scale.requires_grad_(False)
            scale.eval()
        self.depths.append(depth)
        self.scales.append(new.to(self._reference_tensor()))
        return new

    def _reference_tensor(self) -> torch.Tensor:
        for p in self.parameters():
            return p
        return torch.empty(0)

    def train(self, mode: bool = True) -> GeneratorPyramid:
        """Like nn.Module.train, but frozen scales (all but the newest) stay in eval mode."""
        super().train(mode)
        for scale in list(self.scales)[:-1]:
            scale.eval()
        return self

    def forward_scale(
        self, scale: int, noise: torch.Tensor, previous: torch.Tensor | None
    ) -> torch.Tensor:
        """Scale ``scale`` alone: ``previous`` is the previous scale's output (any size, or None)."""
        if previous is not None:
            previous = upsample(previous, noise.shape[2:])
        return self.scales[scale](noise, previous)

    def forward(
        self,
        noises: Sequence[torch.Tensor],
        start_scale: int = 0,
        start_volume: torch.Tensor | None = None,
        return_all: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        if len(noises) != len(self.scales):
            raise ValueError(
                f"noises must hold one map per scale ({len(self.scales)}); got {len(noises)}"
            )
        if not 0 <= start_scale < len(self.scales):
            raise ValueError(
                f"start_scale must be in [0, {len(self.scales) - 1}]; got {start_scale}"
            )
        if (start_volume is None) != (start_scale == 0):
            raise ValueError(
                "start_volume is required when start_scale > 0 and must be None when "
                f"start_scale == 0; got start_scale={start_scale} and "
                f"start_volume={'None' if start_volume is None else tuple(start_volume.shape)}"
            )
        for s, noise in enumerate(noises):
            if noise.dim() != 5 or noise.shape[1] != 1:
                raise ValueError(
                    f"noises[{s}] must have shape (N, 1, D, H, W); got {tuple(noise.shape)}"
                )
        outputs: list[torch.Tensor] = []
        previous = start_volume
        for s in range(start_scale, len(self.scales)):
            previous = self.forward_scale(s, noises[s], previous)
            outputs.append(previous)
        return outputs if return_all else outputs[-1]

    def forward_all(
        self,
        noises: Sequence[torch.Tensor],
        start_scale: int = 0,
        start_volume: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Every scale's output from ``start_scale`` on (``forward(..., return_all=True)``)."""
        result = self.forward(noises, start_scale, start_volume, return_all=True)
        assert isinstance(result, list)
        return result

    def architecture(self) -> dict[str, object]:
        """The ints that rebuild this pyramid (``build_generator_pyramid(**architecture)``)."""
        return {
            "model": self.model,
            "channels": self.channels,
            "norm": self.norm,
            "depths": list(self.depths),
        }


def build_generator_pyramid(
    model: str, channels: int, norm: str, depths: Sequence[int]
) -> GeneratorPyramid:
    """A pyramid with one scale per entry of ``depths`` (for loading a checkpoint)."""
    pyramid = GeneratorPyramid(model, channels, norm)
    for depth in depths:
        pyramid.add_scale(int(depth))
    return pyramid


def grow_discriminator(previous: Discriminator | None, channels: int, norm: str) -> Discriminator:
    """The next scale's discriminator: a copy of the previous one (seed), or fresh at scale 0."""
    if previous is None:
        return Discriminator(channels, norm)
    return copy.deepcopy(previous)


def make_noise(
    shapes: Sequence[Sequence[int]],
    amplitudes: Sequence[float],
    n: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """One ``amplitude * N(0, 1)`` map of shape ``(n, 1, D, H, W)`` per scale (the paper's z_s)."""
    if len(shapes) != len(amplitudes):
        raise ValueError(
            f"shapes and amplitudes must have one entry per scale; got {len(shapes)} shapes and "
            f"{len(amplitudes)} amplitudes"
        )
    return [
        amplitude
        * torch.randn((n, 1, *map(int, shape)), generator=generator, device=device, dtype=dtype)
        for shape, amplitude in zip(shapes, amplitudes, strict=True)
    ]


def make_reconstruction_noise(
    shapes: Sequence[Sequence[int]],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """The fixed reconstruction noise z_rec: N(0, 1) at scale 0, zeros at every other scale."""
    noises = [torch.zeros((1, 1, *map(int, shape)), device=device, dtype=dtype) for shape in shapes]
    if noises:
        noises[0] = torch.randn(noises[0].shape, generator=generator, device=device, dtype=dtype)
    return noises
