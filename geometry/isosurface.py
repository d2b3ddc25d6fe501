"""Surfaces of sampled fields: an SDF on a cube lattice (coarse to fine) and its level set by marching cubes.

It lives on the ground floor because the procedural data (ground-truth meshes of analytic SDFs) and the
evaluation (surfaces of voxel hulls) both need it, and data/ may not import neus/. Marching cubes is
PyMCubes'; trimesh holds the result.
"""

from __future__ import annotations

from collections.abc import Callable

import mcubes
import torch
import torch.nn.functional as F
import trimesh

SDFFunction = Callable[[torch.Tensor], torch.Tensor]  # (N, 3) world points -> (N,) signed distance, < 0 inside


@torch.no_grad()
def sdf_lattice(sdf: SDFFunction, resolution: int, bound: float = 1.0, margin_cells: float = 3.0,
                chunk: int = 65536) -> torch.Tensor:
    """``sdf`` at the (R, R, R) lattice over [-bound, bound]^3 (both ends included; axis 0 is x, 1 y, 2 z).

    A lattice 4x coarser is evaluated first; only fine points whose interpolated value is within
    ``margin_cells`` coarse cells of zero are evaluated again, the rest keep the interpolated value. For a
    1-Lipschitz SDF the interpolation errs by at most a coarse cell diagonal (sqrt(3) cells), so the default
    margin of 3 keeps every sign and every value next to the surface exact.
    """
    if resolution < 64:
        return dense_lattice(sdf, resolution, bound, chunk)
    coarse_resolution = (resolution - 1) // 4 + 1
    coarse = dense_lattice(sdf, coarse_resolution, bound, chunk)  # exact, so the error bound above holds
    axis = torch.linspace(-bound, bound, resolution)
    volume = F.interpolate(coarse[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    near = torch.nonzero(volume.abs() < margin_cells * 2 * bound / (coarse_resolution - 1))  # (M, 3) indices
    volume[tuple(near.T)] = _at_indices(sdf, axis, near, chunk)
    return volume


def dense_lattice(sdf: SDFFunction, resolution: int, bound: float = 1.0, chunk: int = 65536) -> torch.Tensor:
    """``sdf`` at every point of the (R, R, R) lattice over [-bound, bound]^3."""
    axis = torch.linspace(-bound, bound, resolution)
    indices = torch.cartesian_prod(*(torch.arange(resolution),) * 3)  # (R^3, 3), x slowest
    return _at_indices(sdf, axis, indices, chunk).reshape((resolution,) * 3)


def _at_indices(sdf: SDFFunction, axis: torch.Tensor, indices: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, 3) lattice indices -> (N,) values; points are built per chunk so a big lattice never holds them all."""
    values = [sdf(axis[part]).reshape(-1).float() for part in indices.split(chunk)]
    return torch.cat(values) if values else axis.new_zeros(0)


def marching_cubes(volume: torch.Tensor, low: float, spacing: float, level: float = 0.0) -> trimesh.Trimesh:
    """Level set of an (X, Y, Z) field sampled at ``low + spacing * index`` -> mesh in world units, faces outward.

    The field is negative inside (an SDF, or ``0.5 - occupancy``). A field without the level raises ValueError.
    """
    values = volume.detach().cpu().double().numpy()
    if not (values.min() < level < values.max()):
        raise ValueError(f"the grid has no surface at level {level} (range {values.min():.3g}..{values.max():.3g})")
    # PyMCubes treats values above the level as inside, so the negated field gives outward-facing triangles.
    vertices, faces = mcubes.marching_cubes(-values, -level)
    return trimesh.Trimesh(vertices * spacing + low, faces, process=False)
