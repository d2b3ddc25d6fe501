"""Mean ± standard deviation over seeds of what ``experiments/camera_following.py`` wrote, per category.

    python experiments/camera_seeds.py pose=outputs/camera/eval/pose,outputs/camera/eval/pose-seed1 \
        none=outputs/camera/eval/none,outputs/camera/eval/none-seed1

Each DIR holds a ``summary.json`` (one seed). ``±90`` is the mean of the +90° and −90° figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

IMAGE_KEYS = ("camera_retrieval", "novel_mask_iou@±90", "copy_novel_mask_iou@±90", "novel_mask_iou@180",
              "copy_novel_mask_iou@180", "novel_psnr@±90", "copy_novel_psnr@±90", "novel_psnr@180",
              "copy_novel_psnr@180", "mesh_volume_iou", "mesh_chamfer", "hull_iou")
TEXT_KEYS = ("pose_absolute", "pose_relative", "camera_retrieval", "hull_iou", "prompt_category")


def figure(summary: dict, key: str) -> float | None:
    if "±90" in key:
        plus, minus = summary.get(key.replace("±90", "+90")), summary.get(key.replace("±90", "-90"))
        return None if plus is None or minus is None else (plus + minus) / 2
    return summary.get(key)


def over_seeds(runs: list[dict], mode: str, category: str, keys: tuple[str, ...]) -> dict[str, str]:
    row = {}
    for key in keys:
        values = [v for run in runs if (v := figure(run[mode]["summary"][category], key)) is not None]
        row[key] = f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "—"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", metavar="NAME=DIR,DIR,...")
    parser.add_argument("--categories", nargs="+", default=["chair", "mug"])
    args = parser.parse_args()
    for variant in args.variants:
        name, dirs = variant.split("=", 1)
        runs = [json.loads((Path(d) / "summary.json").read_text()) for d in dirs.split(",")]
        for category in args.categories:
            print(name, category, f"({len(runs)} seeds)")
            print("  image:", over_seeds(runs, "image", category, IMAGE_KEYS))
            print("  text: ", over_seeds(runs, "text", category, TEXT_KEYS))


if __name__ == "__main__":
    main()
