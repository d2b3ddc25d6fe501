"""A small CNN that reads category and colour from a 32x32 render on white: the prompt-fidelity metric.

Two linear heads share one convolutional trunk. ``save_pretrained`` writes ``config.json`` (the constructor's
arguments, label lists included) and ``model.safetensors``; ``from_pretrained`` reads them back.
``parse_caption`` reads the same two attributes from a procedural caption, so a prompt and an image can be
compared label to label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tunemv.data.procedural import CATEGORIES, COLOURS
from tunemv.errors import TunemvError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def parse_caption(caption: str, categories: Sequence[str] = CATEGORIES,
                  colours: Sequence[str] = tuple(COLOURS)) -> tuple[str | None, str | None]:
    """(category, colour) named in ``caption``, each ``None`` when absent.

    The first match in reading order wins: procedural captions name the category before any detail phrase
    that reuses a category word ("a red lamp with a cone shade").
    """
    words = re.findall(r"[a-z]+", caption.lower())
    category = next((word for word in words if word in categories), None)
    colour = next((word for word in words if word in colours), None)
    return category, colour


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class AttributeClassifier(nn.Module):
    """Category and colour heads over a 3-stage CNN (32 -> 16 -> 8 pixels, then global average pooling).

    Args:
        categories, colours: the label lists, in head order.
        widths: channels of the three stages.
        resolution: inputs are resized to this square size.
    """

    def __init__(self, categories: Sequence[str] = CATEGORIES, colours: Sequence[str] = tuple(COLOURS),
                 widths: Sequence[int] = (32, 64, 128), resolution: int = 32):
        super().__init__()
        if len(widths) != 3 or any(width % 8 for width in widths):
            raise ValueError(f"widths must be three multiples of 8, got {list(widths)}")
        self.categories, self.colours = list(categories), list(colours)
        self.widths, self.resolution = list(widths), resolution
        self.trunk = nn.Sequential(_block(3, widths[0]), nn.AvgPool2d(2), _block(widths[0], widths[1]), nn.AvgPool2d(2),
                                   _block(widths[1], widths[2]))
        self.category_head = nn.Linear(widths[2], len(self.categories))
        self.colour_head = nn.Linear(widths[2], len(self.colours))

    @property
    def config(self) -> dict:
        return dict(categories=self.categories, colours=self.colours, widths=self.widths, resolution=self.resolution)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, R, R) in [-1, 1] on the model's device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}")
        images = images.to(self.category_head.weight.device, torch.float32)
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                                   align_corners=False)
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> (category logits (N, C), colour logits (N, K))."""
        features = self.trunk(self.prepare(images)).mean(dim=(-2, -1))  # "n c h w -> n c"
        return self.category_head(features), self.colour_head(features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict:
        """Labels and probabilities for (N, 3, H, W) images in [0, 1]; the model is left in eval mode."""
        self.eval()
        logits = [self(chunk) for chunk in images.split(batch_size)]
        category_prob = torch.cat([c for c, _ in logits]).softmax(-1).cpu()
        colour_prob = torch.cat([k for _, k in logits]).softmax(-1).cpu()
        return dict(category=[self.categories[i] for i in category_prob.argmax(-1).tolist()],
                    colour=[self.colours[i] for i in colour_prob.argmax(-1).tolist()],
                    category_prob=category_prob, colour_prob=colour_prob)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config, indent=1))
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()},
                  str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str | None = None) -> AttributeClassifier:
        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise TunemvError(f"{folder}: no {name}; not an attribute classifier folder")
        model = cls(**json.loads((folder / CONFIG_NAME).read_text()))
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return model.eval() if device is None else model.to(device).eval()
