"""Mesh extraction from any SDF: a dense grid, marching cubes (PyMCubes), vertex colours from views, export.

The grid is dense and plain torch: no torchsparse or other compiled sparse library, which users often
cannot install. For speed the grid is evaluated coarse-to-fine: a grid 4x coarser is queried first and
only the fine points near its zero level set are queried again; the rest take the interpolated coarse value,
which has the right sign far from the surface.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import mcubes
import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from tunemv.atomic import atomic_path
from tunemv.geometry.cameras import Cameras
from tunemv.geometry.projection import bilinear_sample

SDFFunction = Callable[[torch.Tensor], torch.Tensor]  # (N, 3) world points -> (N,) signed distance
MESH_FORMATS = (".ply", ".obj", ".glb")


def grid_axis(resolution: int, bound: float, device=None) -> torch.Tensor:
    """(R,) lattice coordinates over [-bound, bound], both ends included; the same for x, y and z."""
    return torch.linspace(-bound, bound, resolution, device=device)


@torch.no_grad()
def evaluate_at_indices(sdf: SDFFunction, axis: torch.Tensor, indices: torch.Tensor, chunk: int) -> torch.Tensor:
    """SDF at lattice points given as (N, 3) integer indices (i, j, k) -> (N,), ``chunk`` points at a time.

    Points are built per chunk, so a 512^3 grid never holds all of its coordinates at once.
    """
    values = [sdf(axis[part]).reshape(-1).float() for part in indices.split(chunk)]
    return torch.cat(values) if values else axis.new_zeros(0)


@torch.no_grad()
def sdf_grid(sdf: SDFFunction, resolution: int = 256, bound: float = 1.0, chunk: int = 65536,
             coarse_to_fine: bool = True, device=None) -> torch.Tensor:
    """Sample ``sdf`` on the (R, R, R) lattice over [-bound, bound]^3; axis 0 is x, 1 is y, 2 is z."""
    if not 2 <= resolution <= 1024:
        raise ValueError(f"grid resolution must be in [2, 1024], got {resolution}")
    axis = grid_axis(resolution, bound, device)
    if not coarse_to_fine or resolution < 64:
        flat = torch.arange(resolution**3, device=axis.device)
        indices = torch.stack(torch.unravel_index(flat, (resolution,) * 3), -1)
        return evaluate_at_indices(sdf, axis, indices, chunk).reshape((resolution,) * 3)
    coarse_resolution = (resolution - 1) // 4 + 1
    coarse = sdf_grid(sdf, coarse_resolution, bound, chunk, coarse_to_fine=False, device=device)
    volume = F.interpolate(coarse[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    # An SDF changes by at most its distance, so a fine point whose interpolated value is more than a few
    # coarse cells from zero cannot be on the surface. The margin also tolerates a learned, inexact SDF.
    margin = 3.0 * (2 * bound / (coarse_resolution - 1))
    near = torch.nonzero(volume.abs() < margin)  # (M, 3) fine indices
    volume[near[:, 0], near[:, 1], near[:, 2]] = evaluate_at_indices(sdf, axis, near, chunk).to(volume.dtype)
    return volume


def marching_cubes(volume: torch.Tensor, bound: float = 1.0, level: float = 0.0) -> trimesh.Trimesh:
    """Zero level set of an (R, R, R) SDF grid over [-bound, bound]^3 -> mesh in world units, faces outward."""
    values = volume.detach().cpu().double().numpy()
    if not (values.min() < level < values.max()):
        raise ValueError(f"the SDF grid has no surface at level {level} (range {values.min():.3g}..{values.max():.3g})")
    # PyMCubes treats values above the level as inside, so the negated SDF gives outward-facing triangles.
    vertices, faces = mcubes.marching_cubes(-values, -level)
    vertices = vertices * (2 * bound / (volume.shape[0] - 1)) - bound
    return trimesh.Trimesh(vertices, faces, process=False)


def extract_mesh(sdf: SDFFunction, resolution: int = 256, bound: float = 1.0, chunk: int = 65536,
                 coarse_to_fine: bool = True, device=None) -> trimesh.Trimesh:
    """Query ``sdf`` on a dense grid at ``resolution``^3 and run marching cubes; vertices are in world units."""
    return marching_cubes(sdf_grid(sdf, resolution, bound, chunk, coarse_to_fine, device), bound)


@torch.no_grad()
def vertex_colors(vertices: torch.Tensor, images: torch.Tensor, cameras: Cameras, depths: torch.Tensor,
                  tolerance: float = 0.05) -> torch.Tensor:
    """Colour (N, 3) vertices from (V, C, H, W) images in [0, 1] seen by Cameras ``[V]``.

    A vertex takes the mean colour of the views where it is visible: in front of the camera, inside the
    image, and no farther than ``tolerance`` behind the rendered depth (V, H, W) (camera-frame z, 0 where
    empty) around its projection. A vertex no view sees takes the mean over the views it projects into, else grey.
    Returns (N, C) in [0, 1].
    """
    num_views, _, height, width = images.shape
    cameras = cameras.flatten().rescale(height, width)
    pixels, z, in_front = cameras.project(vertices.expand(num_views, *vertices.shape))  # (V, N, 2), (V, N)
    inside = in_front & ((pixels >= 0) & (pixels < pixels.new_tensor([width, height]))).all(-1)
    # The deepest of the 4 pixel centres around the projection: a vertex on a silhouette, whose own pixel
    # centre misses the object at low resolution, is still compared with the surface it belongs to.
    column = (pixels[..., 0] - 0.5).floor().long()[..., None] + pixels.new_tensor([0, 1, 0, 1]).long()
    row = (pixels[..., 1] - 0.5).floor().long()[..., None] + pixels.new_tensor([0, 0, 1, 1]).long()
    index = row.clamp(0, height - 1) * width + column.clamp(0, width - 1)  # (V, N, 4)
    surface = depths.reshape(num_views, -1).gather(1, index.reshape(num_views, -1)).reshape(index.shape).amax(-1)
    visible = inside & (surface > 0) & (z <= surface + tolerance)
    colors = bilinear_sample(images, pixels)  # (V, N, C)

    def mean_over(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = mask.to(colors.dtype)[..., None]
        return (colors * weight).sum(0) / weight.sum(0).clamp(min=1), mask.any(0)

    seen, any_seen = mean_over(visible)
    projected, any_projected = mean_over(inside)
    grey = torch.full_like(seen, 0.5)
    return torch.where(any_seen[:, None], seen, torch.where(any_projected[:, None], projected, grey)).clamp(0, 1)


def export_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` as PLY, OBJ or GLB (by suffix), atomically: a failed export leaves no partial file."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    with atomic_path(path) as temporary:
        mesh.export(temporary, file_type=path.suffix.lower().lstrip("."))
    return path


def colored_mesh(mesh: trimesh.Trimesh, colors: torch.Tensor) -> trimesh.Trimesh:
    """A copy of ``mesh`` with (N, 3) vertex colours in [0, 1]."""
    rgb = (colors.detach().cpu().numpy() * 255).round().astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=rgba, process=False)
