"""Eq. 2 aggregation: projection into every view, bilinear gathering, mean/variance over valid views."""

import pytest
import torch

from tunemv.geometry.cameras import orbit
from tunemv.geometry.projection import bilinear_sample
from tunemv.neus.aggregation import aggregate_mean_var, gather_view_features


def pixel_coordinate_maps(num_views: int, height: int, width: int) -> torch.Tensor:
    """(V, 2, h, w) maps whose value at each pixel is that pixel's centre (u, v) in its own pixel frame."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([u, v])[None].expand(num_views, -1, -1, -1).clone()


@pytest.mark.parametrize("twice_differentiable", [False, True])
def test_visible_points_gather_exactly_their_projections(twice_differentiable):
    cameras = orbit(6, 25.0, resolution=(24, 32))
    points = torch.rand(200, 3) * 0.8 - 0.4  # well inside every view's frustum
    maps = pixel_coordinate_maps(6, 12, 16)  # features at half the cameras' resolution
    features, valid = gather_view_features(points, maps, cameras, twice_differentiable)
    assert valid.all()
    pixels, _, _ = cameras.project(points.expand(6, -1, -1))
    expected = pixels * torch.tensor([16 / 32, 12 / 24])  # the same projection, in the map's pixel frame
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)

    aggregated = aggregate_mean_var(features, valid)
    torch.testing.assert_close(aggregated[:, :2], expected.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(aggregated[:, 2:4], expected.var(0, unbiased=False), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(aggregated[:, 4], torch.ones(200))


def test_both_samplers_agree_including_the_border():
    maps = torch.randn(3, 5, 7, 9)
    pixels = torch.rand(3, 300, 2) * torch.tensor([9.0, 7.0])  # anywhere in the image, edges included
    torch.testing.assert_close(bilinear_sample(maps, pixels), bilinear_sample(maps, pixels, True),
                               atol=1e-5, rtol=0)


def test_twice_differentiable_sampler_passes_gradgradcheck():
    maps = torch.randn(2, 3, 5, 6, dtype=torch.double, requires_grad=True)
    pixels = (torch.rand(2, 7, 2, dtype=torch.double) * 4 + 1).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda m, p: bilinear_sample(m, p, twice_differentiable=True),
                                        (maps, pixels))


def test_points_behind_or_outside_are_invalid_and_unseen_points_fall_back_to_zero():
    cameras = orbit(2, 0.0, resolution=16)  # camera 0 at +x, camera 1 at -x, both 2.2 from the origin
    maps = torch.randn(2, 4, 16, 16)
    behind_camera_0 = torch.tensor([[3.0, 0.0, 0.0]])  # behind camera 0, in front of camera 1
    far_outside = torch.tensor([[0.0, 50.0, 0.0]])  # outside both images
    features, valid = gather_view_features(torch.cat([behind_camera_0, far_outside]), maps, cameras)
    assert valid.tolist() == [[False, False], [True, False]]

    aggregated = aggregate_mean_var(features, valid)
    torch.testing.assert_close(aggregated[0, :4], features[1, 0])  # only camera 1 sees point 0
    assert (aggregated[0, 4:8] == 0).all() and aggregated[0, 8] == 0.5  # one view: no variance
    assert (aggregated[1] == 0).all()  # nobody sees point 1: mean 0, variance 0, fraction 0
