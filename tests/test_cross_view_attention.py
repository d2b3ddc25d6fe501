"""Geometry-aware cross-view attention: zero init, exact correspondence gathering, NeuS-weighted attention."""

import pytest
import torch
from torch import nn

from tunemv.adapters.cross_view_attention import CrossViewAttention, CrossViewInputs
from tunemv.geometry.cameras import Cameras, orbit


def identity_attention(channels: int, num_points: int) -> CrossViewAttention:
    """Values and output pass features through unchanged, keys are all equal: output = mean of candidates."""
    layer = CrossViewAttention(channels, num_heads=1, num_points=num_points)
    layer.norm = nn.Identity()
    with torch.no_grad():
        for linear in (layer.to_value, layer.to_out):
            linear.weight.copy_(torch.eye(channels))
            linear.bias.zero_()
        for linear in (layer.to_key, layer.position):
            linear.weight.zero_()
            linear.bias.zero_()
    return layer


def pixel_maps(views: int, size: int, channels: int = 4) -> torch.Tensor:
    """(V, C, s, s) features holding each pixel's own centre (u, v) in channels 0 and 1."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    maps = torch.zeros(views, channels, size, size)
    maps[:, 0], maps[:, 1] = u, v
    return maps


def points_at_depth(cameras: Cameras, size: int, depths: list[float]):
    """NeuS-like samples: for every pixel, points at the given ray distances. (B, V, s, s, S, 3)."""
    origins, directions = cameras.rays(size, size)
    z = torch.tensor(depths)
    return origins[..., None, :] + z[:, None] * directions[..., None, :]


def test_zero_initialised_output_leaves_features_unchanged():
    layer = CrossViewAttention(32, num_heads=4)
    cameras = Cameras.stack([orbit(3, 20.0, resolution=8)] * 2)
    features = torch.randn(6, 32, 8, 8)
    assert torch.equal(layer(features, CrossViewInputs(cameras)), features)


def test_a_query_gathers_the_other_view_exactly_at_its_point_projection():
    cameras = orbit(4, 15.0, resolution=32)[[0, 1]][None]  # two views 90 degrees apart, [1, 2]
    size = 8
    points = points_at_depth(cameras, size, [2.1])  # one sample per ray, close to the origin
    inputs = CrossViewInputs(cameras, points, torch.ones(points.shape[:-1]))
    features = pixel_maps(2, size)
    out = identity_attention(4, num_points=1)(features, inputs)
    for i, j in ((0, 1), (1, 0)):
        pixels, _, _ = cameras[0, j : j + 1].project(points[0, i].reshape(1, -1, 3))
        expected = (pixels[0] * size / 32).reshape(size, size, 2).permute(2, 0, 1)
        inside = ((expected >= 0) & (expected <= size)).all(0)
        interior = ((expected >= 0.5) & (expected <= size - 0.5)).all(0)  # the map is linear between centres
        gathered = (out[i] - features[i])[:2]
        assert interior.sum() > 20
        torch.testing.assert_close(gathered[:, interior], expected[:, interior], atol=1e-4, rtol=0)
        assert (gathered[:, ~inside] == 0).all()  # nothing valid to attend to: no change


def test_neus_weights_multiply_the_attention_weights():
    cameras = orbit(4, 15.0, resolution=32)[[0, 1]][None]
    size = 4
    points = points_at_depth(cameras, size, [1.9, 2.4])
    weights = torch.tensor([0.2, 0.6]).expand(*points.shape[:-2], 2).contiguous()
    features = pixel_maps(2, size)
    out = identity_attention(4, num_points=2)(features, CrossViewInputs(cameras, points, weights)) - features
    pixels, _, _ = cameras[0, 1:2].project(points[0, 0].reshape(1, -1, 3))
    candidates = (pixels[0] * size / 32).reshape(size, size, 2, 2)  # (h, w, sample, uv)
    expected = (0.2 * candidates[..., 0, :] + 0.6 * candidates[..., 1, :]) / 0.8
    interior = ((candidates >= 0.5) & (candidates <= size - 0.5)).all(-1).all(-1)
    assert interior.sum() >= 4
    torch.testing.assert_close(out[0, :2].permute(1, 2, 0)[interior], expected[interior], atol=1e-4, rtol=0)


@pytest.mark.parametrize("views", [1, 2, 8])
@pytest.mark.parametrize("patch_size", [1, 3])
def test_any_number_of_views_with_and_without_neus_samples(views, patch_size):
    layer = CrossViewAttention(16, num_heads=2, num_points=4, patch_size=patch_size)
    nn.init.normal_(layer.to_out.weight)
    cameras = Cameras.stack([orbit(views, 20.0, resolution=16)])
    features = torch.randn(views, 16, 8, 8)
    uniform = layer(features, CrossViewInputs(cameras))
    points = points_at_depth(cameras, 16, [1.8, 2.0, 2.2, 2.4, 2.6])  # NeuS at 16 x 16, features at 8 x 8
    with_neus = layer(features, CrossViewInputs(cameras, points, torch.rand(points.shape[:-1])))
    assert uniform.shape == with_neus.shape == features.shape
    assert torch.isfinite(uniform).all() and torch.isfinite(with_neus).all()
    assert torch.equal(uniform, features) == (views == 1)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        CrossViewAttention(30, num_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        CrossViewAttention(32, patch_size=2)


@pytest.mark.parametrize("mode", ["full", "floored", "detached"])
def test_the_neus_weight_gradient_mode_keeps_or_cuts_the_path_and_detached_keeps_the_forward(mode):
    """Issue 19, defect 6: log w enters the logits; "detached" (the default) sends no gradient into NeuS
    through it and gives "full"'s output bit for bit; "floored" changes the forward only where w < 1e-3."""
    torch.manual_seed(0)
    layers = {name: CrossViewAttention(16, num_heads=2, num_points=4, weight_gradient=name)
              for name in ("full", mode)}
    nn.init.normal_(layers["full"].to_out.weight)
    layers[mode].load_state_dict(layers["full"].state_dict())
    cameras = Cameras.stack([orbit(3, 20.0, resolution=8)])
    points = points_at_depth(cameras, 8, [1.8, 2.2, 2.6, 3.0])
    features = torch.randn(3, 16, 8, 8)
    weights = torch.rand(points.shape[:-1]).mul(0.5).add(0.01).requires_grad_()  # all >= 1e-2: no floor bites
    out = layers[mode](features, CrossViewInputs(cameras, points, weights))
    out.square().sum().backward()
    assert (weights.grad is None) == (mode == "detached")
    assert CrossViewAttention(16).detach_weights  # the default
    reference = layers["full"](features, CrossViewInputs(cameras, points, weights.detach()))
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
