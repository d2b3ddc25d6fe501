"""Reference views for image→multiview and multiview→multiview (TuneMV3D §3.4): clean views at t = 0."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tunemv.adapters.backbones import Backbone


@dataclass
class References:
    mask: torch.Tensor  # (B, V) bool
    images: torch.Tensor  # (B, V, 3, H, W) in [0, 1] (zeros where not a reference)
    latents: torch.Tensor  # (B, V, C, h, w) the images in model space


def load_reference_image(image: Any) -> torch.Tensor:
    """A path, PIL image, (H, W, 3|4) uint8 array or (3, H, W) tensor in [0, 1] -> (3, H, W) in [0, 1];
    RGBA is composited on white, the background every view is generated on."""
    if isinstance(image, torch.Tensor):
        return image.float()
    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{image}: no such reference image")
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB"))
    array = torch.from_numpy(np.array(image)).float() / 255.0  # a copy: PIL arrays are read-only
    if array.dim() != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"a reference image must be (H, W, 3|4), got {tuple(array.shape)}")
    if array.shape[-1] == 4:
        array = array[..., :3] * array[..., 3:] + (1 - array[..., 3:])
    return array.permute(2, 0, 1)


def prepare_references(backbone: Backbone, images: Any, views: Sequence[int] | None, batch: int, num_views: int,
                       size: int) -> References | None:
    """(R, 3, H, W) / (B, R, 3, H, W) tensors in [0, 1], or a list of paths/PIL images (R of them, shared by
    every object) -> clean views at ``views`` (default 0..R−1), resized to ``size`` if needed and encoded.
    A non-square image is padded with white (the background views are generated on) to a centred square
    first, so nothing of the object is cut off or squashed."""
    if images is None:
        return None
    if isinstance(images, torch.Tensor):
        stack = images.float() if images.dim() == 5 else images.float()[None]
        if stack.numel() and (stack.min() < 0 or stack.max() > 1):  # the caller's values, before any resize
            raise ValueError("reference images must be in [0, 1]")
    else:
        items = [images] if not isinstance(images, list | tuple) else list(images)
        stack = torch.stack([_resize(load_reference_image(item), size) for item in items])[None]
    if stack.dim() != 5 or stack.shape[2] != 3:
        raise ValueError(f"reference_images must be (R, 3, H, W) or (B, R, 3, H, W), got {tuple(images.shape)}")
    if stack.shape[-2:] != (size, size):
        stack = torch.stack([torch.stack([_resize(image, size) for image in obj]) for obj in stack])
    if stack.shape[0] == 1 and batch > 1:
        stack = stack.expand(batch, *stack.shape[1:])
    if stack.shape[0] != batch:
        raise ValueError(f"reference images are for {stack.shape[0]} objects but there are {batch} prompts")
    count = stack.shape[1]
    views = list(range(count)) if views is None else list(views)
    if len(views) != count or len(set(views)) != count or not all(0 <= v < num_views for v in views):
        raise ValueError(f"reference_views must be {count} distinct indices in [0, {num_views}), got {views}")
    if count >= num_views:
        raise ValueError(f"{count} reference views leave nothing to generate among {num_views} views")
    device = backbone.device
    mask = torch.zeros(batch, num_views, dtype=torch.bool, device=device)
    mask[:, views] = True
    full = torch.zeros(batch, num_views, 3, size, size, device=device)
    full[:, views] = stack.to(device)
    latents = torch.zeros(batch, num_views, backbone.in_channels, backbone.sample_size, backbone.sample_size,
                          device=device)
    latents[:, views] = backbone.encode_views(stack.to(device, backbone.dtype) * 2 - 1).float()
    return References(mask, full, latents)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, size, size): padded with white to a centred square, then resized. The
    antialiased filter overshoots (1.0000002 on white), so the result is clamped back into [0, 1]."""
    height, width = image.shape[-2:]
    if height != width:
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        image = F.pad(image, (left, side - width - left, top, side - height - top), value=1.0)
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return resized.clamp(0.0, 1.0)
