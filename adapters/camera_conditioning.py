"""The per-view camera signal of the control branch (beyond TuneMV3D; see DESIGN.md, "Each view gets its camera").

TuneMV3D tells a view its camera only through the field's render and the epipolar attention; at high noise
the field has nothing to fuse, so nothing tells a view which way it faces. Every strong peer passes the camera
to each view at every step, and tunemv offers the two common ways (``camera_conditioning``):

- ``"plucker"``: per-pixel Plücker ray maps (d, o × d), 6 channels in the object-centric world frame at the
  branch's input resolution, through a small conv encoder added beside the condition embedding of g_i
  (the branch's own ``ConditionEmbedding`` over 6 channels; MV-Adapter, and CAT3D feeds the same maps beside
  its latents);
- ``"embedding"``: the camera's flattened extrinsics and normalised focal lengths through an MLP, added to the
  branch's time embedding (MVDream §3.2, SV3D, Wonder3D, Era3D);
- ``"both"``, or ``"none"`` (TuneMV3D as published; what older adapter folders are).

Both encoders end in a zero-initialised layer, as ControlNet's condition embedding does, so a new encoder
starts as no change to the branch; the branch's zero-convs keep an untrained adapter exactly the frozen
backbone either way.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from tunemv.adapters.cross_view_attention import zero_module
from tunemv.geometry.cameras import Cameras

CAMERA_CONDITIONINGS = ("none", "plucker", "embedding", "both")
PLUCKER_CHANNELS = 6
POSE_FEATURES = 14  # the 3x4 extrinsics, then fx / width and fy / height


def uses_rays(conditioning: str) -> bool:
    return conditioning in ("plucker", "both")


def uses_embedding(conditioning: str) -> bool:
    return conditioning in ("embedding", "both")


def plucker_rays(cameras: Cameras, height: int, width: int) -> torch.Tensor:
    """Cameras ``[N]`` -> (N, 6, h, w) Plücker coordinates (d, o × d) of every pixel centre's ray.

    The moment o × d does not depend on where along the ray o sits, so the map is a property of the ray alone.
    """
    origins, directions = cameras.rays(height, width)  # (N, h, w, 3) each, world frame
    moment = torch.linalg.cross(origins, directions, dim=-1)
    return rearrange(torch.cat([directions, moment], -1), "n h w c -> n c h w")


def pose_features(cameras: Cameras) -> torch.Tensor:
    """Cameras ``[N]`` -> (N, 14): the OpenCV camera-to-world 3x4 block and the focal lengths per image side."""
    extrinsics = rearrange(cameras.c2w[..., :3, :4], "n r c -> n (r c)")
    focal = torch.stack([cameras.K[..., 0, 0] / cameras.width, cameras.K[..., 1, 1] / cameras.height], -1)
    return torch.cat([extrinsics, focal], -1)


class CameraEmbedding(nn.Module):
    """(N, 14) pose features -> (N, D) added to the branch's time embedding (MVDream's two-layer MLP)."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(POSE_FEATURES, embedding_dim), nn.SiLU(),
                                    zero_module(nn.Linear(embedding_dim, embedding_dim)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
