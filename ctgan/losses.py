"""Loss functions of CT-GAN, small and pure: tensors in, a scalar tensor out (ctgan-facts §4).

Adversarial losses take the discriminator's patch logits ``(N, 1, D, H, W)``:
- lsgan (the paper's): the patch map averaged per sample, least squares against the seed's targets
  (real 1.0, fake 0.0 for D; 0.9 for G, asymmetric as in the seed);
- wgangp: Wasserstein critic on the averaged map + gradient penalty (fixed: a scalar loss and an
  interpolation weight of shape (N, 1, 1, 1, 1));
- zerogp: BCE-with-logits on every patch + R1 penalty on the real volume (fixed: targets shaped
  like the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

PROJECTION_MODES = ("mean", "edge")
LSGAN_REAL_TARGET = 1.0
LSGAN_FAKE_TARGET = 0.0
LSGAN_GENERATOR_TARGET = 0.9


def _patch_mean(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N,): the patch map averaged per sample."""
    return logits.flatten(1).mean(dim=1)


def d_lsgan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """MSE(mean D(real), 1) + MSE(mean D(fake), 0)."""
    real = _patch_mean(real_logits)
    fake = _patch_mean(fake_logits)
    return F.mse_loss(real, torch.full_like(real, LSGAN_REAL_TARGET)) + F.mse_loss(
        fake, torch.full_like(fake, LSGAN_FAKE_TARGET)
    )


def g_lsgan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """MSE(mean D(fake), 0.9) (the seed's generator target)."""
    fake = _patch_mean(fake_logits)
    return F.mse_loss(fake, torch.full_like(fake, LSGAN_GENERATOR_TARGET))


def d_wgangp_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(real)] + E[D(fake)] (add ``penalty * gradient_penalty`` for WGAN-GP)."""
    return -_patch_mean(real_logits).mean() + _patch_mean(fake_logits).mean()


def g_wgangp_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]."""
    return -_patch_mean(fake_logits).mean()


def gradient_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and fake volumes."""
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake must have the same shape; got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    alpha_shape = (real.shape[0],) + (1,) * (real.dim() - 1)  # (N, 1, 1, 1, 1)
    alpha = torch.rand(alpha_shape, generator=generator, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    logits = discriminator(mixed)
    (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean()


def d_zerogp_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits(D(real), 1) + BCE-with-logits(D(fake), 0) over every patch."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def g_zerogp_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits(D(fake), 1) (non-saturating)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: per-sample sum of the squared gradient of the averaged real logits w.r.t. ``real``.

    ``real`` must require grad and ``real_logits`` must be ``D(real)``.
    """
    if not real.requires_grad:
        raise ValueError(
            "r1_penalty needs the gradient w.r.t. the real volume: call "
            "real.requires_grad_(True) before computing real_logits = D(real)"
        )
    (grad,) = torch.autograd.grad(_patch_mean(real_logits).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def reconstruction_loss(reconstruction: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """MSE between the reconstruction G(z_rec) and the real volume of the scale."""
    return F.mse_loss(reconstruction, real)


def projection_loss(fake: torch.Tensor, real: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Mean of three MSEs between 2D views of ``fake`` and ``real`` ``(N, C, D, H, W)``.

    ``mode="mean"``: mean-intensity projections along D, H and W (the paper's idea).
    ``mode="edge"``: the seed's planes at index 0 of D, H and W (ctgan-facts §6.4).
    """
    if mode not in PROJECTION_MODES:
        raise ValueError(
            f"projection mode must be one of {', '.join(PROJECTION_MODES)}; got {mode!r}"
        )
    if fake.shape != real.shape or fake.dim() != 5:
        raise ValueError(
            f"fake and real must be (N, C, D, H, W) of the same shape; got {tuple(fake.shape)} "
            f"and {tuple(real.shape)}"
        )
    total = fake.new_zeros(())
    for axis in (2, 3, 4):
        if mode == "mean":
            fake_view, real_view = fake.mean(dim=axis), real.mean(dim=axis)
        else:
            fake_view, real_view = fake.select(axis, 0), real.select(axis, 0)
        total = total + F.mse_loss(fake_view, real_view)
    return total / 3


def random_crop_box(
    shape: Sequence[int], generator: torch.Generator | None = None
) -> tuple[slice, slice, slice]:
    """The seed's segmentation crop of a ``(D, H, W)`` volume: in-plane int(S/2), depth int(S/12).

    Starts: y0 = int(U * H/2), x0 = int(U * W/2), z0 = int(U * H/12), clamped so the box fits;
    the depth is clamped to [1, D].
    """
    depth, height, width = (int(v) for v in shape)
    crop_h, crop_w = max(1, height // 2), max(1, width // 2)
    crop_d = min(depth, max(1, int(height / 12)))
    u = torch.rand(3, generator=generator, device=generator.device if generator else "cpu")
    u = u.tolist()
    z0 = min(int(u[0] * height / 12), depth - crop_d)
    y0 = min(int(u[1] * height / 2), height - crop_h)
    x0 = min(int(u[2] * width / 2), width - crop_w)
    return slice(z0, z0 + crop_d), slice(y0, y0 + crop_h), slice(x0, x0 + crop_w)


def segmentation_loss(
    fake: torch.Tensor,
    real: torch.Tensor,
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    crop_size: Sequence[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE between the frozen segmenter's probabilities on the same random crop of fake and real.

    The crop (``random_crop_box``) is resized trilinearly to ``crop_size`` (D, H, W), passed through
    ``segmenter`` (logits ``(N, C, d, h, w)``) and a sigmoid. The real branch runs without
    gradient; the fake branch carries gradient back into the generator (the seed's did not).
    """
    if fake.shape != real.shape or fake.dim() != 5:
        raise ValueError(
            f"fake and real must be (N, C, D, H, W) of the same shape; got {tuple(fake.shape)} "
            f"and {tuple(real.shape)}"
        )
    if len(crop_size) != 3:
        raise ValueError(f"crop_size must be (D, H, W); got {list(crop_size)}")
    box = random_crop_box(fake.shape[2:], generator)
    size = tuple(int(c) for c in crop_size)
    params = getattr(segmenter, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    dtype = first.dtype if first is not None else fake.dtype

    def crop(volume: torch.Tensor) -> torch.Tensor:
        patch = volume[(slice(None), slice(None), *box)]
        return F.interpolate(patch, size=size, mode="trilinear", align_corners=True).to(dtype)

    with torch.no_grad():
        real_probabilities = torch.sigmoid(segmenter(crop(real)).float())
    fake_probabilities = torch.sigmoid(segmenter(crop(fake)).float())
    return F.mse_loss(fake_probabilities, real_probabilities)
