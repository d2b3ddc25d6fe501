"""Fidelity against ground truth: PSNR and SSIM (torchmetrics), LPIPS when its backbone weights are on disk.

Views are matched to the reference object's views by camera, not by file name: a generated set may hold a
subset of the reference views (image->multiview, held-out views), or the same ones in another order.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from tunemv.errors import DatasetError
from tunemv.evaluation.availability import unavailable
from tunemv.evaluation.views import ObjectViews

CAMERA_TOLERANCE = 1e-3  # world units / rotation-matrix entries; cameras.json stores floats as written


def match_views(views: ObjectViews, reference: ObjectViews, cameras_file: Path) -> torch.Tensor:
    """(V,) index of the reference view with the same camera as each view; a view without one is an error."""
    ours = views.cameras.rescale(reference.cameras.height, reference.cameras.width)
    pose = (ours.c2w[:, None, :3] - reference.cameras.c2w[None, :, :3]).abs().amax((-1, -2))  # (V, R)
    intrinsics = (ours.K[:, None] - reference.cameras.K[None]).abs().amax((-1, -2)) / reference.cameras.K[:, 0, 0]
    distance, index = torch.where(intrinsics <= CAMERA_TOLERANCE, pose, torch.inf).min(1)
    missing = torch.nonzero(distance > CAMERA_TOLERANCE).flatten()
    if missing.numel():
        image = views.image_paths[int(missing[0])]
        raise DatasetError(cameras_file, f"no reference view has the camera of {image} (reference mismatch)")
    return index


@torch.no_grad()
def fidelity(images: torch.Tensor, reference: torch.Tensor, lpips=None) -> dict[str, object]:
    """(V, 3, H, W) views and their matched reference views in [0, 1] -> PSNR (dB, mean over views; inf when
    identical), per-view PSNR, SSIM, and LPIPS (``lpips`` is the loaded metric or an unavailable string)."""
    if images.shape[-2:] != reference.shape[-2:]:  # compare at the reference's resolution
        images = F.interpolate(images, size=reference.shape[-2:], mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    psnr = peak_signal_noise_ratio(images, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return {
        "psnr": float(psnr.mean()),
        "ssim": float(structural_similarity_index_measure(images, reference, data_range=1.0)),
        "lpips": lpips if isinstance(lpips, str) else float(lpips(images * 2 - 1, reference * 2 - 1)),
        "psnr_per_view": psnr.tolist(),
    }


def load_lpips(net: str = "alex"):
    """torchmetrics' LPIPS when torchvision and the backbone's ImageNet weights are already in the torch hub
    cache, else the reason as an "unavailable: ..." string. The check looks at the cache file itself, because
    torchvision would otherwise try (and, offline, hang on) a download. LPIPS' own linear heads ship inside
    torchmetrics."""
    try:
        import torchvision
    except ImportError:
        return unavailable("LPIPS needs torchvision, which is not installed")
    weights = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}[net]
    url = getattr(torchvision.models, weights).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        return unavailable(f"LPIPS {net} backbone weights not found at {cached}")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean")
    return lambda a, b: metric(a, b)  # inputs in [-1, 1]
