"""A small CNN that reads category and colour from a 32x32 render on white: the prompt-fidelity metric.

Two linear heads share one convolutional trunk. An optional third head reads the azimuth of the camera, in
``azimuth_bins`` bins, for the ``azimuth_categories`` (the pose metrics, ``evaluation/pose.py``); folders saved
without it load unchanged and have ``azimuth_head = None``. ``save_pretrained`` writes ``config.json`` (the
constructor's arguments, label lists included) and ``model.safetensors``; ``from_pretrained`` reads them back.
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
from einops import reduce
from safetensors.torch import load_file, save_file
from torch import nn

from tunemv.data.procedural import CATEGORIES, COLOURS
from tunemv.errors import TunemvError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

# The procedural categories that no rotation about +z maps onto themselves, so a view's azimuth can be read from
# it: a chair's back stands at -x, a mug's handle at +y (data/procedural.py). Each value is the azimuth of the
# object's mirror plane phi: a horizontally flipped view from azimuth a is the view from 2 phi - a. The others
# repeat under some rotation: tables and sideways capsules under 180 deg, lamps (a square base at most) under
# 90, stools under 120, boxes and upright tori have a random yaw, the rest are round.
MIRROR_PLANE_DEG = {"chair": 0.0, "mug": 90.0}


def azimuth_bin(azimuth_deg: torch.Tensor, bins: int) -> torch.Tensor:
    """Degrees -> bin index in [0, bins): bins are centred on multiples of 360/bins, so bin 0 is the front."""
    width = 360.0 / bins
    return torch.floor(torch.remainder(azimuth_deg.double(), 360.0) / width + 0.5).long() % bins


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


def _azimuth_head(channels: int, size: int, bins: int) -> nn.Sequential:
    """Reads the feature map before pooling: which way an object faces is where its parts are (a chair's back
    left or right of its seat), and global pooling throws that away."""
    return nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.Flatten(),
                         nn.Linear(32 * size * size, bins))


class AttributeClassifier(nn.Module):
    """Category and colour heads over a 3-stage CNN (32 -> 16 -> 8 pixels, then global average pooling).

    Args:
        categories, colours: the label lists, in head order.
        widths: channels of the three stages.
        resolution: inputs are resized to this square size.
        azimuth_bins: bins of the azimuth head (0: no head).
        azimuth_categories: the categories whose azimuth the head was trained to read.
    """

    def __init__(self, categories: Sequence[str] = CATEGORIES, colours: Sequence[str] = tuple(COLOURS),
                 widths: Sequence[int] = (32, 64, 128), resolution: int = 32, azimuth_bins: int = 0,
                 azimuth_categories: Sequence[str] = ()):
        super().__init__()
        if len(widths) != 3 or any(width % 8 for width in widths):
            raise ValueError(f"widths must be three multiples of 8, got {list(widths)}")
        if azimuth_bins < 0 or bool(azimuth_bins) != bool(azimuth_categories):
            raise ValueError(f"an azimuth head needs azimuth_bins >= 1 and azimuth_categories, got "
                             f"{azimuth_bins} and {list(azimuth_categories)}")
        self.categories, self.colours = list(categories), list(colours)
        self.widths, self.resolution = list(widths), resolution
        self.azimuth_bins, self.azimuth_categories = azimuth_bins, list(azimuth_categories)
        self.trunk = nn.Sequential(_block(3, widths[0]), nn.AvgPool2d(2), _block(widths[0], widths[1]), nn.AvgPool2d(2),
                                   _block(widths[1], widths[2]))
        self.category_head = nn.Linear(widths[2], len(self.categories))
        self.colour_head = nn.Linear(widths[2], len(self.colours))
        self.azimuth_head = _azimuth_head(widths[2], resolution // 4, azimuth_bins) if azimuth_bins else None

    @property
    def config(self) -> dict:
        config = dict(categories=self.categories, colours=self.colours, widths=self.widths, resolution=self.resolution)
        if self.azimuth_head is not None:  # a folder without the head keeps the config it always had
            config.update(azimuth_bins=self.azimuth_bins, azimuth_categories=self.azimuth_categories)
        return config

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, R, R) in [-1, 1] on the model's device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}")
        images = images.to(self.category_head.weight.device, torch.float32)
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                                   align_corners=False)
        return images * 2 - 1

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the trunk's (N, C, R/4, R/4) features, which every head reads."""
        return self.trunk(self.prepare(images))

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, h, w) features -> logits per head: category (N, C), colour (N, K), azimuth (N, bins) if any."""
        pooled = reduce(features, "n c h w -> n c", "mean")
        logits = dict(category=self.category_head(pooled), colour=self.colour_head(pooled))
        if self.azimuth_head is not None:
            logits["azimuth"] = self.azimuth_head(features)
        return logits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> (category logits (N, C), colour logits (N, K))."""
        logits = self.heads(self.feature_map(images))
        return logits["category"], logits["colour"]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict:
        """Labels and probabilities for (N, 3, H, W) images in [0, 1]; the model is left in eval mode.

        With an azimuth head also ``azimuth_bin`` (list of ints) and ``azimuth_prob`` (N, bins).
        """
        self.eval()
        chunks = [self.heads(self.feature_map(chunk)) for chunk in images.split(batch_size)]
        prob = {name: torch.cat([chunk[name] for chunk in chunks]).softmax(-1).cpu() for name in chunks[0]}
        out = dict(category=[self.categories[i] for i in prob["category"].argmax(-1).tolist()],
                   colour=[self.colours[i] for i in prob["colour"].argmax(-1).tolist()],
                   category_prob=prob["category"], colour_prob=prob["colour"])
        if "azimuth" in prob:
            out.update(azimuth_bin=prob["azimuth"].argmax(-1).tolist(), azimuth_prob=prob["azimuth"])
        return out

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
