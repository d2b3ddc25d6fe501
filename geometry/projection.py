"""Points to pixels and back: projecting into feature maps and sampling them at continuous pixel coordinates.

Pixel convention as in ``Cameras``: pixel (i, j) covers [j, j+1) x [i, i+1) and its centre is (j+0.5, i+0.5).
A point is valid for a view when it is in front of the camera and projects inside the image rectangle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from tunemv.geometry.cameras import Cameras


def bilinear_sample(feature_maps: torch.Tensor, pixels: torch.Tensor, twice_differentiable: bool = False
                    ) -> torch.Tensor:
    """Sample (V, C, h, w) maps at continuous pixel coordinates (V, N, 2) (u, v) -> (V, N, C), border padding.

    By default this is ``F.grid_sample``: fast, and differentiable once with respect to the coordinates
    (enough for rendering and for normals). The eikonal loss differentiates the SDF's gradient again, and
    ``grid_sample``'s double backward is missing from many torch versions and backends (pytorch#34704), so
    ``twice_differentiable=True`` builds the same interpolation from ``gather`` and arithmetic instead,
    which autograd can always differentiate twice. It is about 5x slower, so use it on few points.
    """
    _, channels, height, width = feature_maps.shape
    if not twice_differentiable:
        grid = pixels / pixels.new_tensor([width, height]) * 2 - 1  # align_corners=False: edges at -1 and 1
        sampled = F.grid_sample(feature_maps, grid[:, :, None], mode="bilinear", padding_mode="border",
                                align_corners=False)
        return rearrange(sampled, "v c n 1 -> v n c")
    x, y = pixels[..., 0] - 0.5, pixels[..., 1] - 0.5  # continuous index of the pixel centres
    # A NaN coordinate cast to an index is -2^63 (an IndexError); as 0 it gives NaN corner weights instead,
    # so the NaN reaches the loss, where training's non-finite guard counts it.
    x0 = torch.nan_to_num(x.detach(), nan=0.0, posinf=width, neginf=-1.0).floor()
    y0 = torch.nan_to_num(y.detach(), nan=0.0, posinf=height, neginf=-1.0).floor()
    wx, wy = x - x0, y - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], -1).clamp(0, width - 1).long()  # clamping = border padding
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], -1).clamp(0, height - 1).long()
    corner_weights = torch.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy], -1)
    flat = rearrange(feature_maps, "v c h w -> v (h w) c")
    index = rearrange(ys * width + xs, "v n k -> v (n k)")
    corners = flat.gather(1, index[..., None].expand(-1, -1, channels))
    corners = rearrange(corners, "v (n k) c -> v n k c", k=4)
    return torch.einsum("vnkc,vnk->vnc", corners, corner_weights)


def project_to_maps(points: torch.Tensor, cameras: Cameras, height: int, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (..., V, N, 3) points with Cameras ``[..., V]`` into maps of ``height`` x ``width``.

    Returns pixels (..., V, N, 2) in the maps' pixel frame (rescaled from the cameras' stated size) and
    ``valid`` (..., V, N): in front of the camera and inside the image rectangle.
    """
    pixels, _, in_front = cameras.project(points)
    pixels = pixels * pixels.new_tensor([width / cameras.width, height / cameras.height])
    inside = ((pixels >= 0) & (pixels <= pixels.new_tensor([width, height]))).all(-1)
    return pixels, in_front & inside
