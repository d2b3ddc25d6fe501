"""Markdown tables of ``experiments/camera_following.py`` results, one row per variant.

    python experiments/camera_table.py none=outputs/camera/eval/none plucker=outputs/camera/eval/plucker
    python experiments/camera_table.py pose=outputs/camera/eval/pose,outputs/camera/eval/pose-seed1   # seeds

Image→multiview: camera retrieval, novel-view mask IoU and PSNR at ±90° and 180° (each next to the copy
baseline's), image→mesh volume IoU and Chamfer, the field's agreement with the views. Text→multiview: pose
accuracy (absolute, relative), hull IoU, prompt fidelity. Means over the objects of each category; a variant
given several folders (one per seed) shows the mean ± standard deviation over them.
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


def figure(summary: dict, key) -> float | None:
    """One figure of one seed; a tuple key (+90°, −90°) is the mean of those found."""
    keys = key if isinstance(key, tuple) else (key,)
    found = [summary[k] for k in keys if isinstance(summary.get(k), int | float)]
    return statistics.fmean(found) if found else None


def value(summaries: list[dict], key) -> str:
    found = [f for f in (figure(summary, key) for summary in summaries) if f is not None]
    if not found:
        return "–"
    spread = f" ± {statistics.pstdev(found):.3f}" if len(summaries) > 1 else ""
    return f"{statistics.fmean(found):.3f}{spread}"


def table(variants: list[tuple[str, list[dict]]], mode: str, columns) -> str:
    categories = [c for c in variants[0][1][0][mode]["summary"] if c != "all"] + ["all"]
    lines = [f"| {mode} | category | " + " | ".join(label for label, _ in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for category in categories:
        for label, seeds in variants:
            summaries = [s for r in seeds if (s := r.get(mode, {}).get("summary", {}).get(category)) is not None]
            if not summaries:
                continue
            cells = " | ".join(value(summaries, key) for _, key in columns)
            lines.append(f"| {label} | {category} ({summaries[0]['objects']}) | {cells} |")
    return "\n".join(lines)


def main() -> None:
    variants = [(name, [json.loads((Path(d) / "summary.json").read_text()) for d in dirs.split(",")])
                for name, dirs in (item.split("=", 1) for item in sys.argv[1:])]
    for mode, columns in (("image", IMAGE), ("text", TEXT)):
        present = [(name, [r for r in seeds if mode in r]) for name, seeds in variants]
        present = [(name, seeds) for name, seeds in present if seeds]
        if present:
            print(table(present, mode, columns), end="\n\n")


if __name__ == "__main__":
    main()
