"""What ``MultiviewPipeline.__call__`` returns, diffusers-style: ``.images`` in the asked ``output_type``."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from tunemv.geometry.cameras import Cameras
from tunemv.sampling.multiview_field import MultiviewField

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclasses.dataclass
class MultiviewPipelineOutput:
    """``images``: under ``output_type="pil"`` a list per object of its views as PIL images; ``"np"`` a
    (B, V, H, W, 3) float array and ``"pt"`` a (B, V, 3, H, W) tensor, both in [0, 1]. ``pixels`` is always that
    tensor. Reference views are exactly as given. ``seed`` is the seed the noise was drawn from (a random one
    when none was given; None when a ``generator`` or ``latents`` was passed)."""

    images: Any
    latents: torch.Tensor  # (B, V, C, h, w) model space
    cameras: Cameras  # [B, V] at the image resolution H x W
    prompts: list[str]
    references: torch.Tensor  # (B, V) bool
    field: MultiviewField
    seed: int | None = None
    pixels: torch.Tensor = dataclasses.field(default=None, repr=False)  # (B, V, 3, H, W) in [0, 1]
    # What ran: sampler, steps (1 for "one-step"), scheduler ("auto" resolved; None: none used), guidance_scale
    run: dict[str, Any] | None = None

    def save(self, out_dir: str | Path, start_index: int = 0, settings: dict[str, Any] | None = None,
             **options) -> list[Path]:
        """Write each object as a dataset-format folder under ``out_dir`` (what ``tunemv sample`` writes);
        ``options`` are ``ObjectFolderOptions`` fields (``mesh_resolution=128`` adds meshes). Nothing is
        written unless this is called."""
        from tunemv.sampling.object_folders import ObjectFolderOptions, write_object_folders

        return write_object_folders(self, out_dir, start_index, settings, ObjectFolderOptions(**options))

    @property
    def views(self) -> torch.Tensor:
        warnings.warn("MultiviewPipelineOutput.views is deprecated and will be removed in the next release; use "
                      ".images (output_type='pt' gives the tensor) or .pixels", FutureWarning, stacklevel=2)
        return self.pixels


def convert_images(pixels: torch.Tensor, output_type: str) -> Any:
    """(B, V, 3, H, W) in [0, 1] -> what ``output_type`` asks for."""
    if output_type == "pt":
        return pixels
    array = rearrange(pixels.detach().float().cpu(), "b v c h w -> b v h w c").numpy()
    if output_type == "np":
        return array
    return [[Image.fromarray((view * 255).round().clip(0, 255).astype(np.uint8)) for view in views] for views in array]


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
