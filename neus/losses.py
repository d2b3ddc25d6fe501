"""Training losses of the latent SparseNeuS, returned as named terms so loggers can show each one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunemv.neus.latent_sparseneus import LatentSparseNeuSOutput


class NeuSLoss(nn.Module):
    """``total = render_weight * render + eikonal_weight * eikonal + opacity_weight * opacity + depth_weight * depth``.

    - render: MSE (or L1) of the rendered views against the clean views x0 (TuneMV3D: g_i ≈ x0_i);
    - eikonal: ``(|grad s| - 1)^2`` at ``eikonal_samples`` random ray samples per object, which keeps s a
      distance (NeuS);
    - opacity: BCE of the rendered opacity against object masks (VFusion3D's opacity loss). Without it the
      render loss can be met by colour alone: the colour network paints background onto the initial sphere;
    - depth: L1 of the rendered camera-frame z against known depth (target > 0, i.e. on the object).

    Opacity and depth are computed in float32 with autocast off, so the loss also runs under CUDA autocast
    (where ``binary_cross_entropy`` on half-precision probabilities is refused).
    """

    def __init__(self, render_weight: float = 1.0, eikonal_weight: float = 0.1, opacity_weight: float = 0.0,
                 render_loss: str = "mse", depth_weight: float = 0.0):
        super().__init__()
        if render_loss not in ("mse", "l1"):
            raise ValueError(f"render_loss must be 'mse' or 'l1', got {render_loss!r}")
        self.render_weight, self.eikonal_weight, self.opacity_weight = render_weight, eikonal_weight, opacity_weight
        self.depth_weight = depth_weight
        self.render_loss = render_loss

    def forward(self, output: LatentSparseNeuSOutput, target: torch.Tensor, masks: torch.Tensor | None = None,
                depths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``target`` (B, T, C, H, W) clean views at the render resolution; ``masks``/``depths`` (B, T, 1, H, W)."""
        if target.shape != output.image.shape:
            raise ValueError(f"target {list(target.shape)} must match the render {list(output.image.shape)}")
        return self.terms(output.image, target, output.opacity, masks, output.depth, depths, output.eikonal_gradients)

    def terms(self, image: torch.Tensor, target: torch.Tensor, opacity: torch.Tensor, masks: torch.Tensor | None,
              depth: torch.Tensor, target_depth: torch.Tensor | None, eikonal_gradients: torch.Tensor | None
              ) -> dict[str, torch.Tensor]:
        """The loss on renders of any layout: ``image``/``target`` (..., C...) alike, ``opacity``/``depth`` and
        their targets reshaped to one another (maps or pixel batches)."""
        distance = F.mse_loss if self.render_loss == "mse" else F.l1_loss
        terms = {"render": distance(image, target)}
        total = self.render_weight * terms["render"]
        if self.eikonal_weight:
            if eikonal_gradients is None:
                raise ValueError("the eikonal loss needs SDF gradients: render with with_eikonal=True")
            terms["eikonal"] = ((eikonal_gradients.norm(dim=-1) - 1.0) ** 2).mean()
            total = total + self.eikonal_weight * terms["eikonal"]
        with torch.autocast(opacity.device.type, enabled=False):
            if self.opacity_weight:
                if masks is None:
                    raise ValueError("opacity_weight > 0 needs object masks")
                masks = masks.reshape(opacity.shape).float()
                # BCE written out: F.binary_cross_entropy raises on a NaN input (diverged weights), where the
                # training loop's non-finite guard should see a NaN loss and skip the step.
                o = opacity.float().clamp(1e-4, 1 - 1e-4)
                terms["opacity"] = -(masks * o.log() + (1 - masks) * (1 - o).log()).mean()
                total = total + self.opacity_weight * terms["opacity"]
            if self.depth_weight:
                if target_depth is None:
                    raise ValueError("depth_weight > 0 needs depth maps")
                target_depth = target_depth.reshape(depth.shape).float()
                known = (target_depth > 0).float()
                error = (depth.float() - target_depth).abs() * known
                terms["depth"] = error.sum() / known.sum().clamp(min=1.0)
                total = total + self.depth_weight * terms["depth"]
        terms["total"] = total
        return terms
