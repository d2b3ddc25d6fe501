import math

import pytest
import torch

from tunemv.errors import CameraError
from tunemv.geometry.cameras import Cameras, orbit


def random_cameras(batch=(2, 3)) -> Cameras:
    """Orbit-like cameras with random positions, rolls and non-square, off-centre intrinsics."""
    n = math.prod(batch)
    eye = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1) * torch.empty(n, 1).uniform_(1.5, 3.0)
    K = torch.tensor([[70.0, 0.0, 33.0], [0.0, 65.0, 20.0], [0.0, 0.0, 1.0]])
    cams = Cameras.look_at(eye, K, width=64, height=48, target=torch.randn(3) * 0.1)
    return cams.reshape(*batch)


def test_project_unproject_round_trip():
    cams = random_cameras()
    pixels = torch.rand(2, 3, 50, 2) * torch.tensor([64.0, 48.0])
    depth = torch.empty(2, 3, 50).uniform_(0.5, 4.0)
    points = cams.unproject(pixels, depth)
    back, back_depth, in_front = cams.project(points)
    torch.testing.assert_close(back, pixels, atol=1e-3, rtol=0)
    torch.testing.assert_close(back_depth, depth, atol=1e-4, rtol=1e-5)
    assert in_front.all()


def test_rays_pass_through_pixel_centres():
    cams = random_cameras()
    origins, dirs = cams.rays(12, 16)
    assert origins.shape == dirs.shape == (2, 3, 12, 16, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(2, 3, 12, 16))
    points = (origins + 2.5 * dirs).reshape(2, 3, -1, 3)
    pixels, _, in_front = cams.rescale(12, 16).project(points)
    centres = torch.stack(torch.meshgrid(torch.arange(16) + 0.5, torch.arange(12) + 0.5, indexing="xy"), -1)
    torch.testing.assert_close(pixels, centres.reshape(1, 1, -1, 2).expand_as(pixels), atol=1e-3, rtol=0)
    assert in_front.all()


def test_points_behind_camera_are_flagged():
    cams = orbit(1, 0.0, radius=2.0)
    behind = cams.centers[:, None] * 1.5  # further out along the camera's own position, i.e. behind it
    _, depth, in_front = cams.project(behind)
    assert (depth < 0).all() and not in_front.any()


def test_opengl_to_opencv_on_a_known_camera():
    # OpenGL camera at (0, 0, 5) with identity rotation looks down world -z, with world +y up in the image.
    c2w_gl = torch.eye(4)
    c2w_gl[2, 3] = 5.0
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]])
    cams = Cameras.from_opengl(K, c2w_gl, 64, 48)
    pixels, depth, in_front = cams.project(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(pixels, torch.tensor([[32.0 + 20.0, 24.0], [32.0, 24.0 - 20.0]]))
    torch.testing.assert_close(depth, torch.tensor([5.0, 5.0]))
    assert in_front.all()
    torch.testing.assert_close(cams.to_opengl(), c2w_gl)
    assert Cameras.from_blender is not None and Cameras.from_blender.__func__ is Cameras.from_opengl.__func__


def test_orbit_cameras_look_at_the_origin():
    cams = orbit(8, elevation_deg=25.0, radius=2.2, fov_deg=50.0, resolution=64, azimuth_start_deg=10.0)
    assert cams.shape == (8,)
    torch.testing.assert_close(cams.centers.norm(dim=-1), torch.full((8,), 2.2))
    pixels, depth, _ = cams.project(torch.zeros(8, 1, 3))
    torch.testing.assert_close(pixels, torch.full((8, 1, 2), 32.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth, torch.full((8, 1), 2.2))
    # +z is up: the camera's "down" axis points to -z, and elevation is the angle above the xy plane.
    assert (cams.c2w[:, 2, 1] < 0).all()
    torch.testing.assert_close(torch.rad2deg(torch.asin(cams.centers[:, 2] / 2.2)), torch.full((8,), 25.0))
    azimuths = torch.rad2deg(torch.atan2(cams.centers[:, 1], cams.centers[:, 0])) % 360
    torch.testing.assert_close(azimuths, (10.0 + 45.0 * torch.arange(8)) % 360, atol=1e-3, rtol=0)
    # rotation is orthonormal with det +1 (a proper OpenCV frame)
    R = cams.c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(8, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(8))
    # horizontal fov: the image edge subtends fov/2
    assert cams.K[0, 0, 0].item() == pytest.approx(32 / math.tan(math.radians(25)))


def test_rescale_scales_projections():
    cams = random_cameras((4,))
    points = torch.randn(4, 10, 3) * 0.3
    pixels, _, _ = cams.project(points)
    half, _, _ = cams.rescale(24, 32).project(points)
    torch.testing.assert_close(half, pixels * 0.5)
    assert (cams.rescale(24, 32).height, cams.rescale(24, 32).width) == (24, 32)


def test_world_camera_transforms_are_inverse():
    cams = random_cameras()
    points = torch.randn(2, 3, 7, 3)
    torch.testing.assert_close(cams.camera_to_world(cams.world_to_camera(points)), points, atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.w2c @ cams.c2w, torch.eye(4).expand(2, 3, 4, 4), atol=1e-5, rtol=0)


def test_batching_helpers():
    cams = random_cameras((2, 3))
    assert cams.flatten().shape == (6,)
    assert cams[1].shape == (3,) and cams[:, torch.tensor([0, 2])].shape == (2, 2)
    assert Cameras.stack([cams, cams]).shape == (2, 2, 3)
    assert Cameras.cat([cams, cams], dim=1).shape == (2, 6)
    torch.testing.assert_close(cams[1, 2].K, cams.K[1, 2])
    with pytest.raises(CameraError, match="different image sizes"):
        Cameras.stack([cams, cams.rescale(10, 10)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_views=0), "num_views"),
    (dict(num_views=4, elevation_deg=90.0), "elevation"),
    (dict(num_views=4, radius=-1.0), "radius"),
])
def test_bad_orbits_raise_clear_errors(kwargs, match):
    with pytest.raises(CameraError, match=match):
        orbit(**kwargs)


def test_bad_shapes_raise():
    with pytest.raises(CameraError, match="expected K"):
        Cameras(torch.eye(4), torch.eye(4), 8, 8)
    with pytest.raises(CameraError, match="batch shape"):
        Cameras(torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(3, 4, 4), 8, 8)
    with pytest.raises(CameraError, match="positive"):
        Cameras(torch.eye(3), torch.eye(4), 0, 8)
