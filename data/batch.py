"""What the multiview dataset yields and the DataModule batches: typed, in place of nested string-keyed dicts.

An item is one object's ``MultiviewItem``; ``collate_multiview`` stacks items into a ``MultiviewItem`` whose
tensors gain a leading B (and whose cameras become ``[B, V]``), which is the training batch. Lightning moves
dataclasses (and ``Cameras``, through their ``to``) to the device field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

import torch
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from tunemv.geometry.cameras import Cameras


@dataclass
class ViewSet:
    """Some views of each object, shapes for one object (a batch adds a leading B):

    images (V, 3, H, W) in [-1, 1]; masks (V, 1, H, W) in {0, 1}; depths (V, 1, H, W) camera-frame z, 0 where
    unknown; cameras [V]; view_indices (V,) the views' indices in the object's folder.
    """

    images: torch.Tensor
    masks: torch.Tensor
    depths: torch.Tensor
    cameras: Cameras
    view_indices: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[-4]


@dataclass
class MultiviewItem:
    """One object's training views (``views``: what the model sees; ``supervision``: what only NeuS is
    rendered at), or a batch of them (``caption`` and ``object_id`` then lists)."""

    caption: str | list[str]
    object_id: str | list[str]
    views: ViewSet
    supervision: ViewSet

    def __len__(self) -> int:  # objects in a batch
        return len(self.caption) if isinstance(self.caption, list) else 1

    def maps(self, name: str) -> torch.Tensor:
        """(B, V + S, 1, H, W) the ``masks`` or ``depths`` of the views, then of the supervision views."""
        return torch.cat([getattr(self.views, name), getattr(self.supervision, name)], dim=1)


def collate_multiview(items: list) -> object:
    """Stack items field by field: a dataclass into the same dataclass, tensors with ``default_collate``,
    ``Cameras`` into ``[B, V]``, strings into lists. The training batch of every dataset here."""
    first = items[0]
    if isinstance(first, Cameras):
        return Cameras.stack(items)
    if is_dataclass(first):
        return type(first)(**{field.name: collate_multiview([getattr(item, field.name) for item in items])
                              for field in fields(first)})
    if isinstance(first, str):
        return list(items)
    return collate(items, collate_fn_map=default_collate_fn_map)
