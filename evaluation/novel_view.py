"""Novel-view accuracy against ground truth, by azimuth offset from the reference view; camera retrieval; and
the copy-the-reference baseline scored from the same data.

Protocol: Zero123 §4 and SyncDreamer §4 (experiment protocol) score each generated novel view against the
ground-truth render at its camera (PSNR, SSIM; here also silhouette IoU), the cameras on the input view's orbit;
here the scores are also grouped by how far the camera has turned from the input view. Camera retrieval (this
project's, needing no weights) asks whether a view shows the object *from its camera*: of the ground-truth views
at the cameras of this object's views, the one whose silhouette best matches the view should be its own. The
copy baseline puts the reference image in every generated view: a model that ignores the cameras scores about
that, so a novel-view number means something only next to its ``copy_`` twin.

Folding: silhouettes alone cannot tell some ground-truth cameras apart (a vase from any side; a table from the
front and the back). Two ground-truth views are equivalent when their silhouettes have IoU >= ``FOLD_IOU``; a
view is retrieved correctly when its best match is equivalent to its own camera, and
``camera_retrieval_chance`` (mean over views of |equivalence class| / candidates) says what guessing scores.

Keys (means over the generated views, then per whole-degree offset in (-180, 180], e.g. ``novel_psnr@+90``,
``novel_psnr@180``): ``novel_mask_iou``, ``novel_psnr``, ``novel_ssim``, ``camera_retrieval``, and the same
prefixed ``copy_``; ``camera_retrieval_chance`` once (the copy has the same candidates). Per view (the object's
per_view): these, ``novel_views`` (indices), ``novel_azimuth_offset`` and ``camera_retrieved_view`` (the view of
this object whose ground-truth camera matched best; ties go to the first). Calibration: tests/test_novel_view.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from tunemv.evaluation.views import ObjectViews
from tunemv.geometry.cameras import Cameras

# Two ground-truth cameras are equivalent when their silhouettes agree at least this well. Measured on
# procedural ground truth at 32 px (24 objects, seed 0, alpha masks): turning the camera by only 5 deg keeps a
# silhouette's IoU with itself at a median 0.89 over the non-round objects (chair 0.87, table 0.79, stool
# 0.87, mug 0.97, box 0.97), so views that agree better than 0.9 are as alike as one camera and a small pose
# error. On 45-deg-spaced cameras (4 seeds, 2688 pairs) this folds the exact symmetries (1452 pairs, IoU >=
# 0.999: round objects, tables front/back, boxes at 90 deg) and near-round shapes (lamps 0.95, square boxes
# 0.92), and keeps apart what looks different: a chair from the front and the back at 16 deg elevation (0.885),
# mugs with their handle turned (<= 0.87), boxes turned by 45 deg (0.85-0.89).
FOLD_IOU = 0.9
MASK_THRESHOLD = 0.5  # soft alpha at anti-aliased edges: foreground where coverage >= half a pixel

PER_VIEW = ("novel_mask_iou", "novel_psnr", "novel_ssim", "camera_retrieval")  # scored per view, then aggregated
SUMMARY_KEYS = [*PER_VIEW, "camera_retrieval_chance", *(f"copy_{name}" for name in PER_VIEW)]


def is_novel_key(name: str) -> bool:
    """Whether a report key is one of this module's (summary, per-offset, or copy baseline)."""
    base = name.removeprefix("copy_").split("@")[0]
    return base in PER_VIEW or base == "camera_retrieval_chance"


def offset_label(offset: int) -> str:
    """+90 -> "+90", -45 -> "-45"; 0 and 180 carry no sign (180 is both ways round)."""
    return f"{offset:+d}" if offset not in (0, 180) else str(offset)


def offset_key(name: str, offset: int) -> str:
    """``novel_psnr`` at +90 deg -> ``novel_psnr@+90``."""
    return f"{name}@{offset_label(offset)}"


def split_offset_key(name: str) -> tuple[str, int] | None:
    """``novel_psnr@+90`` -> ("novel_psnr", 90); None for a key without an offset."""
    base, _, offset = name.partition("@")
    return (base, int(offset)) if offset else None


def azimuths(cameras: Cameras) -> torch.Tensor:
    """(V,) degrees of each camera centre around +z (atan2(y, x): azimuth 0 looks from +x, the procedural front).
    A camera on the z axis has no centre azimuth; its image-down axis' horizontal part points where the centre
    would be once tilted off the axis, so that stands in."""
    c2w = cameras.c2w.double()
    horizontal = c2w[:, :2, 3]
    on_axis = horizontal.norm(dim=-1) < 1e-6 * c2w[:, :3, 3].norm(dim=-1).clamp_min(1e-12)
    horizontal = torch.where(on_axis[:, None], c2w[:, :2, 1], horizontal)
    return torch.rad2deg(torch.atan2(horizontal[:, 1], horizontal[:, 0]))


def azimuth_offsets(cameras: Cameras, origin: int) -> list[int]:
    """Whole-degree azimuth of each camera relative to camera ``origin``, folded into (-180, 180]."""
    offsets = []
    for degrees in (azimuths(cameras) - azimuths(cameras)[origin]).tolist():
        degrees = round((degrees + 180) % 360 - 180, 4)  # [-180, 180); float32 noise must not decide a half degree
        whole = int(math.copysign(math.floor(abs(degrees) + 0.5), degrees))  # half away from 0: +-22.5 -> +-23
        offsets.append(180 if whole == -180 else whole)
    return offsets


def binary(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(V, 1, h, w) soft masks -> (V, H*W) bool at ``size`` (area-resized first: a coverage fraction)."""
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=size, mode="area")
    return rearrange(masks >= MASK_THRESHOLD, "v 1 h w -> v (h w)")


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, P) and (B, P) bool masks -> (A, B) IoU; two empty masks are identical (IoU 1)."""
    a, b = a.double(), b.double()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def view_scores(images: torch.Tensor, masks: torch.Tensor, truth_images: torch.Tensor,
                truth_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 3, h, w) views in [0, 1] and (N, 1, h, w) masks against their (N, 3, H, W) / (N, 1, H, W) ground
    truth -> (N,) mask IoU, PSNR (dB; inf when identical) and SSIM per view, at the ground truth's size."""
    size = tuple(truth_images.shape[-2:])
    images = _resized(images, size)
    ours, theirs = binary(masks, size), binary(truth_masks, size)
    union = (ours | theirs).sum(1)
    iou = torch.where(union > 0, (ours & theirs).sum(1) / union.clamp_min(1), 1.0)  # both empty: identical
    return {
        "novel_mask_iou": iou.float(),
        "novel_psnr": peak_signal_noise_ratio(images, truth_images, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "novel_ssim": structural_similarity_index_measure(images, truth_images, data_range=1.0, reduction="none"),
    }


def retrieve(masks: torch.Tensor, candidates: torch.Tensor, own: torch.Tensor,
             equivalent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) view masks, (K, P) candidate ground-truth masks, (N,) index of each view's own candidate, (K, K)
    equivalence -> (N,) best-matching candidate (ties: the first) and (N,) whether it is equivalent to the own."""
    best = pairwise_iou(masks, candidates).argmax(1)
    return best, equivalent[own, best]


def _candidates(matched: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) ground-truth index per view -> (K,) for each distinct ground-truth camera the first view at it, and
    (V,) each view's candidate (two views may share a camera)."""
    first: dict[int, int] = {}
    for view, index in enumerate(matched.tolist()):
        first.setdefault(index, view)
    order = torch.tensor(list(first.values()))
    position = {index: k for k, index in enumerate(first)}
    return order, torch.tensor([position[i] for i in matched.tolist()])


def _aggregate(per_view: dict[str, torch.Tensor], offsets: list[int], prefix: str) -> dict[str, float]:
    """Means over all views (``novel_psnr``), then over the views at each offset (``novel_psnr@+90``)."""
    metrics = {prefix + name: float(values.double().mean()) for name, values in per_view.items()}
    groups = torch.tensor(offsets)
    for offset in sorted(set(offsets)):
        for name, values in per_view.items():
            metrics[offset_key(prefix + name, offset)] = float(values[groups == offset].double().mean())
    return metrics


@torch.no_grad()
def novel_view_metrics(views: ObjectViews, truth: ObjectViews, matched: torch.Tensor,
                       generated: torch.Tensor) -> tuple[dict[str, float], dict[str, list]]:
    """One object's novel-view metrics and per-view values.

    ``views``: the generated object; ``truth``: its ground truth; ``matched`` (V,) the ground-truth view at each
    view's camera (``fidelity.match_views``); ``generated`` (V,) False for the clean reference views
    (sampling.json), of which the first is the origin of the azimuth offsets and the image the copy baseline
    repeats (text->multiview: view 0). Needs at least one generated view.
    """
    origin = int(torch.nonzero(~generated).flatten()[0]) if not generated.all() else 0
    size = tuple(truth.images.shape[-2:])
    picked = torch.nonzero(generated).flatten()
    truth_images, truth_masks = truth.images[matched[picked]], truth.masks[matched[picked]]
    offsets = [azimuth_offsets(views.cameras, origin)[i] for i in picked.tolist()]

    # Candidates: the ground truth at every camera of this object, the reference's included.
    order, own = _candidates(matched)
    candidates = binary(truth.masks[matched[order]], size)
    equivalent = pairwise_iou(candidates, candidates) >= FOLD_IOU
    chance = equivalent[own[picked]].double().sum(1) / len(order)

    def scored(images: torch.Tensor, masks: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        scores = view_scores(images, masks, truth_images, truth_masks)
        best, correct = retrieve(binary(masks, size), candidates, own[picked], equivalent)
        scores["camera_retrieval"] = correct.float()
        return scores, order[best]

    model, retrieved = scored(views.images[picked], views.masks[picked])
    copy, _ = scored(views.images[origin].expand(len(picked), -1, -1, -1),
                     views.masks[origin].expand(len(picked), -1, -1, -1))
    metrics = {**_aggregate(model, offsets, ""), "camera_retrieval_chance": float(chance.mean()),
               **_aggregate(copy, offsets, "copy_")}
    metrics = {name: metrics[name] for name in _ordered(metrics)}
    per_view = {"novel_views": picked.tolist(), "novel_azimuth_offset": offsets,
                **{name: values.tolist() for name, values in model.items()},
                "camera_retrieved_view": retrieved.tolist(), "camera_retrieval_chance": chance.tolist(),
                **{f"copy_{name}": values.tolist() for name, values in copy.items()}}
    return metrics, per_view


def _ordered(names) -> list[str]:
    """Summary keys first (model, chance, copy), then per offset from -135 round to 180: a stable JSON order."""
    summary = [n for n in SUMMARY_KEYS if n in names]

    def rank(name: str) -> tuple:
        base, offset = split_offset_key(name)
        return offset, base.startswith("copy_"), PER_VIEW.index(base.removeprefix("copy_"))

    by_offset = sorted((n for n in names if "@" in n), key=rank)
    return summary + by_offset
