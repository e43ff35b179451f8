"""Loss functions: each moves the right way, penalties have their textbook values, the
segmentation term carries gradient through a frozen network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctgan import losses

SHAPE = (2, 1, 3, 5, 5)


def _logits(value: float) -> torch.Tensor:
    return torch.full(SHAPE, value)


def test_lsgan_prefers_real_looking_real_and_fake_looking_fake() -> None:
    good = losses.d_lsgan_loss(_logits(1.0), _logits(0.0))
    bad = losses.d_lsgan_loss(_logits(0.0), _logits(1.0))
    assert good.item() == pytest.approx(0.0)
    assert bad.item() == pytest.approx(2.0)
    # the seed's asymmetric generator target: 0.9
    assert losses.g_lsgan_loss(_logits(0.9)).item() == pytest.approx(0.0)
    assert losses.g_lsgan_loss(_logits(0.0)).item() == pytest.approx(0.81)


def test_lsgan_averages_the_patch_map_per_sample() -> None:
    logits = torch.zeros(SHAPE)
    logits[:, :, :, :, :2] = 2.25  # mean over patches = 2.25 * 2/5 = 0.9
    assert losses.g_lsgan_loss(logits).item() == pytest.approx(0.0, abs=1e-12)


def test_wgangp_losses_move_the_right_way() -> None:
    assert losses.d_wgangp_loss(_logits(3.0), _logits(-3.0)) < losses.d_wgangp_loss(
        _logits(-3.0), _logits(3.0)
    )
    assert losses.g_wgangp_loss(_logits(2.0)) < losses.g_wgangp_loss(_logits(-2.0))
    assert losses.d_wgangp_loss(_logits(1.0), _logits(0.5)).dim() == 0


def _linear_critic(scale: float) -> nn.Module:
    """D(x) = sum(w * x) with ||w||_2 = scale: the gradient norm is exactly ``scale``."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(0))
            self.weight = nn.Parameter(weight / weight.norm() * scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.weight).flatten(1).sum(1).view(-1, 1, 1, 1, 1)

    return Linear()


@pytest.mark.parametrize(("scale", "expected"), [(1.0, 0.0), (3.0, 4.0)])
def test_gradient_penalty_is_squared_distance_of_the_gradient_norm_to_one(
    scale: float, expected: float
) -> None:
    real, fake = torch.randn(SHAPE), torch.randn(SHAPE)
    penalty = losses.gradient_penalty(
        _linear_critic(scale), real, fake, torch.Generator().manual_seed(0)
    )
    assert penalty.item() == pytest.approx(expected, abs=1e-5)


def test_gradient_penalty_trains_the_critic() -> None:
    critic = _linear_critic(3.0)
    losses.gradient_penalty(critic, torch.randn(SHAPE), torch.randn(SHAPE)).backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_gradient_penalty_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        losses.gradient_penalty(_linear_critic(1.0), torch.zeros(SHAPE), torch.zeros(1, 1, 3, 5, 5))


def test_zerogp_losses_move_the_right_way() -> None:
    assert losses.d_zerogp_loss(_logits(5.0), _logits(-5.0)) < 0.05
    assert losses.d_zerogp_loss(_logits(-5.0), _logits(5.0)) > 5.0
    assert losses.g_zerogp_loss(_logits(5.0)) < losses.g_zerogp_loss(_logits(-5.0))


def test_r1_penalty_value() -> None:
    real = torch.randn(SHAPE).requires_grad_(True)
    logits = 3.0 * real  # mean over 75 voxels: gradient 3/75 per voxel
    expected = 75 * (3.0 / 75) ** 2
    assert losses.r1_penalty(logits, real).item() == pytest.approx(expected)


def test_r1_penalty_needs_a_real_that_requires_grad() -> None:
    real = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="requires_grad_"):
        losses.r1_penalty(real * 2, real)


def test_reconstruction_loss() -> None:
    x = torch.randn(SHAPE)
    assert losses.reconstruction_loss(x, x).item() == 0
    assert losses.reconstruction_loss(x + 0.5, x).item() == pytest.approx(0.25)


def test_projection_modes() -> None:
    real = torch.zeros(1, 1, 4, 6, 6)
    interior = real.clone()
    interior[0, 0, 2, 3, 3] = 1.0  # changes the mean projections, not the index-0 planes
    assert losses.projection_loss(real, real).item() == 0
    assert losses.projection_loss(interior, real, "mean").item() > 0
    assert losses.projection_loss(interior, real, "edge").item() == 0
    edge = real.clone()
    edge[0, 0, 0] = 1.0
    assert losses.projection_loss(edge, real, "edge").item() > 0


def test_mean_projection_ignores_reordering_along_one_axis_only_partly() -> None:
    real = torch.rand(1, 1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    flipped = real.flip(2)  # same projection along D, different along H and W
    full = losses.projection_loss(flipped, real, "mean")
    along_depth = torch.mean((flipped.mean(2) - real.mean(2)) ** 2)
    assert along_depth.item() == pytest.approx(0.0, abs=1e-12)
    assert full.item() > 0


def test_projection_errors() -> None:
    x = torch.zeros(1, 1, 4, 6, 6)
    with pytest.raises(ValueError, match="projection mode must be one of"):
        losses.projection_loss(x, x, "max")
    with pytest.raises(ValueError, match="same shape"):
        losses.projection_loss(x, torch.zeros(1, 1, 4, 6, 7))


def _frozen_segmenter() -> nn.Module:
    torch.manual_seed(0)
    segmenter = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 1))
    segmenter.requires_grad_(False)
    return segmenter.eval()


def test_random_crop_box_is_the_seeds() -> None:
    box = losses.random_crop_box((23, 141, 141), torch.Generator().manual_seed(0))
    sizes = [b.stop - b.start for b in box]
    assert sizes == [11, 70, 70]
    for _ in range(200):
        box = losses.random_crop_box((4, 20, 20), None)
        assert all(b.start >= 0 for b in box)
        assert all(b.stop <= n for b, n in zip(box, (4, 20, 20), strict=True))
        assert box[0].stop - box[0].start == 1  # int(20/12) = 1


def test_segmentation_loss_flows_into_the_generator_only() -> None:
    segmenter = _frozen_segmenter()
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    real = torch.rand(1, 1, 6, 24, 24) * 2 - 1
    weight = torch.ones((), requires_grad=True)  # stands in for the generator
    fake = weight * torch.rand(1, 1, 6, 24, 24)
    loss = losses.segmentation_loss(
        fake, real, segmenter, (4, 8, 8), torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert loss.item() > 0
    assert weight.grad is not None and weight.grad.abs() > 0
    assert all(p.grad is None for p in segmenter.parameters())
    assert all(torch.equal(before[k], v) for k, v in segmenter.state_dict().items())


def test_segmentation_loss_is_zero_for_identical_volumes_and_seeded() -> None:
    segmenter = _frozen_segmenter()
    real = torch.rand(1, 1, 6, 24, 24)
    fake = torch.rand(1, 1, 6, 24, 24)
    assert losses.segmentation_loss(real, real, segmenter, (4, 8, 8)).item() == 0
    a = losses.segmentation_loss(fake, real, segmenter, (4, 8, 8), torch.Generator().manual_seed(3))
    b = losses.segmentation_loss(fake, real, segmenter, (4, 8, 8), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_segmentation_loss_errors() -> None:
    segmenter = _frozen_segmenter()
    x = torch.zeros(1, 1, 6, 24, 24)
    with pytest.raises(ValueError, match="same shape"):
        losses.segmentation_loss(x, torch.zeros(1, 1, 6, 24, 25), segmenter, (4, 8, 8))
    with pytest.raises(ValueError, match="crop_size must be"):
        losses.segmentation_loss(x, x, segmenter, (8, 8))
