"""Eq. 2 of TuneMV3D: project 3D points into every source view, gather its features, aggregate over views.

Pixel convention as in ``Cameras``: pixel (i, j) covers [j, j+1) x [i, i+1) and its centre is (j+0.5, i+0.5).
A point is valid for a view when it is in front of the camera and projects inside the image rectangle.
"""

from __future__ import annotations

import torch

from tunemv.geometry.cameras import Cameras
from tunemv.geometry.projection import bilinear_sample, project_to_maps


def gather_view_features(points: torch.Tensor, feature_maps: torch.Tensor, cameras: Cameras,
                         twice_differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) world points, (V, C, h, w) feature maps of views seen by Cameras ``[V]``.

    Returns the bilinearly sampled features (V, N, C) and ``valid`` (V, N). The maps may have any resolution.
    """
    num_views, _, height, width = feature_maps.shape
    pixels, valid = project_to_maps(points.expand(num_views, *points.shape), cameras, height, width)
    return bilinear_sample(feature_maps, pixels, twice_differentiable), valid


def aggregate_mean_var(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean and variance over the valid views (SparseNeuS), plus the fraction of views that see the point.

    (V, N, C) features, (V, N) valid -> (N, 2C + 1) ``[mean, variance, visible_fraction]``.
    Fallback: a point that no view sees gets mean 0, variance 0 and fraction 0, so the field can tell
    "no evidence" apart from evidence; its SDF then comes from the position and timestep alone.
    """
    weight = valid.to(features.dtype)[..., None]  # (V, N, 1)
    count = weight.sum(0)
    denom = count.clamp(min=1.0)
    mean = (features * weight).sum(0) / denom
    variance = ((features - mean) ** 2 * weight).sum(0) / denom
    return torch.cat([mean, variance, count / features.shape[0]], -1)
