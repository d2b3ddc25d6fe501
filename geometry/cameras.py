"""Batched pinhole cameras in the OpenCV convention, and the rays and projections built on them.

Conventions (see DESIGN.md):
- camera frame: x right, y down, z forward (OpenCV); ``c2w`` is a 4x4 camera-to-world matrix;
- world frame: +z up, the object inside the unit sphere, orbit cameras looking at the origin;
- pixels: continuous coordinates where pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``, so its
  centre is ``(j + 0.5, i + 0.5)``. This matches ``grid_sample(align_corners=False)`` and makes
  ``rescale`` exact: multiply the first row of ``K`` by ``w / W`` and the second by ``h / H``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from kornia.geometry.linalg import inverse_transformation

try:  # kornia >= 0.8.3 moved it; older releases only have kornia.utils
    from kornia.geometry import create_meshgrid
except ImportError:  # pragma: no cover
    from kornia.utils import create_meshgrid

from tunemv.errors import CameraError

# OpenGL/Blender camera frame (x right, y up, z backward) -> OpenCV frame: flip y and z.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class Cameras:
    """Pinhole cameras batched over any leading dims, e.g. ``[B, V]``.

    ``K`` (..., 3, 3) is in pixels at resolution ``height`` x ``width``; ``c2w`` (..., 4, 4) is OpenCV.
    All cameras in one batch share the image resolution.
    """

    K: torch.Tensor
    c2w: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.K.shape[-2:] != (3, 3) or self.c2w.shape[-2:] != (4, 4):
            raise CameraError(f"expected K (...,3,3) and c2w (...,4,4), got {tuple(self.K.shape)} and {tuple(self.c2w.shape)}")
        if self.K.shape[:-2] != self.c2w.shape[:-2]:
            raise CameraError(f"K batch shape {tuple(self.K.shape[:-2])} != c2w batch shape {tuple(self.c2w.shape[:-2])}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise CameraError(f"image size must be positive, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)

    # ----------------------------------------------------------------- batching
    @property
    def shape(self) -> torch.Size:
        return self.K.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.K.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> Cameras:
        """Index the batch dims only, e.g. ``cams[0]`` or ``cams[:, view_ids]``."""
        K, c2w = self.K[index], self.c2w[index]
        if K.shape[-2:] != (3, 3):
            raise CameraError(f"index {index!r} reaches into the 3x3 matrix dims; index batch dims only")
        return Cameras(K, c2w, self.width, self.height)

    def to(self, *args, **kwargs) -> Cameras:
        """Same semantics as ``Tensor.to``; Lightning moves batches through this method."""
        return Cameras(self.K.to(*args, **kwargs), self.c2w.to(*args, **kwargs), self.width, self.height)

    def reshape(self, *shape: int) -> Cameras:
        return Cameras(self.K.reshape(*shape, 3, 3), self.c2w.reshape(*shape, 4, 4), self.width, self.height)

    def flatten(self) -> Cameras:
        """``[B, V]`` -> ``[B*V]``, matching ``rearrange(x, "b v ... -> (b v) ...")``."""
        return self.reshape(-1)

    @staticmethod
    def _check_same_size(cameras: Sequence[Cameras]) -> None:
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise CameraError(f"cannot combine cameras with different image sizes {sorted(sizes)}; rescale first")

    @classmethod
    def stack(cls, cameras: Sequence[Cameras], dim: int = 0) -> Cameras:
        cls._check_same_size(cameras)
        dim = dim if dim >= 0 else dim - 2  # count from the batch dims, never into the matrix dims
        return cls(torch.stack([c.K for c in cameras], dim), torch.stack([c.c2w for c in cameras], dim),
                   cameras[0].width, cameras[0].height)

    @classmethod
    def cat(cls, cameras: Sequence[Cameras], dim: int = 0) -> Cameras:
        cls._check_same_size(cameras)
        dim = dim if dim >= 0 else dim - 2
        return cls(torch.cat([c.K for c in cameras], dim), torch.cat([c.c2w for c in cameras], dim),
                   cameras[0].width, cameras[0].height)

    # --------------------------------------------------------------- intrinsics
    @property
    def focal(self) -> torch.Tensor:
        """(..., 2) focal lengths ``(fx, fy)`` in pixels."""
        return torch.stack([self.K[..., 0, 0], self.K[..., 1, 1]], -1)

    def rescale(self, height: int, width: int) -> Cameras:
        """The same cameras for images resized to ``height`` x ``width`` (exact under the pixel-centre convention)."""
        scale = self.K.new_tensor([width / self.width, height / self.height, 1.0])
        return Cameras(self.K * scale[:, None], self.c2w, width, height)

    def with_noise(self, amplitude: float, generator: torch.Generator | None = None) -> Cameras:
        """The cameras with VFusion3D's camera-noise injection: uniform noise in ``[-amplitude, amplitude]`` on
        the intrinsics (focal lengths relative, principal point in image fractions: independent of the resolution) and on
        the extrinsics' rotation and translation. The noisy rotation is projected back onto SO(3) (SVD), so
        the result is still a rigid camera."""
        if amplitude <= 0:
            return self
        noise = lambda *shape: (torch.rand(*shape, generator=generator, dtype=self.K.dtype)  # noqa: E731
                                * 2 - 1).to(self.device) * amplitude
        K = self.K.clone()
        K[..., 0, 0] = self.K[..., 0, 0] * (1 + noise(*self.shape))  # focal lengths: relative
        K[..., 1, 1] = self.K[..., 1, 1] * (1 + noise(*self.shape))
        K[..., 0, 2] = self.K[..., 0, 2] + noise(*self.shape) * self.width  # principal point: image fractions
        K[..., 1, 2] = self.K[..., 1, 2] + noise(*self.shape) * self.height
        c2w = self.c2w.clone()
        u, _, vh = torch.linalg.svd(self.c2w[..., :3, :3] + noise(*self.shape, 3, 3))
        rotation = u @ vh
        flip = torch.det(rotation) < 0  # a reflection is not a camera: flip the last axis back
        rotation[flip] = (u[flip] * rotation.new_tensor([1.0, 1.0, -1.0])) @ vh[flip]
        c2w[..., :3, :3] = rotation
        c2w[..., :3, 3] += noise(*self.shape, 3)
        return Cameras(K, c2w, self.width, self.height)

    # --------------------------------------------------------------- extrinsics
    @property
    def w2c(self) -> torch.Tensor:
        """(..., 4, 4) world-to-camera, the rigid inverse of ``c2w``."""
        flat = self.c2w.reshape(-1, 4, 4)
        return inverse_transformation(flat).reshape(self.c2w.shape)

    @property
    def centers(self) -> torch.Tensor:
        """(..., 3) camera positions in world coordinates."""
        return self.c2w[..., :3, 3]

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(..., N, 3) world points -> camera frame; leading dims broadcast with the cameras' batch dims."""
        w2c = self.w2c
        return torch.einsum("...ij,...nj->...ni", w2c[..., :3, :3], points) + w2c[..., None, :3, 3]

    def camera_to_world(self, points: torch.Tensor) -> torch.Tensor:
        """(..., N, 3) camera-frame points -> world."""
        return torch.einsum("...ij,...nj->...ni", self.c2w[..., :3, :3], points) + self.c2w[..., None, :3, 3]

    # ------------------------------------------------------------- projections
    def project(self, points: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project (..., N, 3) world points.

        Returns ``pixels`` (..., N, 2) as (u=x, v=y) in this camera's pixel frame, ``depth`` (..., N) as the
        camera-frame z, and ``in_front`` (..., N), true where ``depth > eps``. Points behind the camera get
        finite but meaningless pixels; use ``in_front`` to mask them. (kornia's ``project_points`` needs a
        ``K`` per point and does not flag points behind the camera, hence the einsum here.)
        """
        cam = self.world_to_camera(points)
        depth = cam[..., 2]
        in_front = depth > eps
        safe_z = torch.where(in_front, depth, torch.full_like(depth, eps))
        uv1 = torch.einsum("...ij,...nj->...ni", self.K, cam / safe_z[..., None])
        return uv1[..., :2], depth, in_front

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(..., N, 2) pixels with camera-frame z ``depth`` (..., N) -> (..., N, 3) world points."""
        uv1 = torch.cat([pixels, torch.ones_like(pixels[..., :1])], -1)
        cam = torch.einsum("...ij,...nj->...ni", torch.linalg.inv(self.K), uv1) * depth[..., None]
        return self.camera_to_world(cam)

    def pixel_centers(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """(h, w, 2) pixel-centre coordinates (u, v) at the given resolution (default: the cameras' own)."""
        height, width = height or self.height, width or self.width
        grid = create_meshgrid(height, width, normalized_coordinates=False, device=self.device, dtype=self.K.dtype)
        return grid[0] + 0.5

    def rays(self, height: int | None = None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through every pixel centre at ``height`` x ``width`` (default: the cameras' own resolution).

        Returns ``origins`` and unit ``directions``, both (..., h, w, 3) in world coordinates.
        """
        height, width = height or self.height, width or self.width
        cams = self.rescale(height, width)
        uv = cams.pixel_centers().reshape(-1, 2)
        uv1 = torch.cat([uv, torch.ones_like(uv[:, :1])], -1)
        dirs_cam = torch.einsum("...ij,nj->...ni", torch.linalg.inv(cams.K), uv1)
        dirs = torch.einsum("...ij,...nj->...ni", cams.c2w[..., :3, :3], dirs_cam)
        dirs = torch.nn.functional.normalize(dirs, dim=-1).reshape(*self.shape, height, width, 3)
        origins = self.centers[..., None, None, :].expand_as(dirs)
        return origins, dirs

    def depth_per_distance(self, directions: torch.Tensor) -> torch.Tensor:
        """Camera-frame z per unit of ray distance, (..., h, w), for (..., h, w, 3) unit ``directions`` of ``rays``."""
        return (directions * self.c2w[..., None, None, :3, 2]).sum(-1)

    # -------------------------------------------------------- other conventions
    @classmethod
    def from_opengl(cls, K: torch.Tensor, c2w_opengl: torch.Tensor, width: int, height: int) -> Cameras:
        """Cameras from OpenGL/Blender camera-to-world matrices (x right, y up, z backward)."""
        c2w_opengl = torch.as_tensor(c2w_opengl)
        flip = _GL_TO_CV.to(device=c2w_opengl.device, dtype=c2w_opengl.dtype)
        return cls(torch.as_tensor(K, dtype=c2w_opengl.dtype), c2w_opengl @ flip, width, height)

    from_blender = from_opengl

    def to_opengl(self) -> torch.Tensor:
        """(..., 4, 4) camera-to-world matrices in the OpenGL/Blender convention."""
        return self.c2w @ _GL_TO_CV.to(device=self.device, dtype=self.c2w.dtype)

    @staticmethod
    def intrinsics_from_fov(fov_x_deg: float, width: int, height: int, fov_y_deg: float | None = None) -> torch.Tensor:
        """(3, 3) K with principal point at the image centre. ``fov_y`` defaults to square pixels."""
        fx = 0.5 * width / math.tan(0.5 * math.radians(fov_x_deg))
        fy = fx if fov_y_deg is None else 0.5 * height / math.tan(0.5 * math.radians(fov_y_deg))
        return torch.tensor([[fx, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]])

    # ------------------------------------------------------------- constructors
    @classmethod
    def look_at(cls, eye: torch.Tensor, K: torch.Tensor, width: int, height: int,
                target: torch.Tensor | None = None, up: Sequence[float] = (0.0, 0.0, 1.0)) -> Cameras:
        """Cameras at ``eye`` (..., 3) looking at ``target`` (default: the origin), world ``up`` = +z."""
        eye = torch.as_tensor(eye, dtype=torch.float32)
        target = torch.zeros_like(eye) if target is None else torch.as_tensor(target, dtype=eye.dtype).expand_as(eye)
        forward = torch.nn.functional.normalize(target - eye, dim=-1)
        up_vec = eye.new_tensor(up).expand_as(forward)
        right = torch.linalg.cross(forward, up_vec)
        if (right.norm(dim=-1) < 1e-6).any():
            raise CameraError("look_at: viewing direction is parallel to the up vector (elevation of +-90 deg)")
        right = torch.nn.functional.normalize(right, dim=-1)
        down = torch.linalg.cross(forward, right)  # OpenCV: right x down = forward
        c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
        c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
        c2w[..., 3, 3] = 1.0
        K = torch.as_tensor(K, dtype=eye.dtype).expand(*eye.shape[:-1], 3, 3).clone()
        return cls(K, c2w, width, height)


def orbit(num_views: int, elevation_deg: float | Sequence[float] = 20.0, radius: float = 2.2, fov_deg: float = 50.0,
          resolution: int | tuple[int, int] = 64, azimuth_start_deg: float = 0.0) -> Cameras:
    """``num_views`` cameras at uniform azimuth around +z, looking at the origin; returns Cameras ``[V]``.

    ``elevation_deg`` is one value or one per view; ``fov_deg`` is the horizontal field of view;
    ``resolution`` is ``size`` or ``(height, width)``. Azimuth 0 looks from +x towards the origin.
    """
    if num_views < 1:
        raise CameraError(f"orbit needs num_views >= 1, got {num_views}")
    if radius <= 0 or not 0 < fov_deg < 180:
        raise CameraError(f"orbit needs radius > 0 and 0 < fov_deg < 180, got radius={radius}, fov_deg={fov_deg}")
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float64).expand(num_views)
    if (elevation.abs() >= 90).any():
        raise CameraError(f"orbit elevation must be inside (-90, 90) degrees, got {elevation_deg}")
    azimuth = torch.deg2rad(azimuth_start_deg + torch.arange(num_views, dtype=torch.float64) * 360.0 / num_views)
    elevation = torch.deg2rad(elevation)
    eye = radius * torch.stack([elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()], -1)
    K = Cameras.intrinsics_from_fov(fov_deg, width, height)
    return Cameras.look_at(eye.float(), K, width, height)
