"""Training losses of the latent SparseNeuS, returned as named terms so loggers can show each one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunemv.neus.latent_sparseneus import LatentSparseNeuSOutput


class NeuSLoss(nn.Module):
    """``total = render_weight * render + eikonal_weight * eikonal + opacity_weight * opacity``.

    - render: MSE (or L1) of the rendered views against the clean views x0 (TuneMV3D: g_i ≈ x0_i);
    - eikonal: ``(|grad s| - 1)^2`` at ``eikonal_samples`` random ray samples per object, which keeps s a
      distance (NeuS);
    - opacity: BCE of the rendered opacity against object masks (VFusion3D's opacity loss), optional.
    """

    def __init__(self, render_weight: float = 1.0, eikonal_weight: float = 0.1, opacity_weight: float = 0.0,
                 render_loss: str = "mse"):
        super().__init__()
        if render_loss not in ("mse", "l1"):
            raise ValueError(f"render_loss must be 'mse' or 'l1', got {render_loss!r}")
        self.render_weight, self.eikonal_weight, self.opacity_weight = render_weight, eikonal_weight, opacity_weight
        self.render_loss = render_loss

    def forward(self, output: LatentSparseNeuSOutput, target: torch.Tensor, masks: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``target`` (B, T, C, H, W) clean views at the render resolution; ``masks`` (B, T, 1 or absent, H, W)."""
        if target.shape != output.image.shape:
            raise ValueError(f"target {list(target.shape)} must match the render {list(output.image.shape)}")
        distance = F.mse_loss if self.render_loss == "mse" else F.l1_loss
        terms = {"render": distance(output.image, target)}
        total = self.render_weight * terms["render"]
        if self.eikonal_weight:
            if output.eikonal_gradients is None:
                raise ValueError("the eikonal loss needs SDF gradients: render with with_eikonal=True")
            terms["eikonal"] = ((output.eikonal_gradients.norm(dim=-1) - 1.0) ** 2).mean()
            total = total + self.eikonal_weight * terms["eikonal"]
        if self.opacity_weight:
            if masks is None:
                raise ValueError("opacity_weight > 0 needs object masks")
            masks = masks.reshape(output.opacity.shape).to(output.opacity.dtype)
            terms["opacity"] = F.binary_cross_entropy(output.opacity.clamp(1e-4, 1 - 1e-4), masks)
            total = total + self.opacity_weight * terms["opacity"]
        terms["total"] = total
        return terms
