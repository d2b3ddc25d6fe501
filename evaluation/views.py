"""Load the views of one object folder for evaluation: images in [0, 1] on white, foreground masks, cameras.

Parsing and validation are ``tunemv.data.format``'s (the same messages as ``tunemv data check``); this file
only decides where each view's foreground mask comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunemv.data.dataset import WHITE_THRESHOLD
from tunemv.data.format import is_object_dir, list_objects, load_image, load_mask, read_object
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import Cameras

MASK_SOURCES = ("auto", "alpha", "masks", "threshold", "border")


@dataclass
class ObjectViews:
    object_id: str
    images: torch.Tensor  # (V, 3, H, W) in [0, 1], composited on white
    masks: torch.Tensor  # (V, 1, H, W) foreground in [0, 1]; soft at anti-aliased edges when it comes from alpha
    cameras: Cameras  # [V] at (H, W)
    captions: list[str]
    image_paths: list[Path]
    mesh_path: Path | None = None  # the folder's mesh.ply, if any

    @property
    def num_views(self) -> int:
        return self.images.shape[0]


def object_dirs(root: str | Path) -> list[Path]:
    """``root`` itself when it is one object folder, else every object folder under it (sorted by id)."""
    root = Path(root)
    if is_object_dir(root):
        return [root]
    ids = list_objects(root, "all")  # raises DatasetError for a missing root
    if not ids:
        raise DatasetError(root, "contains no object folders (and is not one: no cameras.json)")
    return [root / i for i in ids]


BORDER_TOLERANCE = 0.15  # max channel distance from the border's median colour that still counts as background


def border_mask(rgb: torch.Tensor, tolerance: float = BORDER_TOLERANCE) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (1, H, W) foreground mask against the border's median colour."""
    border = torch.cat([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], dim=1)  # (3, 2W + 2H)
    background = border.median(dim=1).values[:, None, None]
    return ((rgb - background).abs() > tolerance).any(0, keepdim=True).float()


def silhouette_iou(opacity: torch.Tensor, views: torch.Tensor) -> float:
    """Mask IoU of a field's rendered (V, h, w) opacity (>= 0.5) with the border masks of the (V, 3, H, W)
    views it was fused from, in [0, 1], area-resized to the renders' size: whether the turntable shows the
    object. Border masks, since the tiny backbone's backgrounds are near-white but tinted."""
    rendered = opacity.cpu() >= 0.5
    masks = torch.stack([border_mask(view) for view in views.cpu()]).float()
    masks = torch.nn.functional.interpolate(masks, size=tuple(rendered.shape[-2:]), mode="area")[:, 0] >= 0.5
    return float((rendered & masks).sum()) / max(float((rendered | masks).sum()), 1.0)


def load_views(directory: str | Path, mask_source: str = "auto", white_threshold: float = WHITE_THRESHOLD
               ) -> ObjectViews:
    """Read one object folder. ``mask_source``:

    - ``"auto"``: alpha when the png has it, else ``masks/NNN.png``, else the white-background threshold
      (the order ``MultiviewDataset`` uses);
    - ``"alpha"`` / ``"masks"``: only that source (a view without it is an error);
    - ``"threshold"``: a pixel is foreground when any channel is below ``white_threshold``. Use it for
      generated views, which have neither alpha nor trustworthy masks;
    - ``"border"``: the background is the median colour of the image border, and a pixel is foreground
      when a channel differs from it by more than ``BORDER_TOLERANCE``. For generated views whose
      background is uniform but not white (a small backbone's tinted backgrounds), where the white
      threshold would call every pixel foreground and make the hull metrics meaningless.
    """
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    record = read_object(directory)
    images, masks = [], []
    for i, path in enumerate(record.image_paths):
        try:
            rgb, alpha = load_image(path)
        except (OSError, ValueError) as exc:
            raise DatasetError(path, f"image is not readable ({type(exc).__name__}: {exc})") from exc
        if tuple(rgb.shape[-2:]) != (record.cameras.height, record.cameras.width):
            raise DatasetError(path, f"image is {rgb.shape[-1]}x{rgb.shape[-2]}, but cameras.json says "
                                     f"{record.cameras.width}x{record.cameras.height}")
        mask_path = record.mask_paths[i] if record.mask_paths else None
        if mask_source in ("auto", "alpha") and alpha is not None:
            mask = alpha
        elif mask_source in ("auto", "masks") and mask_path is not None:
            mask = load_mask(mask_path)
        elif mask_source in ("auto", "threshold"):
            mask = (rgb < white_threshold).any(0, keepdim=True).float()
        elif mask_source == "border":
            mask = border_mask(rgb)
        else:
            raise DatasetError(path, f"has no {'alpha channel' if mask_source == 'alpha' else 'masks/ file'} "
                                     f"(mask_source={mask_source!r})")
        images.append(rgb)
        masks.append(mask)
    return ObjectViews(record.object_id, torch.stack(images), torch.stack(masks), record.cameras,
                       record.captions, record.image_paths, record.mesh_path)
