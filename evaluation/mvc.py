"""Seed-002-style MVC: fit a 3D representation to the views and report how well it re-renders them.

Distillation-free Text-to-3D (Table 1) "quantifies the multiview consistency by constructing a 3D asset and calculating the
reprojection error". Here the asset is the project's own ``LatentSparseNeuS`` (pixel space, views as clean
t = 0 inputs), fitted per object for 100 Adam steps as in ``tests/test_neus_overfit.py``. A consistent set
can be explained by one surface and re-renders well; views that disagree cannot all be matched by one
field, so the error stays high (procedural ground truth ~27-30 dB, views shuffled across objects ~17 dB;
see README.md). The field also sees the view direction, so some view-dependent colour can be absorbed:
MVC is a coarser signal than the hull IoU, and a costly one (~1 min per object on a busy 2-core CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

from tunemv.geometry.cameras import Cameras


@dataclass
class MVCResult:
    mse: float  # mean squared reprojection error, images in [0, 1]
    psnr: float
    steps: int


def fit_and_reproject(images: torch.Tensor, masks: torch.Tensor, cameras: Cameras, steps: int = 100,
                      render_resolution: int = 24, input_resolution: int = 32, views_per_step: int = 4,
                      lr: float = 1e-2, eikonal_samples: int = 512, seed: int = 0) -> MVCResult:
    """(V, 3, H, W) images in [0, 1] and (V, 1, H, W) masks seen by Cameras ``[V]`` -> reprojection error.

    Each step renders ``views_per_step`` random views at ``render_resolution`` (the fit's cost is the
    volume render); the error is measured on every view at that resolution after the last step.
    """
    from tunemv.neus.latent_sparseneus import (
        LatentSparseNeuS,  # heavy (diffusers); only when MVC is asked for
    )
    from tunemv.neus.losses import NeuSLoss

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        model = LatentSparseNeuS(in_channels=3, output_activation="tanh", feature_channels=8, sdf_hidden_dim=32,
                                 feature_hidden_dim=32, geometry_dim=16, num_coarse=16, num_importance=16,
                                 eikonal_samples=eikonal_samples)
        num_views = images.shape[0]
        views = F.interpolate(images * 2 - 1, size=input_resolution, mode="area")[None]  # (1, V, 3, h, w)
        cameras = cameras.flatten()[None]  # [1, V]; the model rescales K to each map's size
        clean = torch.zeros(1, num_views)  # t = 0: every view is a clean reference
        targets = F.interpolate(images * 2 - 1, size=render_resolution, mode="area")
        target_masks = F.interpolate(masks, size=render_resolution, mode="area")
        loss_fn = NeuSLoss(eikonal_weight=0.1, opacity_weight=0.1)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            chosen = torch.randperm(num_views, generator=generator)[:views_per_step]
            out = model(views, clean, cameras, cameras[:, chosen], resolution=render_resolution)
            loss = loss_fn(out, targets[chosen][None], target_masks[chosen][None])["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            render = model(views, clean, cameras, cameras, resolution=render_resolution).image[0]
    rendered = ((render + 1) / 2).clamp(0, 1)  # (V, 3, h, w)
    reference = (targets + 1) / 2
    return MVCResult(mse=float(F.mse_loss(rendered, reference)),
                     psnr=float(peak_signal_noise_ratio(rendered, reference, data_range=1.0)), steps=steps)
