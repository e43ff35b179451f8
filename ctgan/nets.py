"""The networks of CT-GAN: the per-scale generators, the per-scale discriminator, the growing
generator pyramid and its noise (ctgan-facts §3); built of the layers of ``ctgan.layers``.

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctgan.layers import NEGATIVE_SLOPE, NORMS, ConvBlock, _check_choice, make_conv

MODELS = ("3d", "2d")
NOISE_PADDING = 5  # 5 unpadded 3x3x3 convs shrink each axis by 10 voxels


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

    @property
    def output_conv(self) -> nn.Module:
        """The last conv, before tanh (``GeneratorPyramid.add_scale(identity=True)`` zeroes it)."""
        return self.body[-2]

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

    @property
    def output_conv(self) -> nn.Module:
        """The last conv, before tanh (``GeneratorPyramid.add_scale(identity=True)`` zeroes it)."""
        return self.last

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

    def add_scale(self, depth: int, identity: bool = False) -> nn.Module:
        """Append the generator of the next scale (``depth`` = D_s, used by the 2D model).

        ``identity=True`` (``train.new_scale_init: identity``): a scale above the coarsest starts
        as the identity on its upsampled input (its output conv zeroed, so the residual is
        tanh(0) = 0), the other layers still copied from the previous scale."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        new = self._build_scale(depth)
        if len(self.scales) > 0:
            _copy_matching(new, self.scales[-1])
            if identity:
                conv = new.output_conv
                with torch.no_grad():
                    conv.weight.zero_()
                    if conv.bias is not None:
                        conv.bias.zero_()
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
