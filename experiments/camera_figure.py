"""A figure of views against their cameras: per object, the ground truth at the generated views' cameras, then
each variant's views (what ``experiments/camera_following.py`` wrote), one row each.

    python experiments/camera_figure.py --truth outputs/camera/heldout --mode image \
        --variant demo-adapter=outputs/camera/eval/demo-adapter-mv --variant plucker=outputs/camera/eval/plucker \
        --objects 00000_chair 00001_mug --out docs/images/camera-following.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tunemv.data.format import read_object
from tunemv.evaluation.fidelity import match_views
from tunemv.evaluation.views import load_views
from tunemv.sampling.object_folders import to_uint8, upscale_for_preview

LABEL_WIDTH = 120


def row_image(images: torch.Tensor, label: str, size: int) -> Image.Image:
    """(V, 3, H, W) in [0, 1] -> one labelled strip."""
    strip = np.concatenate(list(to_uint8(upscale_for_preview(images, size))), axis=1)
    canvas = Image.new("RGB", (LABEL_WIDTH + strip.shape[1], strip.shape[0]), "white")
    canvas.paste(Image.fromarray(strip), (LABEL_WIDTH, 0))
    ImageDraw.Draw(canvas).text((4, strip.shape[0] // 2 - 6), label, fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--mode", default="image", choices=["image", "text"])
    parser.add_argument("--variant", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--objects", nargs="+", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    variants = [item.split("=", 1) for item in args.variant]
    rows = []
    for name in args.objects:
        first = Path(variants[0][1]) / args.mode / name
        views = load_views(first)
        truth = load_views(Path(args.truth) / name)
        index = match_views(views, truth, Path(args.truth) / name / "cameras.json")
        rows.append(row_image(truth.images[index], f"{name}\nground truth", args.size))
        for label, folder in variants:
            rows.append(row_image(load_views(Path(folder) / args.mode / name).images, label, args.size))
        read_object(first)  # a broken folder fails here, with its name
    width = max(row.width for row in rows)
    figure = Image.new("RGB", (width, sum(row.height for row in rows)), "white")
    top = 0
    for row in rows:
        figure.paste(row, (0, top))
        top += row.height
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
