"""What both Lightning systems set up alike: the NeuS arguments a backbone implies, the learning-rate shape,
and the mask and depth targets at the model's resolution."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.data.batch import MultiviewItem
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


def views_and_supervision(batch: MultiviewItem, key: str, height: int, width: int) -> torch.Tensor:
    """(B, V + S, 1, height, width): the batch's masks (area-averaged) or depths (``key="depths"``: known
    depth only) of the input views, then of the supervision views, at the model's resolution."""
    maps = batch.maps(key).float()
    flat = rearrange(maps, "b v c h w -> (b v) c h w")
    if tuple(flat.shape[-2:]) != (height, width):
        flat = resize_depth(flat, height, width) if key == "depths" else F.interpolate(flat, (height, width), mode="area")
    return flat.unflatten(0, maps.shape[:2])
