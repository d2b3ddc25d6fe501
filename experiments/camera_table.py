"""Markdown tables of ``experiments/camera_following.py`` results, one row per variant.

    python experiments/camera_table.py none=outputs/camera/eval/none plucker=outputs/camera/eval/plucker

Image→multiview: camera retrieval, novel-view mask IoU and PSNR at ±90° and 180° (each next to the copy
baseline's), image→mesh volume IoU and Chamfer, the field's agreement with the views. Text→multiview: pose
accuracy (absolute, relative), hull IoU, prompt fidelity. Means over the objects of each category.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

IMAGE = [("retrieval", "camera_retrieval"), ("copy", "copy_camera_retrieval"),
         ("IoU ±90", ("novel_mask_iou@+90", "novel_mask_iou@-90")), ("copy", ("copy_novel_mask_iou@+90", "copy_novel_mask_iou@-90")),
         ("IoU 180", "novel_mask_iou@180"), ("copy", "copy_novel_mask_iou@180"),
         ("PSNR ±90", ("novel_psnr@+90", "novel_psnr@-90")), ("copy", ("copy_novel_psnr@+90", "copy_novel_psnr@-90")),
         ("PSNR 180", "novel_psnr@180"), ("copy", "copy_novel_psnr@180"),
         ("hull IoU", "hull_iou"), ("mesh IoU", "mesh_volume_iou"), ("Chamfer", "mesh_chamfer"),
         ("field IoU", "field_mask_iou"), ("colour gap", "field_colour_gap")]
TEXT = [("pose abs", "pose_absolute"), ("pose rel", "pose_relative"), ("retrieval", "camera_retrieval"),
        ("hull IoU", "hull_iou"), ("category", "prompt_category"), ("colour", "prompt_colour"),
        ("field IoU", "field_mask_iou"), ("colour gap", "field_colour_gap")]


def value(summary: dict, key) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    found = [summary[k] for k in keys if isinstance(summary.get(k), int | float)]
    return f"{statistics.fmean(found):.3f}" if found else "–"


def table(variants: list[tuple[str, dict]], mode: str, columns) -> str:
    categories = [c for c in variants[0][1][mode]["summary"] if c != "all"] + ["all"]
    lines = [f"| {mode} | category | " + " | ".join(label for label, _ in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for category in categories:
        for label, result in variants:
            summary = result.get(mode, {}).get("summary", {}).get(category)
            if summary is None:
                continue
            cells = " | ".join(value(summary, key) for _, key in columns)
            lines.append(f"| {label} | {category} ({summary['objects']}) | {cells} |")
    return "\n".join(lines)


def main() -> None:
    variants = [(item.split("=", 1)[0], json.loads((Path(item.split("=", 1)[1]) / "summary.json").read_text()))
                for item in sys.argv[1:]]
    for mode, columns in (("image", IMAGE), ("text", TEXT)):
        if any(mode in result for _, result in variants):
            print(table([v for v in variants if mode in v[1]], mode, columns), end="\n\n")


if __name__ == "__main__":
    main()
