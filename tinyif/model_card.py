"""Model-card figures drawn with PIL (matplotlib is not a dependency): a loss curve and a labelled image grid."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image, ImageDraw


def read_loss_csv(path: str | Path) -> tuple[list[int], list[float]]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [int(row["step"]) for row in rows], [float(row["loss"]) for row in rows]


def plot_curve(steps: Sequence[int], values: Sequence[float], path: str | Path, title: str = "training loss",
               size: tuple[int, int] = (640, 360), log_y: bool = True) -> Path:
    """A line plot with labelled min/max ticks; ``log_y`` plots log10 of the values (losses span decades)."""
    if len(steps) < 2:
        raise ValueError("plot_curve needs at least two points")
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    ys = [math.log10(max(v, 1e-12)) for v in values] if log_y else list(values)
    x_lo, x_hi, y_lo, y_hi = min(steps), max(steps), min(ys), max(ys)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / max(x_hi - x_lo, 1) * (width - left - right),
                top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):  # horizontal grid lines with value labels
        y = y_lo + fraction * (y_hi - y_lo)
        _, py = to_px(x_lo, y)
        draw.line([left, py, width - right, py], fill=(225, 225, 225))
        draw.text((4, py - 6), f"{10 ** y if log_y else y:.4g}", fill="black")
    draw.line([to_px(x, y) for x, y in zip(steps, ys, strict=True)], fill=(30, 80, 200), width=2)
    draw.text((left, height - bottom + 8), f"step {x_lo}", fill="black")
    draw.text((width - right - 90, height - bottom + 8), f"step {x_hi}", fill="black")
    draw.text((left, 8), title + (" (log scale)" if log_y else ""), fill="black")
    image.save(path)
    return Path(path)


def image_grid(images: torch.Tensor, labels: Sequence[str], path: str | Path, columns: int,
               scale: int = 3, label_height: int = 14) -> Path:
    """(N, 3, H, W) images in [0, 1] -> a PNG grid; ``labels`` (one per row) are written above each row."""
    rows = math.ceil(len(images) / columns)
    if len(labels) != rows:
        raise ValueError(f"need one label per row ({rows}), got {len(labels)}")
    pad = columns * rows - len(images)
    images = torch.cat([images, images.new_ones(pad, *images.shape[1:])]) if pad else images
    pixels = (rearrange(images, "(r c) ch h w -> r h (c w) ch", c=columns).clamp(0, 1) * 255).byte().numpy()
    cell_h, strip_w = images.shape[-2] * scale, images.shape[-1] * columns * scale
    canvas = Image.new("RGB", (strip_w, rows * (cell_h + label_height)), "white")
    draw = ImageDraw.Draw(canvas)
    for row in range(rows):
        y = row * (cell_h + label_height)
        draw.text((2, y + 1), labels[row], fill="black")
        strip = Image.fromarray(pixels[row]).resize((strip_w, cell_h), Image.NEAREST)
        canvas.paste(strip, (0, y + label_height))
    canvas.save(path)
    return Path(path)


def write_backbone_figures(out_dir: str | Path, prompts: Sequence[str], steps: int = 50,
                           guidance_scale: float = 4.0) -> None:
    """loss.png from loss.csv, and samples.png (4 seeds per prompt) from the backbone saved in ``out_dir``."""
    from tunemv.adapters.backbones import Backbone
    from tunemv.tinyif.sampling import sample_images

    out_dir = Path(out_dir)
    steps_logged, values = read_loss_csv(out_dir / "loss.csv")
    if len(steps_logged) >= 2:
        plot_curve(steps_logged, values, out_dir / "loss.png", title="tiny-if: unweighted eps-MSE, mean per logged window")
    if prompts:
        backbone = Backbone.from_pretrained(str(out_dir.resolve()))
        generator = torch.Generator().manual_seed(0)
        images = sample_images(backbone, [prompt for prompt in prompts for _ in range(4)], steps, guidance_scale, generator)
        image_grid(images, list(prompts), out_dir / "samples.png", columns=4)
