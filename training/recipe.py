"""What both Lightning systems share: the NeuS arguments a backbone implies, and the learning-rate shape."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.data.dataset import resize_depth
from tunemv.errors import TunemvError


def neus_arguments(name: str, backbone: Backbone, neus: dict[str, Any] | None) -> dict[str, Any]:
    """``LatentSparseNeuS`` arguments: channels and background from the backbone, then the config's ``neus``."""
    channels = backbone.in_channels
    arguments = {"in_channels": channels, "out_channels": channels,
                 "background": backbone.background_latent.float().tolist(), **(neus or {})}
    if arguments["in_channels"] != channels or arguments["out_channels"] != channels:
        raise TunemvError(f"{name}: the backbone's views have {channels} channels but neus is configured for "
                          f"in_channels={arguments['in_channels']}, out_channels={arguments['out_channels']}")
    return arguments


def warmup_cosine(warmup_steps: int, total_steps: int | None, floor: float = 0.0) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup, then cosine decay from 1 to ``floor`` at ``total_steps`` (None: flat)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if total_steps is None or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def views_and_supervision(batch: dict, key: str, height: int, width: int) -> torch.Tensor:
    """(B, V + S, 1, height, width): the batch's masks (area-averaged) or depths (``key="depths"``: known
    depth only) of the input views, then of the supervision views, at the model's resolution."""
    maps = torch.cat([batch[key], batch["supervision"][key]], dim=1).float()
    flat = rearrange(maps, "b v c h w -> (b v) c h w")
    if tuple(flat.shape[-2:]) != (height, width):
        flat = resize_depth(flat, height, width) if key == "depths" else F.interpolate(flat, (height, width), mode="area")
    return flat.unflatten(0, maps.shape[:2])


def flat_views(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b v ... -> (b v) ...")


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, V, C, h, w) views noised at (B, V) timesteps by the backbone's training ``scheduler``."""
    return scheduler.add_noise(flat_views(x0), flat_views(noise), flat_views(t)).unflatten(0, x0.shape[:2])


def diffusion_target(scheduler, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                     ) -> torch.Tensor:
    """The plain denoising loss's target in the backbone's parameterisation: ε, x0 or v, for (B, V) views."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return scheduler.get_velocity(flat_views(x0), flat_views(noise), flat_views(t)).unflatten(0, x0.shape[:2])
