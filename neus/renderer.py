"""NeuS volume rendering (NeuS eq. 13) of any surface field along rays, chunked, optionally checkpointed.

A *surface field* is anything with ``query(points) -> FieldSample``, ``color(sample, directions)`` and
``inv_s()``. The latent SparseNeuS conditions one per object (``ConditionedField``); ``AnalyticField`` wraps
an exact SDF, which is how the tests check the renderer against analytic shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunemv.geometry.cameras import Cameras
from tunemv.geometry.rays import near_far_from_sphere
from tunemv.neus.ray_samplers import exclusive_transmittance, neus_upsample, sample_along_rays


@dataclass
class FieldSample:
    sdf: torch.Tensor  # (N,)
    geometry: torch.Tensor  # (N, G) geometry feature for the feature network
    condition: torch.Tensor  # (N, D) per-point context (aggregated view features), may have D = 0


class SurfaceField(Protocol):
    def query(self, points: torch.Tensor, twice_differentiable: bool = False) -> FieldSample: ...
    def color(self, sample: FieldSample, directions: torch.Tensor) -> torch.Tensor: ...
    def inv_s(self) -> torch.Tensor: ...


@dataclass
class AnalyticField:
    """An exact SDF with a constant colour and a fixed (large) sharpness: a test hook for the renderer."""

    sdf: Callable[[torch.Tensor], torch.Tensor]
    rgb: tuple[float, ...] = (1.0, 1.0, 1.0)
    sharpness: float = 2000.0

    def query(self, points: torch.Tensor, twice_differentiable: bool = False) -> FieldSample:
        empty = points.new_zeros(points.shape[0], 0)
        return FieldSample(self.sdf(points), empty, empty)

    def color(self, sample: FieldSample, directions: torch.Tensor) -> torch.Tensor:
        return directions.new_tensor(self.rgb).expand(directions.shape[0], -1)

    def inv_s(self) -> torch.Tensor:
        return torch.tensor(self.sharpness)


@dataclass
class RaySamplingConfig:
    """How rays are sampled and rendered. 32 coarse + 32 importance samples match SparseNeuS' budget."""

    num_coarse: int = 32
    num_importance: int = 32
    upsample_steps: int = 2  # importance samples are added in this many rounds, sharper each round
    bound_radius: float = 1.0
    ray_chunk: int = 1024
    eikonal_samples: int = 4096  # ray samples per object that also get the (costly) eikonal gradient

    def __post_init__(self):
        if self.num_coarse < 2 or self.num_importance < 0 or self.upsample_steps < 1:
            raise ValueError("need num_coarse >= 2, num_importance >= 0 and upsample_steps >= 1")
        if self.eikonal_samples < 1:
            raise ValueError(f"eikonal_samples must be >= 1, got {self.eikonal_samples}")
        if self.num_importance % self.upsample_steps:
            raise ValueError(f"num_importance ({self.num_importance}) must be divisible by upsample_steps "
                             f"({self.upsample_steps})")


@dataclass
class RayRender:
    """Per-ray outputs. S points are evaluated per ray; the S-1 sections between them are rendered."""

    color: torch.Tensor  # (R, C) with the background composited
    depth: torch.Tensor  # (R,) expected ray distance of the surface (weights renormalised by opacity)
    opacity: torch.Tensor  # (R,) sum of weights
    normals: torch.Tensor | None  # (R, 3) weighted unit SDF gradients, world frame
    sample_depths: torch.Tensor  # (R, S-1) ray distance of each section's midpoint
    sample_weights: torch.Tensor  # (R, S-1) NeuS weights T_i alpha_i

    @staticmethod
    def cat(parts: list[RayRender]) -> RayRender:
        def join(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values, 0)
        return RayRender(**{f.name: join(f.name) for f in fields(RayRender)})


def sdf_gradient(field: SurfaceField, points: torch.Tensor, create_graph: bool,
                 twice_differentiable: bool = False) -> tuple[FieldSample, torch.Tensor]:
    """Query ``field`` at (N, 3) points and differentiate its SDF there by autograd.

    ``create_graph`` keeps the gradient differentiable (the eikonal loss needs that, and then the field must
    be queried ``twice_differentiable``). Under ``torch.inference_mode`` autograd is unavailable, so the
    gradient falls back to central differences (6 extra SDF queries).
    """
    if torch.is_inference_mode_enabled():
        sample = field.query(points)
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * 1e-3
        plus = field.query((points[:, None] + offsets).reshape(-1, 3)).sdf.reshape(-1, 3)
        minus = field.query((points[:, None] - offsets).reshape(-1, 3)).sdf.reshape(-1, 3)
        return sample, (plus - minus) / 2e-3
    grad_was_enabled = torch.is_grad_enabled()
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        sample = field.query(points, twice_differentiable=twice_differentiable)
        (gradient,) = torch.autograd.grad(sample.sdf, points, torch.ones_like(sample.sdf),
                                          create_graph=create_graph and grad_was_enabled, retain_graph=True)
    if not grad_was_enabled:  # eval: drop the graph that enable_grad built
        sample = FieldSample(sample.sdf.detach(), sample.geometry.detach(), sample.condition.detach())
        gradient = gradient.detach()
    return sample, gradient


def neus_alpha(sdf: torch.Tensor, inv_s: torch.Tensor) -> torch.Tensor:
    """NeuS eq. 13: (R, S) SDF at consecutive samples -> (R, S-1) section opacities
    ``max((Phi_s(f_i) - Phi_s(f_{i+1})) / Phi_s(f_i), 0)`` with the logistic CDF Phi_s of sharpness s."""
    cdf = torch.sigmoid(sdf * inv_s)
    prev_cdf, next_cdf = cdf[:, :-1], cdf[:, 1:]
    return ((prev_cdf - next_cdf) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def render_rays(field: SurfaceField, origins: torch.Tensor, directions: torch.Tensor, config: RaySamplingConfig,
                background: torch.Tensor, stratified: bool, with_normals: bool = False) -> RayRender:
    """Render (R, 3) rays with unit directions through ``field``; ``background`` is (C,).

    ``with_normals`` differentiates the SDF at every sample (once) for the normal map.
    """
    near, far, hit = near_far_from_sphere(origins, directions, config.bound_radius)
    num_rays = origins.shape[0]
    split_sizes: list[int] = []  # (1, G, D[, 3]): sdf, geometry, condition[, gradient] packed in one tensor

    def evaluate(z: torch.Tensor) -> torch.Tensor:
        """(R, S) distances -> the field sample (and SDF gradient with normals) packed as (R, S, K)."""
        points = (origins[:, None] + z[..., None] * directions[:, None]).reshape(-1, 3)
        if with_normals:
            sample, gradient = sdf_gradient(field, points, create_graph=True)
            parts = [sample.sdf[:, None], sample.geometry, sample.condition, gradient]
        else:
            sample = field.query(points)
            parts = [sample.sdf[:, None], sample.geometry, sample.condition]
        split_sizes[:] = [part.shape[-1] for part in parts]
        return torch.cat(parts, -1).reshape(num_rays, z.shape[1], -1)

    # Every point is queried once, with the graph: the importance rounds reuse the coarse values instead of
    # re-querying all points as NeuS does, which halves the cost. Where to sample is not differentiated.
    depths = sample_along_rays(near, far, config.num_coarse, stratified)  # (R, S0)
    packed = evaluate(depths)
    per_step = config.num_importance // config.upsample_steps
    for step in range(config.upsample_steps if config.num_importance else 0):
        with torch.no_grad():
            new_depths = neus_upsample(depths, packed[..., 0], per_step, inv_s=64.0 * 2**step)
        depths, order = torch.sort(torch.cat([depths, new_depths], -1), -1)
        merged = torch.cat([packed, evaluate(new_depths)], 1)
        packed = merged.gather(1, order[..., None].expand(-1, -1, merged.shape[-1]))

    num_samples = depths.shape[1]
    alpha = neus_alpha(packed[..., 0], field.inv_s()) * hit[:, None]
    weights = alpha * exclusive_transmittance(alpha)  # (R, S-1)
    opacity = weights.sum(-1)

    # NeuS eq. 13 colours section i by its first point p_i, so the last point needs only its SDF.
    sdf, geometry, condition, *gradients = packed[:, :-1].split(split_sizes, -1)
    num_sections = num_rays * (num_samples - 1)
    section = FieldSample(sdf.reshape(num_sections), geometry.reshape(num_sections, split_sizes[1]),
                          condition.reshape(num_sections, split_sizes[2]))
    section_dirs = directions[:, None].expand(-1, num_samples - 1, -1).reshape(-1, 3)
    colors = field.color(section, section_dirs).reshape(num_rays, num_samples - 1, -1)
    color = (weights[..., None] * colors).sum(1) + (1.0 - opacity)[:, None] * background

    mid_depths = 0.5 * (depths[:, :-1] + depths[:, 1:])
    depth = (weights * mid_depths).sum(-1) / opacity.clamp(min=1e-6)
    normals = None
    if gradients:
        normals = (weights[..., None] * F.normalize(gradients[0], dim=-1)).sum(1)
    return RayRender(color, depth, opacity, normals, mid_depths, weights)


@dataclass
class ViewRender:
    """Renders of T target views at H x W, as a multiview batch of one object."""

    image: torch.Tensor  # (T, C, H, W)
    depth: torch.Tensor  # (T, 1, H, W) camera-frame z of the expected surface (weights renormalised)
    opacity: torch.Tensor  # (T, 1, H, W)
    normals: torch.Tensor | None  # (T, 3, H, W)
    sample_points: torch.Tensor  # (T, H, W, S-1, 3) section midpoints
    sample_weights: torch.Tensor  # (T, H, W, S-1)
    eikonal_gradients: torch.Tensor | None  # (K, 3) SDF gradients at random ray samples (eikonal loss)


def _render_chunks(field: SurfaceField, origins: torch.Tensor, directions: torch.Tensor, config: RaySamplingConfig,
                   background: torch.Tensor, stratified: bool, with_normals: bool,
                   gradient_checkpointing: bool) -> RayRender:
    """(R, 3) rays, ``config.ray_chunk`` at a time; checkpointed chunks recompute their activations in backward."""
    def render_chunk(o: torch.Tensor, d: torch.Tensor) -> RayRender:
        return render_rays(field, o, d, config, background, stratified, with_normals)

    parts = []
    for start in range(0, origins.shape[0], config.ray_chunk):
        o, d = origins[start:start + config.ray_chunk], directions[start:start + config.ray_chunk]
        if gradient_checkpointing and torch.is_grad_enabled():
            parts.append(checkpoint(render_chunk, o, d, use_reentrant=False))
        else:
            parts.append(render_chunk(o, d))
    return RayRender.cat(parts)


def _eikonal_gradients(field: SurfaceField, sample_points: torch.Tensor, config: RaySamplingConfig) -> torch.Tensor:
    """SDF gradients (K, 3), twice differentiable, at ``config.eikonal_samples`` random points of (..., 3).

    Taken after the chunks and outside checkpointing: a gradient taken inside a checkpointed chunk would
    force the chunk's recomputation during forward and keep all of it alive.
    """
    candidates = sample_points.detach().reshape(-1, 3)
    chosen = torch.randperm(candidates.shape[0], device=candidates.device)[:config.eikonal_samples]
    return sdf_gradient(field, candidates[chosen], create_graph=True, twice_differentiable=True)[1]


def render_views(field: SurfaceField, cameras: Cameras, height: int, width: int, config: RaySamplingConfig,
                 background: torch.Tensor, stratified: bool = False, with_normals: bool = False,
                 with_eikonal: bool = False, gradient_checkpointing: bool = False) -> ViewRender:
    """Render every pixel centre of Cameras ``[T]`` at ``height`` x ``width``, ``config.ray_chunk`` rays at a
    time. With ``gradient_checkpointing`` the chunks' activations are recomputed in backward, not stored.

    ``with_eikonal`` differentiates the SDF twice-differentiably at ``config.eikonal_samples`` random
    section midpoints.
    """
    cameras = cameras.flatten()
    origins, directions = cameras.rays(height, width)  # (T, H, W, 3)
    z_per_distance = cameras.depth_per_distance(directions).reshape(-1)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    rays = _render_chunks(field, origins, directions, config, background, stratified, with_normals,
                          gradient_checkpointing)
    num_views = len(cameras)

    def to_maps(x: torch.Tensor) -> torch.Tensor:  # (T*H*W, K) -> (T, K, H, W)
        return x.reshape(num_views, height, width, -1).permute(0, 3, 1, 2)

    sample_points = origins[:, None] + rays.sample_depths[..., None] * directions[:, None]  # (R, S-1, 3)
    return ViewRender(
        image=to_maps(rays.color),
        depth=to_maps((rays.depth * z_per_distance)[:, None]),
        opacity=to_maps(rays.opacity[:, None]),
        normals=None if rays.normals is None else to_maps(rays.normals),
        sample_points=sample_points.reshape(num_views, height, width, -1, 3),
        sample_weights=rays.sample_weights.reshape(num_views, height, width, -1),
        eikonal_gradients=_eikonal_gradients(field, sample_points, config) if with_eikonal else None,
    )


@dataclass
class PixelRender:
    """Renders of P chosen pixels in each of T views: what a ray-batch training step needs, not whole maps."""

    color: torch.Tensor  # (T, P, C)
    depth: torch.Tensor  # (T, P) camera-frame z of the expected surface
    opacity: torch.Tensor  # (T, P)
    eikonal_gradients: torch.Tensor | None  # (K, 3)


def render_pixels(field: SurfaceField, cameras: Cameras, height: int, width: int, pixels: torch.Tensor,
                  config: RaySamplingConfig, background: torch.Tensor, stratified: bool = False,
                  with_eikonal: bool = False, gradient_checkpointing: bool = False) -> PixelRender:
    """Render the pixel centres ``pixels`` (T, P) (flat indices ``i * width + j``) of Cameras ``[T]``.

    Random pixel batches are how NeuS and SparseNeuS train: a fraction of each view's rays costs that
    fraction of the render, and every pixel is still seen over the run.
    """
    cameras = cameras.flatten()
    origins, directions = cameras.rays(height, width)  # (T, H, W, 3)
    origins, directions = origins.flatten(1, 2), directions.flatten(1, 2)  # (T, H*W, 3)
    index = pixels[..., None].expand(-1, -1, 3)
    origins, directions = origins.gather(1, index), directions.gather(1, index)  # (T, P, 3)
    z_per_distance = (directions * cameras.c2w[:, None, :3, 2]).sum(-1)  # (T, P): camera z per ray distance
    num_views, num_pixels = pixels.shape
    rays = _render_chunks(field, origins.reshape(-1, 3), directions.reshape(-1, 3), config, background,
                          stratified, False, gradient_checkpointing)
    eikonal = None
    if with_eikonal:
        flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        eikonal = _eikonal_gradients(field, flat_o[:, None] + rays.sample_depths[..., None] * flat_d[:, None], config)
    return PixelRender(color=rays.color.reshape(num_views, num_pixels, -1),
                       depth=rays.depth.reshape(num_views, num_pixels) * z_per_distance,
                       opacity=rays.opacity.reshape(num_views, num_pixels), eikonal_gradients=eikonal)
