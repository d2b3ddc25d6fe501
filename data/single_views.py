"""Single views of procedural objects, rendered once into a cached tensor file: the foundation models' data.

Object ``i`` of a set is a pure function of ``(seed, i)``: its category is ``CATEGORIES[i % 12]``, its colour
``COLOURS[(i // 12) % 14]`` (so every category/colour pair appears equally often) and its proportions and
cameras come from the seed sequence ``(seed, spawn_key=(i,))``. Each object is seen from ``views_per_object``
cameras at independent random elevations and a random azimuth offset (evenly spaced around it): several views
share one render call, which costs far less per view than one call per object.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tunemv.data.generate import CAMERA_RADIUS, FOV_DEG
from tunemv.data.procedural import CATEGORIES, COLOURS, make_object
from tunemv.data.render import render_sdf
from tunemv.geometry.cameras import orbit


@dataclass
class RenderConfig:
    """Which views to render. The cache file name is a hash of these fields."""

    seed: int = 0
    num_objects: int = 2500
    views_per_object: int = 8
    resolution: int = 32
    elevation_deg: tuple[float, float] = (-10.0, 40.0)
    supersample: int = 2
    cache_dir: str = "outputs/foundation/renders"

    def __post_init__(self):
        if self.num_objects < 1 or self.views_per_object < 1 or self.resolution < 8 or self.supersample < 1:
            raise ValueError("need num_objects >= 1, views_per_object >= 1, resolution >= 8 and supersample >= 1")
        low, high = self.elevation_deg
        if not -90 < low <= high < 90:
            raise ValueError(f"elevation_deg must be (low, high) inside (-90, 90), got {self.elevation_deg}")


@dataclass
class RenderedViews:
    images: torch.Tensor  # (N, 3, H, W) uint8, RGB on white
    captions: list[list[str]]  # per view: the object's caption first, then its alternatives
    category: list[str]
    colour: list[str]
    elevation_deg: torch.Tensor  # (N,)
    azimuth_deg: torch.Tensor  # (N,)
    seconds: float  # wall time the rendering took (not the cache load)

    def __len__(self) -> int:
        return len(self.images)


def render_object_views(config: RenderConfig, index: int) -> dict:
    """The ``views_per_object`` views of object ``index``: uint8 (V, 3, H, W) images and their attributes."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(index,)))
    category = CATEGORIES[index % len(CATEGORIES)]
    colour = list(COLOURS)[(index // len(CATEGORIES)) % len(COLOURS)]
    obj = make_object(category, rng, colour=colour)
    views = config.views_per_object
    elevation = rng.uniform(*config.elevation_deg, size=views)
    azimuth_start = float(rng.uniform(0, 360))
    cameras = orbit(views, elevation.tolist(), CAMERA_RADIUS, FOV_DEG, config.resolution, azimuth_start_deg=azimuth_start)
    rgb = render_sdf(obj.shape, cameras, obj.rgb, supersample=config.supersample).rgb_on_white  # (V, H, W, 3)
    images = (rgb * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()  # "v h w c -> v c h w"
    azimuth = (azimuth_start + np.arange(views) * 360.0 / views) % 360
    return dict(images=images, captions=obj.captions, category=category, colour=colour,
                elevation=elevation, azimuth=azimuth)


def render_views(config: RenderConfig, progress: bool = True) -> RenderedViews:
    """Render (or load from the cache) every view of ``config``; one process, to share the machine."""
    key = hashlib.sha1(json.dumps(asdict(config) | {"cache_dir": None}, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(config.cache_dir) / f"views-{key}.pt"
    if path.is_file():
        return RenderedViews(**torch.load(path, weights_only=True))
    start, parts = time.perf_counter(), []
    for index in tqdm(range(config.num_objects), desc="rendering views", unit="obj", disable=not progress):
        parts.append(render_object_views(config, index))
    views = config.views_per_object
    data = dict(
        images=torch.cat([part["images"] for part in parts]),
        captions=[part["captions"] for part in parts for _ in range(views)],
        category=[part["category"] for part in parts for _ in range(views)],
        colour=[part["colour"] for part in parts for _ in range(views)],
        elevation_deg=torch.from_numpy(np.concatenate([part["elevation"] for part in parts])).float(),
        azimuth_deg=torch.from_numpy(np.concatenate([part["azimuth"] for part in parts])).float(),
        seconds=time.perf_counter() - start,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # atomic: an interrupted render leaves no half-written cache
    return RenderedViews(**data)
