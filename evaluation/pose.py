"""Pose accuracy of text→multiview: does each view show the object from the azimuth its camera states?

Procedural objects face +x (azimuth 0 is their front), so for a category that no rotation about +z maps onto
itself (``MIRROR_PLANE_DEG``: chair, mug) a view's azimuth can be read from its pixels. The classifier's azimuth
head (an ``AttributeClassifier`` saved with ``azimuth_bins``, e.g. ``models/pose-classifier``: 16 bins of 22.5°
centred on multiples of 22.5°) reads it; the camera's azimuth is the angle about +z of its centre (the
translation of its OpenCV c2w). Both are compared in bins, a hit being within ``TOLERANCE_BINS`` = ±1 bin
(|error| < 34°): on held-out renders the head is exact on 66% of views but within ±1 on 94%, its misses
being mostly a neighbouring bin (32 px, boundaries), while ±1 still rejects a 45° turn.

- ``pose_absolute``: the fraction of views whose predicted bin is within ±1 of their camera's bin. It needs
  the object to face +x as the training set's objects do. Chance (random bins): 3/16 = 0.19.
- ``pose_relative``: the fraction of view pairs (i < j) whose predicted difference p_i − p_j is within ±1 bin of
  their cameras' difference c_i − c_j. A global rotation of the object (or of every camera) adds one constant
  to every p_i (or c_i), which cancels in each difference, so an object consistently turned by any angle scores
  as if it faced +x; views that disagree with each other still miss. Chance: 3/16 (the difference of two
  independent uniform bins is uniform). Chosen over "the best single offset's absolute score", whose maximum
  over 16 offsets raises chance: random bins on an 8-view 45° orbit score 0.44 there (measured), 0.19 here, and
  one view repeated up to 2/8 there, 0 here.

Calibration on ground-truth renders, rotated, shuffled and repeated cameras: tests/test_pose_accuracy.py.
Where the caption names a symmetric category, no category, or the classifier has no azimuth head, both are
"unavailable: <reason>".
"""

from __future__ import annotations

import torch

from tunemv.evaluation.attribute_classifier import azimuth_bin
from tunemv.evaluation.availability import unavailable
from tunemv.evaluation.prompt import caption_parser
from tunemv.geometry.cameras import Cameras

POSE_KEYS = ("pose_absolute", "pose_relative")
TOLERANCE_BINS = 1


def camera_azimuth_deg(cameras: Cameras) -> torch.Tensor:
    """Cameras ``[V]`` -> (V,) azimuth of each camera centre about +z, in degrees (0 on +x, 90 on +y)."""
    centre = cameras.c2w[..., :3, 3].double()
    return torch.rad2deg(torch.atan2(centre[..., 1], centre[..., 0]))


def bin_distance(a: torch.Tensor, b: torch.Tensor, bins: int) -> torch.Tensor:
    """Circular distance, in bins, between bin indices (or differences of them) ``a`` and ``b``."""
    difference = (a - b) % bins
    return torch.minimum(difference, bins - difference)


def absolute_accuracy(predicted: torch.Tensor, camera: torch.Tensor, bins: int, tolerance: int = TOLERANCE_BINS) -> float:
    """(V,) predicted and camera bins -> fraction of views within ``tolerance`` bins."""
    return (bin_distance(predicted, camera, bins) <= tolerance).double().mean().item()


def relative_accuracy(predicted: torch.Tensor, camera: torch.Tensor, bins: int, tolerance: int = TOLERANCE_BINS) -> float:
    """(V,) predicted and camera bins, V >= 2 -> fraction of pairs i < j whose predicted difference is within
    ``tolerance`` bins of the cameras' difference: blind to one offset added to all of either."""
    pairs = torch.triu_indices(len(predicted), len(predicted), offset=1)  # (2, V(V-1)/2)
    predicted_difference = predicted[pairs[0]] - predicted[pairs[1]]
    camera_difference = camera[pairs[0]] - camera[pairs[1]]
    return (bin_distance(predicted_difference, camera_difference, bins) <= tolerance).double().mean().item()


def pose_unavailable(classifier, caption: str) -> str | None:
    """Why the pose of ``caption``'s object cannot be scored with ``classifier``, or ``None`` when it can."""
    read = getattr(classifier, "azimuth_categories", None)
    if not read or not getattr(classifier, "azimuth_bins", 0):
        return "the classifier has no azimuth head (train one: configs/foundation/pose_classifier.yaml)"
    category = caption_parser(classifier)(caption)[0]
    if category is None:
        return "the caption names no category the classifier knows"
    if category not in read:
        return f"a {category} has no single front (the azimuth head reads {', '.join(read)})"
    return None


@torch.no_grad()
def pose_accuracy(classifier, images: torch.Tensor, cameras: Cameras, caption: str) -> dict[str, float | str]:
    """``pose_absolute`` and ``pose_relative`` of one object's (V, 3, H, W) views in [0, 1] with Cameras ``[V]``."""
    if images.ndim != 4 or len(cameras) != len(images):
        raise ValueError(f"need (V, 3, H, W) images and V cameras, got {tuple(images.shape)} and {len(cameras)} cameras")
    reason = pose_unavailable(classifier, caption)
    if reason is not None:
        return {key: unavailable(reason) for key in POSE_KEYS}
    bins = classifier.azimuth_bins
    predicted = torch.as_tensor(classifier.predict(images)["azimuth_bin"])
    camera = azimuth_bin(camera_azimuth_deg(cameras), bins)
    out: dict[str, float | str] = {"pose_absolute": absolute_accuracy(predicted, camera, bins)}
    out["pose_relative"] = (relative_accuracy(predicted, camera, bins) if len(images) >= 2
                            else unavailable("relative pose needs two views or more"))
    return out
