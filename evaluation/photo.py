"""Photo-consistency: do the views agree on the colour of the hull surface points that several of them see?

Surface points are the first hits of each view's pixel rays on the visual hull (``render_hull``). A point
is visible in another view when it projects in front of that camera, inside its image and its mask, and its
depth matches that view's hull z-buffer within ``tolerance`` (so points hidden behind other parts of the hull
do not count). For every point seen by at least ``min_views`` views, each view's colour (bilinear) is
compared with the mean over those views:

    variance = mean over (point, view) pairs and channels of (colour - mean colour)^2
    psnr     = 10 log10(1 / variance)     (colours in [0, 1])

The hull is larger than the object in concavities, so even perfect renders do not reach variance 0; the
Lambertian procedural renders (world-fixed lights, one colour per object) come close.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchmetrics.functional.regression import mean_squared_error

from tunemv.evaluation.hull import HullRender
from tunemv.geometry.cameras import Cameras
from tunemv.geometry.projection import bilinear_sample


@dataclass
class PhotoConsistency:
    variance: float | None  # None when no surface point is seen by min_views views
    psnr: float | None
    num_points: int  # surface points seen by >= min_views views
    coverage: float  # their fraction of all surface points


@torch.no_grad()
def photo_consistency(images: torch.Tensor, masks: torch.Tensor, cameras: Cameras, hull: HullRender,
                      tolerance: float, min_views: int = 2, mask_threshold: float = 0.99, erode: int = 1
                      ) -> PhotoConsistency:
    """(V, 3, H, W) images in [0, 1] and (V, 1, H, W) masks seen by Cameras ``[V]``; ``hull`` rendered at H x W.

    ``tolerance`` is the depth-test slack in world units (a few hull voxels). Only pixels at least ``erode``
    pixels inside a mask >= ``mask_threshold`` are compared: silhouette pixels mix in background and shade at
    grazing angles, and with them the ground-truth renders score ~25 dB instead of 35-59 dB.
    """
    num_views, _, height, width = images.shape
    cameras = cameras.flatten().rescale(height, width)
    background = (masks < mask_threshold).float()  # (V, 1, H, W)
    interior = F.max_pool2d(background, 2 * erode + 1, stride=1, padding=erode)[:, 0] == 0  # eroded foreground
    source = torch.nonzero(hull.silhouette & interior)  # (n, 3) (view, row, column)
    if source.numel() == 0:
        return PhotoConsistency(None, None, 0, 0.0)
    pixel_centres = source[:, [2, 1]].to(images.dtype) + 0.5  # (u, v)
    depth = hull.depth[tuple(source.T)]
    points = torch.cat([cameras[int(v)].unproject(pixel_centres[source[:, 0] == v], depth[source[:, 0] == v])
                        for v in range(num_views)])  # (n, 3), in the order of `source` (sorted by view)

    pixels, z, in_front = cameras.project(points.expand(num_views, *points.shape))  # (V, n, 2), (V, n)
    column = pixels[..., 0].floor().long().clamp(0, width - 1)
    row = pixels[..., 1].floor().long().clamp(0, height - 1)
    inside = in_front & ((pixels >= 0) & (pixels < pixels.new_tensor([width, height]))).all(-1)
    flat = rearrange(torch.arange(num_views, device=images.device), "v -> v 1") * height * width
    index = flat + row * width + column  # (V, n) into the flattened (V, H, W) maps
    z_buffer = hull.depth.flatten()[index]
    visible = inside & interior.flatten()[index] & (z_buffer > 0) & ((z - z_buffer).abs() <= tolerance)

    shared = visible.sum(0) >= min_views  # (n,)
    if not shared.any():
        return PhotoConsistency(None, None, 0, 0.0)
    colours = bilinear_sample(images, pixels[:, shared])  # (V, m, 3)
    seen = visible[:, shared, None].to(colours.dtype)
    mean = (colours * seen).sum(0) / seen.sum(0)  # (m, 3)
    pairs = rearrange(visible[:, shared], "v m -> (v m)")
    observed = rearrange(colours, "v m c -> (v m) c")[pairs]
    expected = rearrange(mean.expand_as(colours), "v m c -> (v m) c")[pairs]
    return PhotoConsistency(variance=float(mean_squared_error(observed, expected)),
                            psnr=float(peak_signal_noise_ratio(observed, expected, data_range=1.0)),
                            num_points=int(shared.sum()), coverage=float(shared.float().mean()))
