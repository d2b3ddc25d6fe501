"""Geometry-aware cross-view attention: the pairwise geometric condition of TuneMV3D §3.1.2 / §3.2.

For each query pixel of view i, points along its ray (the NeuS importance samples when given, otherwise
uniform in the bounding sphere), optionally from a k x k patch frustum of rays, are projected into every
other view j; keys and values are sampled there bilinearly. The query attends to those candidates only,
with each candidate's NeuS weight multiplying its attention weight. Lives in the control branch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tunemv.geometry.cameras import Cameras
from tunemv.geometry.projection import bilinear_sample, project_to_maps
from tunemv.geometry.rays import near_far_from_sphere
from tunemv.neus.field import PositionalEncoding
from tunemv.neus.ray_samplers import sample_along_rays


@dataclass
class CrossViewInputs:
    """What the attention needs besides features: the views' cameras and, optionally, the NeuS samples."""

    cameras: Cameras  # [B, V]
    sample_points: torch.Tensor | None = None  # (B, V, H, W, S, 3) NeuS section midpoints
    sample_weights: torch.Tensor | None = None  # (B, V, H, W, S) their NeuS weights


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter: the module's output starts at 0, so adding it changes nothing at init."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
              backend: str = "auto") -> torch.Tensor:
    """(N, heads, 1, d) queries over (N, heads, M, d) candidates with an additive (N, heads, 1, M) bias.

    ``backend`` "auto": xformers' memory-efficient kernel when importable on CUDA, else torch's SDPA;
    "sdpa" or "xformers" force one (benchmarks/cross_view_kernels.py compares them).
    """
    if backend not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"backend must be auto, sdpa or xformers, got {backend!r}")
    if backend == "xformers" or (backend == "auto" and query.is_cuda):
        try:
            import xformers.ops as xops
        except ImportError:
            if backend == "xformers":
                raise
            xops = None
        if xops is not None:
            out = xops.memory_efficient_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                                  attn_bias=bias.contiguous())
            return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)


# How the NeuS weights w enter the logits as log w, and what gradient reaches NeuS through them:
# "full": log max(w, 1e-6), whose gradient 1/w reaches 1e6 on empty rays; "floored": log max(w, 1e-3), at most
# 1e3; "detached" (the default): log max(w, 1e-6) with no gradient into NeuS, the same forward as "full".
# Measured (experiments/attention_weight_gradient.py, benchmarks/results/attention_weight_gradient.json): on
# 100-step fits the three give the same held-out NeuS renders (23.44 / 23.43 / 23.44 dB) and hull IoU
# (0.601 each); the path's gradient into NeuS is ~1e-3 of the NeuS losses' (1/w is cancelled by the softmax's
# p ∝ w), so it buys nothing and is cut.
WEIGHT_GRADIENTS = {"full": (1e-6, False), "floored": (1e-3, False), "detached": (1e-6, True)}


class CrossViewAttention(nn.Module):
    """Residual cross-view attention over (B*V, C, h, w) features; the output projection starts at zero."""

    def __init__(self, channels: int, num_heads: int = 4, num_points: int = 8, patch_size: int = 1,
                 bound_radius: float = 1.0, depth_frequencies: int = 6, weight_gradient: str = "detached"):
        super().__init__()
        if weight_gradient not in WEIGHT_GRADIENTS:
            raise ValueError(f"weight_gradient must be one of {', '.join(WEIGHT_GRADIENTS)}, got {weight_gradient!r}")
        self.weight_floor, self.detach_weights = WEIGHT_GRADIENTS[weight_gradient]
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1, got {patch_size}")
        self.num_heads, self.num_points, self.patch_size, self.bound_radius = num_heads, num_points, patch_size, bound_radius
        self.norm = nn.GroupNorm(math.gcd(32, channels), channels)
        self.to_query = nn.Linear(channels, channels)
        self.to_key = nn.Linear(channels, channels)
        self.to_value = nn.Linear(channels, channels)
        self.depth_encoding = PositionalEncoding(depth_frequencies, input_dim=1)
        # Where a candidate is: its depth along the query ray and the source camera's direction, seen from
        # the query camera.
        self.position = nn.Linear(self.depth_encoding.output_dim + 3, channels)
        self.to_out = zero_module(nn.Linear(channels, channels))
        # diffusers' enable_gradient_checkpointing() flips this (and sets _gradient_checkpointing_func); the
        # gathered candidates are the largest activations in the branch.
        self.gradient_checkpointing = False

    def candidate_points(self, inputs: CrossViewInputs, height: int, width: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Points along every query ray at ``height`` x ``width``: (B, V, h*w, P, 3) points, (B, V, h*w, P) depths
        along the ray and (B, V, h*w, P) NeuS weights or None. P = num_points * patch_size^2."""
        origins, directions = inputs.cameras.rays(height, width)  # (B, V, h, w, 3)
        if inputs.sample_points is None:
            near, far, _ = near_far_from_sphere(origins, directions, self.bound_radius)
            depths = sample_along_rays(near, far, self.num_points, stratified=False)  # (B, V, h, w, P)
            weights = None
        else:
            depths = (inputs.sample_points - inputs.cameras.centers[:, :, None, None, None]).norm(dim=-1)
            weights = inputs.sample_weights
            batch = depths.shape[0]
            if depths.shape[2:4] != (height, width):  # NeuS rendered at another resolution: resample per sample
                stacked = rearrange(torch.stack([depths, weights]), "k b v h w s -> (b v) (k s) h w")
                mode = "area" if depths.shape[2] > height else "bilinear"
                stacked = F.interpolate(stacked, size=(height, width), mode=mode)
                depths, weights = rearrange(stacked, "(b v) (k s) h w -> k b v h w s", b=batch, k=2)
            weights, index = weights.topk(min(self.num_points, weights.shape[-1]), dim=-1)  # the likeliest samples
            depths = depths.gather(-1, index)
        points = origins[..., None, :] + depths[..., None] * directions[..., None, :]  # (B, V, h, w, P, 3)
        if self.patch_size > 1:  # a k x k frustum: every pixel also takes its neighbours' ray samples
            points, depths = self.unfold(points), self.unfold(depths[..., None])[..., 0]
            weights = None if weights is None else self.unfold(weights[..., None])[..., 0]
        flat = lambda x: rearrange(x, "b v h w p ... -> b v (h w) p ...")  # noqa: E731
        return flat(points), flat(depths), None if weights is None else flat(weights)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V, h, w, P, K) -> (B, V, h, w, P * k^2, K) with each pixel's k x k neighbourhood (edges replicated)."""
        batch, _, height, _, points, channels = x.shape
        grid = rearrange(x, "b v h w p c -> (b v) (p c) h w")
        pad = self.patch_size // 2
        grid = F.pad(grid, (pad, pad, pad, pad), mode="replicate")
        patches = F.unfold(grid, self.patch_size)  # ((b v), (p c k2), h*w)
        return rearrange(patches, "(b v) (p c k2) (h w) -> b v h w (p k2) c", b=batch, p=points, c=channels, h=height)

    def position_logits(self, query: torch.Tensor, depths: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """Each candidate key's positional code, as the (N, heads, 1, Vj*P) logits it adds: q . position / sqrt(d).

        Keys carry where the candidate is: its depth along the query ray, and the source camera's direction
        seen from the query camera. ``position(cat(depth code, direction))`` splits by columns into a
        (vi, q, p) term and a (vi, vj) term, so the dot products are taken on those small tensors instead of
        adding codes to all Vi*q*Vj*P gathered keys.
        """
        batch, views = cameras.shape
        heads, head_dim = query.shape[1], query.shape[-1]
        offsets = cameras.centers[:, None, :, :] - cameras.centers[:, :, None, :]  # (B, Vi, Vj, 3)
        direction = F.normalize(torch.einsum("biks,bijs->bijk", cameras.w2c[..., :3, :3], offsets), dim=-1, eps=1e-6)
        depth_code = self.depth_encoding(depths[..., None])  # (B, Vi, q, P, E)
        depth_weight, direction_weight = self.position.weight.split([depth_code.shape[-1], 3], dim=1)
        depth_term = rearrange(F.linear(depth_code, depth_weight, self.position.bias),
                               "b vi q p (n d) -> (b vi q) n p d", n=heads)
        direction_term = rearrange(F.linear(direction, direction_weight), "b vi vj (n d) -> b vi vj n d", n=heads)
        per_query = rearrange(query, "(b vi q) n 1 d -> b vi q n d", b=batch, vi=views)
        depth_logits = torch.einsum("xnd,xnpd->xnp", query[:, :, 0], depth_term)
        direction_logits = rearrange(torch.einsum("bvqnd,bvjnd->bvqnj", per_query, direction_term),
                                     "b vi q n vj -> (b vi q) n vj")
        logits = direction_logits[..., None] + depth_logits[:, :, None, :]  # (N, heads, Vj, P)
        return rearrange(logits, "x n vj p -> x n 1 (vj p)") / math.sqrt(head_dim)

    def forward(self, features: torch.Tensor, inputs: CrossViewInputs) -> torch.Tensor:
        batch, views = inputs.cameras.shape
        if views == 1:
            return features  # no other view to attend to
        height, width = features.shape[-2:]
        points, depths, weights = self.candidate_points(inputs, height, width)  # (B, Vi, hw, P, ...)
        num_points = points.shape[3]

        # Project every view's candidates into every view j: (B, Vj, Vi*hw*P, 2).
        flat_points = rearrange(points, "b vi q p c -> b 1 (vi q p) c").expand(-1, views, -1, -1)
        cameras = inputs.cameras
        pixels, projected = project_to_maps(flat_points, cameras, height, width)
        normed = self.norm(features)
        # Keys and values are projected on the maps, before sampling: bilinear sampling with border padding
        # is an affine combination of pixels, so it commutes with a linear layer, and the maps have
        # V*(P-fold) fewer entries than the gathered candidates.
        key_value_maps = torch.cat([self.to_key(rearrange(normed, "n c h w -> n h w c")),
                                    self.to_value(rearrange(normed, "n c h w -> n h w c"))], -1)
        sampled = bilinear_sample(rearrange(key_value_maps, "n h w c -> n c h w"),
                                  rearrange(pixels, "b vj m c -> (b vj) m c"))  # ((B Vj), M, 2C)
        sampled = rearrange(sampled, "(b vj) (vi q p) c -> b vi q vj p c", b=batch, vi=views, p=num_points)
        valid = rearrange(projected, "b vj (vi q p) -> b vi q vj p", vi=views, p=num_points)
        valid = valid & ~torch.eye(views, dtype=torch.bool, device=valid.device)[None, :, None, :, None]

        queries = self.to_query(rearrange(normed, "(b v) c h w -> b v (h w) c", b=batch))
        heads = self.num_heads
        query = rearrange(queries, "b vi q (n d) -> (b vi q) n 1 d", n=heads)
        channels = features.shape[1]
        key = rearrange(sampled[..., :channels], "b vi q vj p (n d) -> (b vi q) n (vj p) d", n=heads)
        value = rearrange(sampled[..., channels:], "b vi q vj p (n d) -> (b vi q) n (vj p) d", n=heads)

        mask = rearrange(valid, "b vi q vj p -> (b vi q) (vj p)")
        bias = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
        if weights is not None:  # multiplying attention weights by NeuS weights = adding their log to logits
            bias = rearrange(weights, "b vi q p -> (b vi q) 1 p").expand(-1, views, -1).reshape(mask.shape)
            bias = bias.detach() if self.detach_weights else bias
            bias = bias.clamp(min=self.weight_floor).log().to(query.dtype)
        seen = mask.any(-1)
        bias = torch.where(mask | ~seen[:, None], bias, torch.full_like(bias, float("-inf")))
        bias = bias[:, None, None, :] + self.position_logits(query, depths, cameras)
        out = attention(query, key, value, bias) * seen[:, None, None, None]
        out = self.to_out(rearrange(out, "(b vi q) n 1 d -> b vi q (n d)", b=batch, vi=views))
        return features + rearrange(out, "b v (h w) c -> (b v) c h w", h=height)
