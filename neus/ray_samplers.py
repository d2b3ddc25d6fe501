"""Where to put samples along rays: stratified bins, NeuS importance sampling (near/far: ``geometry.rays``).

All functions are batched over any leading ray dims and contain no Python loop over rays or samples.
"""

from __future__ import annotations

import torch


def sample_along_rays(near: torch.Tensor, far: torch.Tensor, num_samples: int, stratified: bool,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(...) near/far -> (..., S) sorted ray distances: one per equal bin, jittered inside it when ``stratified``
    (training) and at the bin centre otherwise (evaluation, deterministic)."""
    bins = torch.arange(num_samples, device=near.device, dtype=near.dtype)
    if stratified:
        offset = torch.rand((*near.shape, num_samples), device=near.device, dtype=near.dtype, generator=generator)
    else:
        offset = torch.full((*near.shape, num_samples), 0.5, device=near.device, dtype=near.dtype)
    fraction = (bins + offset) / num_samples
    return near[..., None] + (far - near)[..., None] * fraction


def sample_pdf(bin_edges: torch.Tensor, weights: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Deterministic inverse-CDF sampling: (..., M+1) edges and (..., M) weights -> (..., num_samples) distances.

    Zero-weight rays fall back to uniform samples (the small constant added to every bin).
    """
    weights = weights + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1)  # (..., M+1)
    u = torch.linspace(0.5 / num_samples, 1 - 0.5 / num_samples, num_samples, device=cdf.device, dtype=cdf.dtype)
    u = u.expand(*cdf.shape[:-1], num_samples).contiguous()
    above = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    edge_lo, edge_hi = bin_edges.gather(-1, below), bin_edges.gather(-1, above)
    span = (cdf_hi - cdf_lo).clamp(min=1e-8)
    return edge_lo + (u - cdf_lo) / span * (edge_hi - edge_lo)


def neus_upsample(depths: torch.Tensor, sdf: torch.Tensor, num_samples: int, inv_s: float) -> torch.Tensor:
    """NeuS hierarchical sampling (NeuS §3.4, ``up_sample``): new distances (..., num_samples) drawn where a
    fixed-sharpness NeuS density puts its weight, given sorted ``depths`` (..., S) and their ``sdf`` (..., S).

    The slope of each section is the steeper of its own and its predecessor's, clamped to [-1e3, 0], so only
    sections entering the surface (SDF decreasing along the ray) attract samples, and noise in a flat
    section cannot.
    """
    prev_sdf, next_sdf = sdf[..., :-1], sdf[..., 1:]
    prev_z, next_z = depths[..., :-1], depths[..., 1:]
    mid_sdf = 0.5 * (prev_sdf + next_sdf)
    slope = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
    prev_slope = torch.cat([torch.zeros_like(slope[..., :1]), slope[..., :-1]], -1)
    slope = torch.minimum(prev_slope, slope).clamp(-1e3, 0.0)
    half = 0.5 * slope * (next_z - prev_z)
    prev_cdf = torch.sigmoid((mid_sdf - half) * inv_s)
    next_cdf = torch.sigmoid((mid_sdf + half) * inv_s)
    alpha = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)
    weights = alpha * exclusive_transmittance(alpha)
    return sample_pdf(depths, weights, num_samples)


def exclusive_transmittance(alpha: torch.Tensor) -> torch.Tensor:
    """(..., S) alphas -> (..., S) light that reaches each section: prod_{j<i} (1 - alpha_j)."""
    ones = torch.ones_like(alpha[..., :1])
    return torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-7], -1), -1)[..., :-1]
