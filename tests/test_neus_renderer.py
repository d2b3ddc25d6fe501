"""NeuS volume rendering against analytic shapes, the foundation's sphere tracer and NeuS' own formulas."""

import pytest
import torch

from tunemv.data.render import render_sdf
from tunemv.data.sdf import Box, Sphere
from tunemv.geometry.cameras import orbit
from tunemv.geometry.rays import near_far_from_sphere
from tunemv.neus.ray_samplers import neus_upsample, sample_along_rays, sample_pdf
from tunemv.neus.renderer import AnalyticField, RaySamplingConfig, neus_alpha, render_rays, render_views

WHITE = torch.ones(3)
RED = (1.0, 0.0, 0.0)


def render(shape, cameras, size, **config):
    return render_views(AnalyticField(shape, RED), cameras, size, size, RaySamplingConfig(**config), WHITE)


@pytest.mark.parametrize(("shape", "expected_depth"), [
    (Sphere(0.6), [1.6, 1.6, 1.6, 1.6]),
    (Box((0.4, 0.3, 0.5)), [1.8, 1.9, 1.8, 1.9]),  # views from +x, +y, -x, -y hit the faces x=.4, y=.3
])
def test_depth_at_the_centre_matches_the_analytic_surface(shape, expected_depth):
    cameras = orbit(4, 0.0, resolution=33)  # odd size: the centre pixel's ray is the optical axis
    out = render(shape, cameras, 33)
    centre = out.depth[:, 0, 16, 16]
    torch.testing.assert_close(centre, torch.tensor(expected_depth), rtol=0.01, atol=0)
    assert (out.opacity[:, 0, 16, 16] > 0.99).all()
    torch.testing.assert_close(out.image[:, :, 16, 16], torch.tensor(RED).expand(4, 3), atol=0.01, rtol=0)


@pytest.mark.parametrize("shape", [Sphere(0.6), Box((0.4, 0.3, 0.5), rounding=0.05)])
def test_silhouette_matches_the_sphere_tracer(shape):
    cameras = orbit(4, 20.0, resolution=48, azimuth_start_deg=30.0)
    neus = render(shape, cameras, 48).opacity[:, 0] > 0.5
    traced = render_sdf(shape, cameras, RED, supersample=1).mask
    iou = (neus & traced).sum() / (neus | traced).sum()
    assert iou >= 0.98


def test_rays_that_miss_the_bounding_sphere_render_the_background():
    origins = torch.tensor([[0.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])  # the first passes 2 units from the centre
    out = render_rays(AnalyticField(Sphere(0.5), RED), origins, directions, RaySamplingConfig(), WHITE,
                      stratified=False)
    assert out.opacity[0] == 0 and torch.equal(out.color[0], WHITE)
    assert out.opacity[1] > 0.99
    assert (out.sample_weights.sum(-1) <= 1 + 1e-5).all()


def test_neus_alpha_is_the_discrete_formula_and_zero_when_leaving_the_surface():
    sdf = torch.tensor([[0.3, 0.1, -0.1, -0.3, -0.1, 0.2]])
    inv_s = torch.tensor(10.0)
    cdf = torch.sigmoid(sdf * inv_s)
    expected = ((cdf[:, :-1] - cdf[:, 1:]) / (cdf[:, :-1] + 1e-5)).clamp(min=0)
    alpha = neus_alpha(sdf, inv_s)
    torch.testing.assert_close(alpha, expected)
    assert (alpha[0, :3] > 0).all() and (alpha[0, 3:] == 0).all()  # exiting sections are transparent


def test_normals_by_autograd_and_by_finite_differences_point_at_the_camera():
    cameras = orbit(2, 0.0, resolution=9)
    field = AnalyticField(Sphere(0.6), RED)
    config = RaySamplingConfig()
    by_autograd = render_views(field, cameras, 9, 9, config, WHITE, with_normals=True).normals
    with torch.inference_mode():
        by_differences = render_views(field, cameras, 9, 9, config, WHITE, with_normals=True).normals
    torch.testing.assert_close(by_autograd, by_differences, atol=2e-3, rtol=0)
    towards_camera = -cameras.c2w[:, :3, 2]  # at the centre pixel the normal faces the camera
    torch.testing.assert_close(by_autograd[:, :, 4, 4], towards_camera, atol=0.01, rtol=0)


def test_near_far_and_samples_stay_on_the_ray_segment_inside_the_sphere():
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.2]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = near_far_from_sphere(origins, directions, radius=1.0, min_near=0.01)
    torch.testing.assert_close(near, torch.tensor([2.0, 0.01]))
    torch.testing.assert_close(far, torch.tensor([4.0, 0.8]))
    assert hit.all()

    uniform = sample_along_rays(near, far, 4, stratified=False)
    torch.testing.assert_close(uniform[0], torch.tensor([2.25, 2.75, 3.25, 3.75]))
    jittered = sample_along_rays(near, far, 64, stratified=True)
    assert (jittered >= near[:, None]).all() and (jittered <= far[:, None]).all()
    assert (jittered.diff(dim=-1) >= 0).all() and not torch.equal(jittered, sample_along_rays(near, far, 64, False))


def test_importance_samples_concentrate_at_the_surface_crossing():
    depths = torch.linspace(2.0, 4.0, 32)[None]
    sdf = 2.7 - depths  # a plane crossed at distance 2.7
    new = neus_upsample(depths, sdf, 16, inv_s=64.0)
    section = 2.0 / 31
    assert (new - 2.7).abs().max() < 1.5 * section and (new.mean() - 2.7).abs() < 0.5 * section
    assert torch.allclose(sample_pdf(depths, torch.zeros(1, 31), 4), torch.tensor([[2.25, 2.75, 3.25, 3.75]]))


def test_bad_sampling_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        RaySamplingConfig(num_importance=30, upsample_steps=4)
    with pytest.raises(ValueError, match="eikonal_samples"):
        RaySamplingConfig(eikonal_samples=0)
