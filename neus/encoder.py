"""E in TuneMV3D §3.1.1: a small timestep-conditioned CNN from each noisy view to a feature map f_i."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class ViewEncoder(nn.Module):
    """(N, C, h, w) noisy views with their own timesteps (N,) -> (N, F, h, w) features, at the same resolution.

    Each view is conditioned on its own t (scale-shift modulation in every residual block), so a clean
    reference view (t = 0) and a noisy view are read differently.
    """

    def __init__(self, in_channels: int, feature_channels: int = 16, hidden_channels: int = 32,
                 num_blocks: int = 2, time_embedding_dim: int = 64, groups: int = 8):
        super().__init__()
        self.time_proj = Timesteps(hidden_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_channels, time_embedding_dim)
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            ResnetBlock2D(in_channels=hidden_channels, out_channels=hidden_channels, temb_channels=time_embedding_dim,
                          groups=groups, time_embedding_norm="scale_shift")
            for _ in range(num_blocks))
        self.norm_out = nn.GroupNorm(groups, hidden_channels)
        self.conv_out = nn.Conv2d(hidden_channels, feature_channels, 3, padding=1)

    def embed_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(N,) timesteps -> (N, time_embedding_dim)."""
        return self.time_embedding(self.time_proj(timesteps).to(self.conv_in.weight.dtype))

    def forward(self, views: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the feature maps (N, F, h, w) and the timestep embeddings (N, time_embedding_dim)."""
        temb = self.embed_timesteps(timesteps)
        h = self.conv_in(views)
        for block in self.blocks:
            h = block(h, temb)
        return self.conv_out(nn.functional.silu(self.norm_out(h))), temb
