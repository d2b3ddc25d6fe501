"""Do the generated views follow their cameras? Image→multiview and text→multiview on held-out procedural objects.

    python experiments/camera_following.py --adapter models/demo-adapter --data outputs/camera/objects \
        --split all --categories chair mug lamp table vase cone --objects 3 --out outputs/camera/eval/demo-adapter

Per held-out object (the val split, ``--objects`` of each category):
- **image→multiview** (Zero123 / SyncDreamer protocol): view 0 (azimuth 0, the object's front) is the clean
  reference, and ``--views`` views are generated at the ground truth's own cameras (views 0, 16/V, ... of the
  16-view orbit), so each generated view has an exact ground-truth image; the generated set is written under
  ``OUT/image/<object id>`` with ``mesh.ply`` and scored by ``tunemv evaluate --reference`` (novel-view mask
  IoU / PSNR / SSIM by azimuth offset, camera retrieval, the copy baseline, hull IoU, image→mesh accuracy);
- **text→multiview**: the object's caption, the same cameras, no reference: ``OUT/text/<object id>``, scored
  with ``--classifier`` (pose accuracy, prompt fidelity) and against the same ground truth (retrieval: the
  procedural categories all face +x, so a view's silhouette says which way the object faces);
- the fused field's renders at the views' cameras against the views (the turntable's mask IoU and mean colour).

``--sampler 2d`` gives the frozen backbone's row from the same folder; ``--sampler consistency
--independent-camera off`` measures consistency guidance whose ε_ind does not read the camera. Writes ``OUT/summary.json``: the mean
of every metric per mode and category.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from tunemv.data.format import list_objects, read_object
from tunemv.evaluation.evaluate import evaluate_dataset
from tunemv.evaluation.views import border_mask, silhouette_iou
from tunemv.sampling.object_folders import ObjectFolderOptions, write_object_folders
from tunemv.sampling.options import parse_option_strings
from tunemv.sampling.pipeline import MultiviewPipeline


def held_out(data: Path, split: str, categories: list[str], per_category: int) -> list[str]:
    names = list_objects(data, split)
    return [name for category in categories for name in [n for n in names if n.endswith(f"_{category}")][:per_category]]


def field_agreement(out) -> dict[str, float]:
    """The field fused from the views, rendered at their cameras: mask IoU and mean-colour gap (the turntable)."""
    views = out.pixels[0]
    renders = out.field.render(out.cameras[0])[0].cpu()
    renders = torch.nn.functional.interpolate(renders, size=views.shape[-2:], mode="area")
    masks = torch.stack([border_mask(view) for view in views.cpu()]).bool()
    colour = lambda images: torch.stack([img[:, m[0]].mean(1) if m.any() else img.new_zeros(3)  # noqa: E731
                                         for img, m in zip(images, masks, strict=True)])
    return {"field_mask_iou": silhouette_iou(out.field.silhouettes()[0, :, 0], views),
            "field_colour_gap": float((colour(renders) - colour(views.cpu())).abs().max(-1).values.mean())}


def sample_object(pipe, folder: Path, text: bool, args, options) -> tuple:
    record = read_object(folder)
    stride = len(record.cameras) // args.views
    cameras = record.cameras[torch.arange(args.views) * stride]
    caption = (folder / "caption.txt").read_text(encoding="utf-8").splitlines()[0].strip()
    reference = None if text else [str(folder / "images" / "000.png")]
    with torch.no_grad():
        out = pipe(caption, cameras=cameras, reference_images=reference, sampler=args.sampler,
                   sampler_options=options, steps=args.steps, guidance_scale=args.guidance_scale,
                   seed=args.seed, progress=False)
    return out, field_agreement(out)


def run_mode(pipe, data: Path, names: list[str], mode: str, args, options) -> dict:
    root = Path(args.out) / mode
    if root.exists():
        shutil.rmtree(root)
    agreement = {}
    for name in names:
        start = time.perf_counter()
        out, agreement[name] = sample_object(pipe, data / name, mode == "text", args, options)
        sampled = time.perf_counter() - start
        staging = root / ".staging"
        [written] = write_object_folders(out, staging, settings={"sampler": args.sampler, "steps": args.steps},
                                         options=ObjectFolderOptions(turntable_frames=0,
                                                                     mesh_resolution=args.mesh_resolution))
        written.rename(root / name)  # named as its ground truth, which evaluate matches by object id
        shutil.rmtree(staging)
        print(f"{mode} {name}: {agreement[name]} (sampled in {sampled:.0f} s, written in "
              f"{time.perf_counter() - start - sampled:.0f} s)", flush=True)
    start = time.perf_counter()
    report = evaluate_dataset(root, data, mask_source="border", classifier=args.classifier)
    print(f"{mode}: evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    report.write_json(root / "metrics.json")
    rows = {result.object_id: {**result.metrics, **agreement[result.object_id]} for result in report.objects}
    return rows


def summarise(rows: dict[str, dict]) -> dict[str, dict[str, float]]:
    by_category: dict[str, list[dict]] = defaultdict(list)
    for name, metrics in rows.items():
        by_category[name.split("_", 1)[1]].append(metrics)
        by_category["all"].append(metrics)
    summary = {}
    for category, items in by_category.items():
        keys = [k for k, v in items[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        summary[category] = {k: statistics.fmean(float(item[k]) for item in items
                                                 if isinstance(item.get(k), int | float)) for k in keys}
        summary[category]["objects"] = len(items)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--categories", nargs="+", default=["chair", "mug"])
    parser.add_argument("--objects", type=int, default=4, help="per category")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="mv")
    parser.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--mesh-resolution", type=int, default=64)
    parser.add_argument("--classifier", default="models/pose-classifier")
    parser.add_argument("--modes", nargs="+", default=["image", "text"], choices=["image", "text"])
    parser.add_argument("--independent-camera", choices=["on", "off"], default=None,
                        help="whether consistency guidance's independent prediction reads the camera "
                             "(default: as the adapter was trained)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    options = parse_option_strings(args.sampler, args.sampler_option)
    pipe = MultiviewPipeline.from_pretrained(args.adapter)
    if args.independent_camera is not None:
        pipe.denoiser.independent_camera = args.independent_camera == "on"
    data = Path(args.data)
    names = held_out(data, args.split, args.categories, args.objects)
    result = {"settings": vars(args), "objects": names}
    for mode in args.modes:
        rows = run_mode(pipe, data, names, mode, args, options)
        result[mode] = {"summary": summarise(rows), "objects": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    for mode in args.modes:
        print(mode, json.dumps(result[mode]["summary"], indent=1, default=str))


if __name__ == "__main__":
    main()
