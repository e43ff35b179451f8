"""Layers: Conv3d (oneDNN in channels-last on CPU, float32 included) and its backward by forward
convolutions, InstanceNorm3d (keeps channels-last): each against torch's own."""

from __future__ import annotations

import pytest
import torch

from ctgan import layers
from ctgan.layers import Conv3d, InstanceNorm3d, native_bf16

# --- Conv3d: oneDNN for float32 on CPU ---------------------------------------------------------


def test_conv3d_float32_matches_torch_and_trains() -> None:
    torch.manual_seed(0)
    conv = Conv3d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 4, 9, 11, requires_grad=True)  # batch 1, N*C*D*H small: torch's slow path
    out = conv(x)
    expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, padding=1)
    assert out.shape == (1, 5, 4, 9, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and conv.weight.grad is not None and conv.bias.grad is not None
    assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
def test_conv3d_leaves_bf16_autocast_float64_and_disabled_onednn_to_torch() -> None:
    torch.manual_seed(0)
    conv = Conv3d(2, 2, 3)
    x = torch.randn(1, 2, 5, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    assert conv.double()(x.double()).dtype == torch.float64
    conv.float()
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(
            conv(x), torch.nn.functional.conv3d(x, conv.weight, conv.bias), atol=1e-5, rtol=1e-5
        )


# --- channels-last on CPU: Conv3d, InstanceNorm3d, the one-output-channel backward ---------------

CHANNELS_LAST = torch.channels_last_3d


@pytest.mark.parametrize("in_channels", [1, 3])
def test_conv3d_returns_channels_last_on_cpu_and_matches_torch(in_channels: int) -> None:
    torch.manual_seed(0)
    conv = Conv3d(in_channels, 4, 3, padding=1)
    x = torch.randn(1, in_channels, 5, 6, 7)
    expected = torch.nn.functional.conv3d(
        x.double(), conv.weight.double(), conv.bias.double(), padding=1
    )
    out = conv(x)
    assert out.is_contiguous(memory_format=CHANNELS_LAST) and not out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(x)
    assert low.dtype == torch.bfloat16
    if native_bf16("cpu"):  # oneDNN keeps channels-last in bf16 only where the CPU computes bf16
        assert low.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(low.double(), expected, atol=0.05, rtol=0.02)
    assert conv.double()(x.double()).is_contiguous()  # float64 (the reference): torch's own path


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_instance_norm_matches_torch_in_every_path(
    batch: int, channels_last: bool, grad: bool
) -> None:
    torch.manual_seed(0)
    ours = InstanceNorm3d(4, affine=True)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    theirs = torch.nn.InstanceNorm3d(4, affine=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(batch, 4, 5, 6, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x_ours = x.clone().requires_grad_(grad)
    x_theirs = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = ours(x_ours)
        expected = theirs(x_theirs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if channels_last:
        assert out.is_contiguous(memory_format=CHANNELS_LAST)
    if grad:
        weights = torch.randn_like(expected)
        (out * weights).sum().backward()
        (expected * weights).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, atol=1e-4, rtol=1e-4)


def test_instance_norm_keeps_torch_errors() -> None:
    with pytest.raises(ValueError, match="expected input's size at dim=1 to match num_features"):
        InstanceNorm3d(4, affine=True)(torch.randn(1, 3, 4, 4, 4))


@pytest.mark.parametrize("out_channels", [1, 4])
@pytest.mark.parametrize(("kernel", "padding", "batch"), [(3, 0, 1), (3, 1, 2), (1, 0, 1)])
def test_conv_backward_by_forwards_matches_torch_to_second_order(
    kernel: int, padding: int, batch: int, out_channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float32 convs (and every conv with one output channel) have their own backward
    (layers._ConvByForwards): first- and second-order gradients (WGAN-GP differentiates through D's
    gradient) are as close to float64 as torch's own float32 convolution's (float32 rounding)."""
    calls = []
    original = layers._ConvByForwards.backward
    monkeypatch.setattr(
        layers._ConvByForwards, "backward", lambda *a: calls.append(1) or original(*a)
    )
    torch.manual_seed(0)
    conv = Conv3d(5, out_channels, kernel, padding=padding)
    x = torch.randn(batch, 5, 6, 7, 8)
    weights = torch.randn(batch, out_channels, *(n + 2 * padding - kernel + 1 for n in (6, 7, 8)))

    def gradients(conv_fn, dtype: torch.dtype) -> list[torch.Tensor]:
        x_ = x.to(dtype).requires_grad_(True)
        w_ = conv.weight.detach().to(dtype).requires_grad_(True)
        b_ = conv.bias.detach().to(dtype).requires_grad_(True)
        out = conv_fn(x_, w_, b_)
        grads = torch.autograd.grad(
            (out * weights.to(dtype)).sum(), (x_, w_, b_), create_graph=True
        )
        (second,) = torch.autograd.grad(grads[0].square().sum() + grads[1].square().sum(), x_)
        return [out, *grads, second]

    def torch_conv(x_, w_, b_):
        return torch.nn.functional.conv3d(x_, w_, b_, padding=padding)

    def our_conv(x_, w_, b_):
        return conv._conv_forward(x_, w_, b_)

    float64 = gradients(torch_conv, torch.float64)
    theirs = gradients(torch_conv, torch.float32)
    ours = gradients(our_conv, torch.float32)
    assert calls, "the conv's backward did not run through layers._ConvByForwards"
    for name, o, t, exact in zip(
        ("out", "x", "weight", "bias", "second"), ours, theirs, float64, strict=True
    ):
        assert o.shape == exact.shape, name
        our_error = (o.double() - exact).abs().max().item()
        torch_error = (t.double() - exact).abs().max().item()
        scale = exact.abs().max().item()
        assert our_error <= 4 * torch_error + 1e-6 * scale, (name, our_error, torch_error, scale)


def test_one_output_conv_in_bf16_stays_close_to_float64() -> None:
    torch.manual_seed(0)
    conv = Conv3d(8, 1, 3)
    x = torch.randn(1, 8, 7, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().double().requires_grad_(True)
    torch.nn.functional.conv3d(x64, w64, conv.bias.detach().double()).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=0.02, rtol=0.01)
    torch.testing.assert_close(conv.weight.grad.double(), w64.grad, atol=0.5, rtol=0.01)
