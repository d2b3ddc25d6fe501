"""Probe a latent SparseNeuS on held-out procedural objects against their analytic geometry (issue 18).

    python experiments/neus_probe.py --neus models/tiny-neus --data outputs/probe/chairs --out probe.json
    python experiments/neus_probe.py --neus sphere --backbone ./models/tiny-if ...   # the initial field

Per object: feed ``--views`` of its views (every other one of 16), clean or at ``--timesteps``, and compare the
field's occupancy (SDF < 0) with the analytic object's on a ``--grid``^3 grid (volume IoU), next to the
initial sphere's and the visual hull carved from the same ground-truth masks. Renders at the other views give
PSNR and mask IoU. ``--neus`` is a pretrained NeuS folder, an adapter folder, or ``sphere`` (a fresh field).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.formats import folder_backbone, read_pretrained_neus
from tunemv.data.batch import collate_multiview
from tunemv.data.dataset import MultiviewDataset
from tunemv.data.generate import procedural_shape
from tunemv.evaluation.hull import carve_visual_hull
from tunemv.evaluation.mesh_accuracy import volume_iou
from tunemv.neus.latent_sparseneus import LatentSparseNeuS


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@torch.no_grad()
def probe(neus: LatentSparseNeuS, backbone: Backbone, root: Path, views: int, grid: int, timesteps: list[int],
          seed: int = 0) -> dict:
    dataset = MultiviewDataset(root, "all", views, 16 - views, view_selection="uniform", random_caption=False)
    sphere = lambda p: p.norm(dim=-1) < neus.config.init_radius  # noqa: E731 - the initial field
    rows = []
    for index, record in enumerate(dataset.records):
        item = dataset[index]
        batch = collate_multiview([item])
        shape = procedural_shape(record.directory)
        truth = lambda p, shape=shape: shape(p) < 0  # noqa: E731
        hull = carve_visual_hull(item.views.masks, item.views.cameras, grid)
        row = {"object": record.object_id, "sphere_iou": volume_iou(sphere, truth, grid),
               "hull_iou": volume_iou(hull, truth, grid)}
        x0 = backbone.encode_views(batch.views.images).float()
        for step in timesteps:
            generator = torch.Generator().manual_seed(seed + index)
            t = torch.full(x0.shape[:2], step, dtype=torch.long)
            x_t = x0 if step == 0 else backbone.noise_scheduler.add_noise(
                x0[0], torch.randn(x0[0].shape, generator=generator), t[0])[None]
            field = neus.fields(x_t, t, batch.views.cameras)[0]
            occupied = lambda p, field=field: torch.cat([field.sdf(c) for c in p.split(65536)]) < 0  # noqa: E731
            render = neus.render(field, item.supervision.cameras, *x0.shape[-2:])
            image = backbone.decode_views(render.image[None])[0].clamp(-1, 1)
            psnr = 10 * torch.log10(4.0 / (image - item.supervision.images).square().mean())
            masks, predicted = item.supervision.masks >= 0.5, render.opacity >= 0.5
            row[f"t{step}"] = {"volume_iou": volume_iou(occupied, truth, grid), "psnr": float(psnr),
                               "mask_iou": mask_iou(predicted, masks)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str, sub: str | None = None) -> float:
        values = [r[key] if sub is None else r[key][sub] for r in rows]
        return statistics.fmean(values)

    summary = {"objects": len(rows), "views": views, "grid": grid, "sphere_iou": mean("sphere_iou"),
               "hull_iou": mean("hull_iou")}
    for step in timesteps:
        summary[f"t{step}"] = {k: mean(f"t{step}", k) for k in ("volume_iou", "psnr", "mask_iou")}
    return {"summary": summary, "objects": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neus", required=True, help="pretrained NeuS folder, adapter folder, or 'sphere'")
    parser.add_argument("--backbone", default=None, help="default: the one the NeuS folder names")
    parser.add_argument("--data", required=True, help="procedural objects with 16 views (attributes.json)")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--timesteps", default="0,500", help="comma-separated input timesteps")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.neus == "sphere":
        neus = LatentSparseNeuS(in_channels=3, background=1.0, num_coarse=16, num_importance=16, upsample_steps=1)
        backbone_name = args.backbone
    else:
        neus = read_pretrained_neus(args.neus)
        backbone_name = args.backbone or folder_backbone(args.neus)
    backbone = Backbone.from_pretrained(backbone_name)
    result = probe(neus.eval(), backbone, Path(args.data), args.views, args.grid,
                   [int(t) for t in args.timesteps.split(",")])
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
