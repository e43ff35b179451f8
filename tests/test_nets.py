"""Networks: shapes at every scale, freezing on growth, noise rules, injection, error paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctgan.config import load_config, scale_shapes
from ctgan.layers import ConvBlock, make_conv, make_norm
from ctgan.nets import (
    Discriminator,
    GeneratorPyramid,
    SliceStackGenerator,
    build_generator_pyramid,
    grow_discriminator,
    make_noise,
    make_reconstruction_noise,
    upsample,
)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
MODELS = ("3d", "2d")


def _pyramid(model: str, shapes: list[tuple[int, int, int]], channels: int = 4) -> GeneratorPyramid:
    torch.manual_seed(0)
    return build_generator_pyramid(model, channels, "instance", [s[0] for s in shapes])


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        pytest.param("3d", "paper", marks=pytest.mark.slow),  # ~5 s: float32 3D convs on CPU
        ("2d", "paper"),
        ("3d", "smoke"),
        ("2d", "smoke"),
        ("3d", "cpu"),
        ("2d", "cpu"),
    ],
)
def test_every_scale_has_the_profile_shape(model: str, profile: str) -> None:
    shapes = scale_shapes(load_config(PARAMS, profile=profile).pyramid)
    pyramid = _pyramid(model, shapes)
    noises = make_noise(shapes, [1.0] * len(shapes), 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = pyramid.forward_all(noises)
    assert [tuple(o.shape) for o in outputs] == [(1, 1, *s) for s in shapes]
    for output in outputs:
        assert output.dtype == torch.float32
        assert torch.isfinite(output).all()


def test_paper_shapes_are_the_seeds() -> None:
    shapes = scale_shapes(load_config(PARAMS, profile="paper").pyramid)
    assert shapes == [(4, 28, 28), (7, 42, 42), (10, 63, 63), (15, 94, 94), (23, 141, 141)]


@pytest.mark.parametrize("model", MODELS)
def test_only_the_newest_scale_receives_gradient(model: str) -> None:
    shapes = [(4, 12, 12), (6, 18, 18), (9, 27, 27)]
    pyramid = _pyramid(model, shapes)
    pyramid.train()
    noises = make_noise(shapes, [1.0, 0.3, 0.2], 1, torch.Generator().manual_seed(1))
    pyramid(noises).square().mean().backward()
    for s, scale in enumerate(pyramid.scales):
        grads = [p.grad for p in scale.parameters()]
        if s == len(shapes) - 1:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
            assert scale.training
        else:
            assert all(g is None for g in grads)
            assert not any(p.requires_grad for p in scale.parameters())
            assert not scale.training  # frozen scales stay in eval mode after .train()


def test_growing_copies_the_previous_3d_scale() -> None:
    pyramid = _pyramid("3d", [(4, 12, 12), (6, 18, 18)])
    first, second = pyramid.scales[0].state_dict(), pyramid.scales[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_growing_the_2d_pyramid_reinitialises_only_first_and_last_convs() -> None:
    pyramid = _pyramid("2d", [(4, 16, 16), (6, 24, 24)])
    first, second = pyramid.scales[0].state_dict(), pyramid.scales[1].state_dict()
    for key, value in second.items():
        if key.startswith(("first.", "last.")):
            assert value.shape != first[key].shape or not torch.equal(value, first[key]), key
        else:
            assert torch.equal(value, first[key]), key


def test_2d_growing_with_equal_depth_copies_everything() -> None:
    pyramid = _pyramid("2d", [(4, 16, 16), (4, 24, 24)])
    first, second = pyramid.scales[0].state_dict(), pyramid.scales[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bigger_noise_gives_a_bigger_3d_volume() -> None:
    shapes = [(4, 12, 12), (6, 18, 18)]
    pyramid = _pyramid("3d", shapes)
    bigger = [(6, 16, 20), (9, 24, 30)]
    noises = make_noise(bigger, [1.0, 0.1], 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pyramid(noises)
    assert out.shape == (2, 1, 9, 24, 30)


def test_2d_generator_rejects_another_depth() -> None:
    generator = SliceStackGenerator(depth=4, channels=4)
    with pytest.raises(ValueError, match="built for depth 4"):
        generator(torch.zeros(1, 1, 5, 16, 16), None)


def test_2d_generator_ignores_noise_after_the_first_scale() -> None:
    shapes = [(4, 12, 12), (6, 18, 18)]
    pyramid = _pyramid("2d", shapes).eval()
    noises = make_noise(shapes, [1.0, 1.0], 1, torch.Generator().manual_seed(0))
    other = [noises[0], torch.randn_like(noises[1])]
    with torch.no_grad():
        assert torch.equal(pyramid(noises), pyramid(other))


@pytest.mark.parametrize("model", MODELS)
def test_injection_starts_from_a_given_volume(model: str) -> None:
    shapes = [(4, 12, 12), (6, 18, 18)]
    pyramid = _pyramid(model, shapes).eval()
    noises = make_reconstruction_noise(shapes, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = pyramid.forward_all(noises)
        injected = pyramid(noises, start_scale=1, start_volume=full[0])
        other = pyramid(noises, start_scale=1, start_volume=torch.zeros(1, 1, 3, 7, 9))
    assert torch.allclose(injected, full[1])
    assert other.shape == full[1].shape and not torch.allclose(other, full[1])


@pytest.mark.parametrize("model", MODELS)
def test_identity_init_starts_a_new_scale_as_its_upsampled_input(model: str) -> None:
    """train.new_scale_init: identity zeroes only the new scale's output conv: the new scale
    returns its upsampled input exactly, the rest of it is still the previous scale's copy; the
    coarsest scale and the seed's copy are untouched."""
    torch.manual_seed(0)
    copied, identity = GeneratorPyramid(model, 4), GeneratorPyramid(model, 4)
    for pyramid in (copied, identity):
        pyramid.add_scale(4, identity=True)  # the coarsest: nothing to be the identity of
    identity.load_state_dict(copied.state_dict())
    copied.add_scale(6)
    identity.add_scale(6, identity=True)
    previous = torch.randn(1, 1, 4, 12, 12)
    noise = torch.randn(1, 1, 6, 18, 18)
    with torch.no_grad():
        assert copied.scales[0].output_conv.weight.abs().sum() > 0
        assert torch.equal(
            identity.forward_scale(1, noise, previous), upsample(previous, (6, 18, 18))
        )
        assert not torch.allclose(
            copied.forward_scale(1, noise, previous), upsample(previous, (6, 18, 18))
        )
    new, old = identity.scales[1].state_dict(), copied.scales[1].state_dict()
    conv = "body.3.0.weight" if model == "3d" else "middle.0.0.weight"
    assert torch.equal(new[conv], old[conv])


def test_forward_rejects_bad_arguments() -> None:
    shapes = [(4, 12, 12), (6, 18, 18)]
    pyramid = _pyramid("3d", shapes)
    noises = make_noise(shapes, [1.0, 1.0], 1, None)
    with pytest.raises(ValueError, match="one map per scale"):
        pyramid(noises[:1])
    with pytest.raises(ValueError, match="start_scale must be in"):
        pyramid(noises, start_scale=2, start_volume=noises[0])
    with pytest.raises(ValueError, match="start_volume is required"):
        pyramid(noises, start_scale=1)
    with pytest.raises(ValueError, match="start_volume is required"):
        pyramid(noises, start_scale=0, start_volume=noises[0])
    with pytest.raises(ValueError, match=r"noises\[1\] must have shape"):
        pyramid([noises[0], torch.zeros(1, 2, 6, 18, 18)])


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_conv(1, 1, 1, 0)
    with pytest.raises(ValueError, match="norm must be one of"):
        make_norm(3, 4, "layer")
    with pytest.raises(ValueError, match="activation must be one of"):
        ConvBlock(3, 1, 4, padding=0, activation="gelu")
    with pytest.raises(ValueError, match="model must be one of"):
        GeneratorPyramid("4d", 4)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        GeneratorPyramid("3d", 0)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        GeneratorPyramid("3d", 4).add_scale(0)


def test_discriminator_gives_a_patch_map_and_grows_by_copy() -> None:
    torch.manual_seed(0)
    discriminator = Discriminator(channels=4)
    volume = torch.randn(2, 1, 5, 11, 13)
    assert discriminator(volume).shape == volume.shape
    grown = grow_discriminator(discriminator, 4, "instance")
    assert grown is not discriminator
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            grown.state_dict().values(), discriminator.state_dict().values(), strict=True
        )
    )


def test_reference_norm_runs_in_float64() -> None:
    torch.manual_seed(0)
    pyramid = build_generator_pyramid("3d", 4, "batch", [4, 6]).double()
    shapes = [(4, 12, 12), (6, 18, 18)]
    noises = make_noise(shapes, [1.0, 0.1], 1, None, dtype=torch.float64)
    out = pyramid(noises)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    assert isinstance(pyramid.scales[0].body[0][1], torch.nn.BatchNorm3d)


def test_make_noise_is_seeded_and_scaled() -> None:
    shapes = [(2, 4, 4), (3, 6, 6)]
    a = make_noise(shapes, [1.0, 0.5], 3, torch.Generator().manual_seed(7))
    b = make_noise(shapes, [1.0, 0.5], 3, torch.Generator().manual_seed(7))
    assert [tuple(z.shape) for z in a] == [(3, 1, 2, 4, 4), (3, 1, 3, 6, 6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    zero = make_noise(shapes, [1.0, 0.0], 1, None)
    assert zero[1].abs().sum() == 0
    with pytest.raises(ValueError, match="one entry per scale"):
        make_noise(shapes, [1.0], 1, None)


def test_reconstruction_noise_rule() -> None:
    noises = make_reconstruction_noise([(2, 4, 4), (3, 6, 6)], torch.Generator().manual_seed(0))
    assert noises[0].abs().sum() > 0 and noises[0].std() > 0.5
    assert noises[1].shape == (1, 1, 3, 6, 6) and noises[1].abs().sum() == 0


def test_architecture_rebuilds_the_pyramid() -> None:
    pyramid = _pyramid("2d", [(4, 16, 16), (6, 24, 24)])
    rebuilt = build_generator_pyramid(**pyramid.architecture())  # type: ignore[arg-type]
    rebuilt.load_state_dict(pyramid.state_dict())
    assert rebuilt.depths == [4, 6]
