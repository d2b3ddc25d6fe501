"""Analytic signed distance functions in torch: primitives and the few CSG operations the objects need.

Every shape maps points ``(N, 3)`` to signed distances ``(N,)`` (negative inside). Primitives are exact
SDFs (formulas after Inigo Quilez, https://iquilezles.org/articles/distfunctions/); unions, smooth unions
and subtractions are lower bounds of the distance, which is all sphere tracing needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import trimesh

from tunemv.geometry.isosurface import marching_cubes, sdf_lattice

Vec3 = Sequence[float]


def rotation_matrix(axis: str, degrees: float) -> torch.Tensor:
    """(3, 3) rotation about a world axis ``"x"``, ``"y"`` or ``"z"``."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    R = torch.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


class Shape:
    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Primitive(Shape):
    """A primitive placed at ``center`` with an optional ``rotation`` (local -> world, 3x3)."""

    def __init__(self, center: Vec3 = (0.0, 0.0, 0.0), rotation: torch.Tensor | None = None):
        self.center = torch.tensor(center, dtype=torch.float32)
        self.rotation = rotation

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        local = points - self.center.to(points)
        if self.rotation is not None:
            local = local @ self.rotation.to(points)  # R^T p, written for row vectors
        return self.local_sdf(local)

    def local_sdf(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Sphere(Primitive):
    def __init__(self, radius: float, center: Vec3 = (0.0, 0.0, 0.0)):
        super().__init__(center)
        self.radius = radius

    def local_sdf(self, p):
        return p.norm(dim=-1) - self.radius


class Box(Primitive):
    """Axis-aligned box with half extents ``half_size``, edges rounded by ``rounding``."""

    def __init__(self, half_size: Vec3, center: Vec3 = (0.0, 0.0, 0.0), rounding: float = 0.0,
                 rotation: torch.Tensor | None = None):
        super().__init__(center, rotation)
        self.half_size = torch.tensor(half_size, dtype=torch.float32)
        self.rounding = rounding

    def local_sdf(self, p):
        q = p.abs() - (self.half_size.to(p) - self.rounding)
        outside = q.clamp(min=0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp(max=0)
        return outside + inside - self.rounding


class Cylinder(Primitive):
    """Capped cylinder along local z with ``radius`` and ``half_height``."""

    def __init__(self, radius: float, half_height: float, center: Vec3 = (0.0, 0.0, 0.0),
                 rotation: torch.Tensor | None = None):
        super().__init__(center, rotation)
        self.radius, self.half_height = radius, half_height

    def local_sdf(self, p):
        d = torch.stack([p[..., :2].norm(dim=-1) - self.radius, p[..., 2].abs() - self.half_height], -1)
        return d.max(dim=-1).values.clamp(max=0) + d.clamp(min=0).norm(dim=-1)


class Torus(Primitive):
    """Torus around local z: ``major`` radius of the ring, ``minor`` radius of the tube."""

    def __init__(self, major: float, minor: float, center: Vec3 = (0.0, 0.0, 0.0),
                 rotation: torch.Tensor | None = None):
        super().__init__(center, rotation)
        self.major, self.minor = major, minor

    def local_sdf(self, p):
        q = torch.stack([p[..., :2].norm(dim=-1) - self.major, p[..., 2]], -1)
        return q.norm(dim=-1) - self.minor


class Cone(Primitive):
    """Capped cone (frustum) along local z from ``z=-half_height`` (radius ``bottom``) to ``+half_height`` (``top``)."""

    def __init__(self, bottom: float, top: float, half_height: float, center: Vec3 = (0.0, 0.0, 0.0),
                 rotation: torch.Tensor | None = None):
        super().__init__(center, rotation)
        self.bottom, self.top, self.half_height = bottom, top, half_height

    def local_sdf(self, p):
        h, r1, r2 = self.half_height, self.bottom, self.top
        qx, qy = p[..., :2].norm(dim=-1), p[..., 2]
        cap_radius = torch.where(qy < 0, torch.full_like(qy, r1), torch.full_like(qy, r2))
        ca = torch.stack([qx - torch.minimum(qx, cap_radius), qy.abs() - h], -1)
        k1 = p.new_tensor([r2, h])
        k2 = p.new_tensor([r2 - r1, 2 * h])
        q = torch.stack([qx, qy], -1)
        along = (((k1 - q) * k2).sum(-1) / (k2 * k2).sum()).clamp(0, 1)
        cb = q - k1 + k2 * along[..., None]
        sign = torch.where((cb[..., 0] < 0) & (ca[..., 1] < 0), -1.0, 1.0)
        return sign * torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()


class Capsule(Shape):
    """Segment from ``a`` to ``b`` thickened by ``radius``."""

    def __init__(self, a: Vec3, b: Vec3, radius: float):
        self.a, self.b, self.radius = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), radius

    def __call__(self, points):
        a, b = self.a.to(points), self.b.to(points)
        pa, ba = points - a, b - a
        h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
        return (pa - h[..., None] * ba).norm(dim=-1) - self.radius


class Union(Shape):
    def __init__(self, *shapes: Shape):
        self.shapes = shapes

    def __call__(self, points):
        return torch.stack([s(points) for s in self.shapes]).min(dim=0).values


class SmoothUnion(Shape):
    """Polynomial smooth minimum with blend radius ``k`` (for vase bodies and necks)."""

    def __init__(self, a: Shape, b: Shape, k: float):
        self.a, self.b, self.k = a, b, k

    def __call__(self, points):
        da, db = self.a(points), self.b(points)
        h = (0.5 + 0.5 * (db - da) / self.k).clamp(0, 1)
        return torch.lerp(db, da, h) - self.k * h * (1 - h)


class Subtract(Shape):
    """``a`` with ``b`` carved out (hollow mugs, vases and lamp shades)."""

    def __init__(self, a: Shape, b: Shape):
        self.a, self.b = a, b

    def __call__(self, points):
        return torch.maximum(self.a(points), -self.b(points))


class Transformed(Shape):
    """``shape`` uniformly scaled by ``scale`` about the origin, then moved by ``offset``; still a true SDF."""

    def __init__(self, shape: Shape, scale: float = 1.0, offset: Vec3 = (0.0, 0.0, 0.0)):
        self.shape, self.scale = shape, scale
        self.offset = torch.tensor(offset, dtype=torch.float32)

    def __call__(self, points):
        return self.shape((points - self.offset.to(points)) / self.scale) * self.scale


def bounding_box(shape: Shape, extent: float = 2.5, resolution: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max corners (3,) of ``shape`` on a grid over ``[-extent, extent]^3``, accurate to one cell.

    Every surface point lies within half a cell diagonal of some grid point, and the SDF is a distance, so
    keeping grid points with ``sdf <= half diagonal`` catches thin parts (a cone's tip) that no grid point
    falls inside.
    """
    axis = torch.linspace(-extent, extent, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    half_diagonal = math.sqrt(3) / 2 * 2 * extent / (resolution - 1)
    near = grid[shape(grid) <= half_diagonal]
    if near.numel() == 0:
        raise ValueError("shape has no surface inside the search box")
    return near.min(0).values, near.max(0).values


def normalize_to_sphere(shape: Shape, radius: float = 0.8) -> Shape:
    """Centre ``shape``'s bounding box at the origin and scale its half diagonal to ``radius``.

    A coarse pass over a wide box, then a fine pass over the normalised object; the two passes compose into
    one ``Transformed`` so the renderer's hot loop pays for a single wrapper.
    """
    scale, offset = 1.0, torch.zeros(3)
    for extent in (2.5, 1.2 * radius):
        low, high = bounding_box(Transformed(shape, scale, offset.tolist()), extent)
        step = radius / float((high - low).norm() / 2)
        scale, offset = scale * step, (offset - (low + high) / 2) * step  # world' = step * (world - centre)
    return Transformed(shape, scale, offset.tolist())


LIPSCHITZ_MARGIN = 1.25 * math.sqrt(3) + 1e-3  # coarse cells; see shape_mesh
# Over [-1, 1]: cells of 1/64, so the lattice holds every voxel centre of the 32^3 and 64^3 evaluation grids and
# the mesh's occupancy there is the SDF's exactly (at 97 a chair's differed: IoU 0.906, thin legs on the grid).
# Mean |sdf| at the vertices 0.0001-0.0002, Chamfer against 401^3 at the 100k-sample floor.
MESH_RESOLUTION = 129


def shape_mesh(shape: Shape, resolution: int = MESH_RESOLUTION, bound: float = 1.0) -> trimesh.Trimesh:
    """The surface of ``shape`` in its own (world) frame: marching cubes of the SDF over [-bound, bound]^3.

    The object must lie strictly inside the cube (procedural objects fit in the sphere of radius 0.8), so the
    mesh is closed. Features thinner than a cell (``2 * bound / (resolution - 1)``) can fall between lattice points.
    """
    # The shapes are 1-Lipschitz, so the interpolated coarse value errs by at most sqrt(3) coarse cells and a
    # fine corner of a surface cell lies within sqrt(3) fine cells of the surface: sqrt(3) * (1 + 1/4) suffices.
    volume = sdf_lattice(shape, resolution, bound, margin_cells=LIPSCHITZ_MARGIN)
    return marching_cubes(volume, -bound, 2 * bound / (resolution - 1))
