"""What one training step feeds the multiview denoiser, made from a batch by ``MultiviewAdapterSystem.make_inputs``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunemv.geometry.cameras import Cameras


@dataclass
class ModelInputs:
    """B objects, V input views and S supervision views, C channels at the model's h x w."""

    x0: torch.Tensor  # (B, V, C, h, w) clean views in model space
    x0_supervision: torch.Tensor  # (B, S, C, h, w) clean supervision views, which only NeuS is rendered at
    noise: torch.Tensor  # (B, V, C, h, w) ε
    t: torch.Tensor  # (B, V) timesteps, one per object; 0 at references
    x_t: torch.Tensor  # (B, V, C, h, w) noised views; references stay clean
    reference: torch.Tensor  # (B, V) bool: clean reference views (image→multiview), no loss on them
    mode: str  # "mv", or "independent" where NeuS was dropped for this step
    captions: list[str]  # "" where the text was dropped
    cameras: Cameras  # [B, V] at model resolution (with camera noise in training)
    supervision_cameras: Cameras  # [B, S] at model resolution
