"""Ray maths shared by the renderers, the epipolar attention and the evaluation: where a ray meets the bounds."""

from __future__ import annotations

import torch


def near_far_from_sphere(origins: torch.Tensor, directions: torch.Tensor, radius: float = 1.0,
                         min_near: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray–sphere intersection for (..., 3) rays with unit ``directions``.

    Returns ``near``, ``far`` (...) and ``hit`` (...), true where the ray crosses the sphere. A ray that misses
    gets ``near == far`` at its closest approach, so its samples collapse to one point and it renders nothing.
    A camera inside the sphere starts at ``min_near``.
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    near = (-b - root).clamp(min=min_near)
    far = torch.maximum((-b + root).clamp(min=min_near), near)
    return near, far, disc > 0


def sees_sphere(cameras, radius: float = 1.0, grid: int = 8) -> torch.Tensor:
    """(...) bool per camera of ``cameras`` [...]: whether any of a ``grid`` x ``grid`` set of its rays (across
    the whole image) crosses the sphere of ``radius`` at the origin in front of it: the object's bounds."""
    origins, directions = cameras.rescale(grid, grid).rays()  # (..., g, g, 3)
    near, far, hit = near_far_from_sphere(origins, directions, radius)
    return (hit & (far > near)).flatten(-2).any(-1)
