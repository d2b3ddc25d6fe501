"""``MultiviewDataset``: input views plus disjoint supervision views of one object per item.

Randomness (view choice, caption alternative) comes from a generator seeded by ``(seed, epoch, index)``,
never from global RNG state, so an item is the same whichever worker process loads it and a resumed run
sees the same data as an uninterrupted one. ``EpochSampler`` passes the epoch in through the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from tunemv.data.batch import MultiviewItem, ViewSet
from tunemv.data.format import ObjectRecord, Problem, list_objects, load_image, load_mask, read_object
from tunemv.errors import DatasetError

log = logging.getLogger(__name__)

ViewSelection = Literal["random", "uniform"]


def check_view_selection(mode: str) -> None:
    if mode not in get_args(ViewSelection):
        raise ValueError(f"unknown view_selection {mode!r}; expected one of {get_args(ViewSelection)}")

WHITE_THRESHOLD = 0.97  # a pixel with every channel above this counts as background when there is no mask


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)


def select_views(num_available: int, num_views: int, num_supervision: int, mode: ViewSelection,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint input and supervision view indices.

    ``"random"``: a random permutation. ``"uniform"``: inputs evenly spaced over the (azimuth-ordered) views
    from a random start, supervision evenly spaced over the rest; with 16 views, 8 + 8 gives every other view.
    """
    if num_views + num_supervision > num_available:
        raise ValueError(f"need {num_views} + {num_supervision} views, object has {num_available}")
    check_view_selection(mode)
    if mode == "random":
        order = torch.randperm(num_available, generator=generator)
        return order[:num_views], order[num_views:num_views + num_supervision]
    start = int(torch.randint(num_available, (1,), generator=generator))
    inputs = (start + torch.floor(torch.arange(num_views) * num_available / num_views).long()) % num_available
    rest = torch.tensor([i for i in range(num_available) if i not in set(inputs.tolist())], dtype=torch.long)
    supervision = rest[torch.floor(torch.arange(num_supervision) * len(rest) / max(num_supervision, 1)).long()]
    return inputs, supervision


class MultiviewDataset(Dataset):
    """Objects in the tunemv format (see ``tunemv.data.format``).

    Each item is a dict:
      ``images`` (V, 3, H, W) in [-1, 1] on white; ``masks`` (V, 1, H, W) in {0, 1};
      ``depths`` (V, 1, H, W) camera-frame z from ``depth/``, 0 where unknown (background, or no depth/);
      ``cameras`` Cameras [V] with ``K`` at (H, W); ``view_indices`` (V,);
      ``caption`` str (a random alternative when ``random_caption``); ``object_id`` str;
      ``supervision``: the same four keys for S further views, disjoint from the inputs.
    Masks come from the alpha channel, else from ``masks/``, else from a white-background threshold.
    """

    def __init__(self, root: str | Path, split: str = "train", num_views: int = 8, num_supervision_views: int = 8,
                 resolution: int | None = None, view_selection: ViewSelection = "random", random_caption: bool = True,
                 skip_invalid: bool = False, seed: int = 0):
        if num_views < 1 or num_supervision_views < 0:
            raise ValueError(f"need num_views >= 1 and num_supervision_views >= 0, got {num_views}, {num_supervision_views}")
        check_view_selection(view_selection)
        self.root, self.split = Path(root), split
        self.num_views, self.num_supervision_views = num_views, num_supervision_views
        self.resolution, self.view_selection = resolution, view_selection
        self.random_caption, self.skip_invalid, self.seed = random_caption, skip_invalid, seed
        self.skipped: list[Problem] = []  # objects left out at construction (skip_invalid=True)
        self.records: list[ObjectRecord] = []
        for object_id in list_objects(self.root, split):
            try:
                self.records.append(read_object(self.root / object_id, min_views=num_views + num_supervision_views))
            except DatasetError as error:
                if not skip_invalid:
                    raise
                self.skipped.append(Problem(error.path, error.problem))
        if self.skipped:
            log.warning("skipped %d invalid objects under %s (first: %s)", len(self.skipped), self.root, self.skipped[0])
        if not self.records:
            raise DatasetError(self.root, f"split {split!r} has no usable objects"
                                          + (f" ({len(self.skipped)} skipped as invalid)" if self.skipped else ""))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> MultiviewItem:
        epoch, index = divmod(int(index), len(self.records))
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return self._load(record, item_generator(self.seed, epoch, index))
            except DatasetError as error:
                if not self.skip_invalid:
                    raise
                log.warning("skipping unreadable object: %s", error)
        raise DatasetError(self.root, "every object failed to load")

    def _load(self, record: ObjectRecord, generator: torch.Generator) -> MultiviewItem:
        inputs, supervision = select_views(record.num_views, self.num_views, self.num_supervision_views,
                                           self.view_selection, generator)
        caption = record.captions[0]
        if self.random_caption and len(record.captions) > 1:
            caption = record.captions[int(torch.randint(len(record.captions), (1,), generator=generator))]
        return MultiviewItem(caption, record.object_id, self._views(record, inputs), self._views(record, supervision))

    def _views(self, record: ObjectRecord, indices: torch.Tensor) -> ViewSet:
        height, width = (self.resolution, self.resolution) if self.resolution else (record.cameras.height, record.cameras.width)
        images, masks, depths = [], [], []
        for i in indices.tolist():
            rgb, mask = self._read_view(record, i)
            depth = _read_depth(record, i, rgb.shape[-2:])
            if (height, width) != tuple(rgb.shape[-2:]):
                rgb = F.interpolate(rgb[None], (height, width), mode="bilinear", antialias=True, align_corners=False)[0]
                mask = (F.interpolate(mask[None], (height, width), mode="area")[0] >= 0.5).float()
                depth = resize_depth(depth[None], height, width)[0]
            images.append(rgb * 2 - 1)
            masks.append(mask)
            depths.append(depth)
        empty = torch.zeros(0, 3, height, width)
        return ViewSet(images=torch.stack(images) if images else empty,
                       masks=torch.stack(masks) if masks else empty[:, :1],
                       depths=torch.stack(depths) if depths else empty[:, :1],
                       cameras=record.cameras[indices].rescale(height, width), view_indices=indices)

    @staticmethod
    def _read_view(record: ObjectRecord, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = record.image_paths[i]
        try:
            rgb, alpha = load_image(path)
            if alpha is not None:
                mask = (alpha >= 0.5).float()
            elif record.mask_paths and record.mask_paths[i] is not None:
                mask = load_mask(record.mask_paths[i])
            else:
                mask = (rgb < WHITE_THRESHOLD).any(0, keepdim=True).float()
        except (OSError, ValueError) as exc:
            raise DatasetError(path, f"image is not readable ({type(exc).__name__}: {exc})") from exc
        expected = (record.cameras.height, record.cameras.width)
        if tuple(rgb.shape[-2:]) != expected or tuple(mask.shape[-2:]) != expected:
            raise DatasetError(path, f"size {tuple(rgb.shape[-2:])} does not match cameras.json {expected}")
        return rgb, mask


def _read_depth(record: ObjectRecord, i: int, size) -> torch.Tensor:
    """(1, H, W) camera-frame z of view ``i``; zeros (unknown) when the object has no depth/ file for it."""
    path = record.depth_paths[i] if record.depth_paths else None
    if path is None:
        return torch.zeros(1, *size)
    try:
        depth = torch.from_numpy(np.load(path).astype(np.float32))
    except (OSError, ValueError) as exc:
        raise DatasetError(path, f"depth is not a readable .npy ({type(exc).__name__}: {exc})") from exc
    if tuple(depth.shape) != tuple(size) or not torch.isfinite(depth).all():
        raise DatasetError(path, f"depth must be finite with shape {tuple(size)}, got {tuple(depth.shape)}")
    return depth[None]


def resize_depth(depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1, H, W) depth -> (N, 1, height, width), area-averaging the known (> 0) depths only, so background
    zeros never pull a surface towards the camera; a pixel less than half covered by known depth is unknown."""
    known = (depth > 0).float()
    coverage = F.interpolate(known, (height, width), mode="area")
    total = F.interpolate(depth * known, (height, width), mode="area")
    return torch.where(coverage >= 0.5, total / coverage.clamp(min=1e-6), torch.zeros_like(total))


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``(seed, epoch)`` and yields ``epoch * n + i``.

    Lightning calls ``set_epoch`` before each epoch; the dataset decodes the epoch from the index, which
    works inside worker processes (they never see ``set_epoch``) and makes a resumed run replay exactly.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True):
        self.num_items, self.seed, self.shuffle, self.epoch = num_items, seed, shuffle, 0
        self.skip = 0  # items already served this epoch before a resume; the next iteration starts after them

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        else:
            order = torch.arange(self.num_items)
        skip, self.skip = self.skip, 0
        return iter((order[skip:] + self.epoch * self.num_items).tolist())

    def __len__(self) -> int:
        return self.num_items
