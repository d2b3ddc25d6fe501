"""Figures for a stage-1 NeuS model card: the loss curve and held-out renders (issue 18).

    python experiments/neus_model_card.py --neus models/tiny-neus --metrics outputs/neus_pretrain/logs/version_0/metrics.csv \
        --data outputs/probe/chairs --out models/tiny-neus

Writes OUT/loss.png (train/total, mean over 50-step windows), OUT/loss.csv (the same curve) and OUT/renders.png:
per held-out object, its held-out ground-truth views, then the field's renders there from the other 8 views
clean, then from those views at t = T/2.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import torch

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.formats import folder_backbone, read_pretrained_neus
from tunemv.data.batch import collate_multiview
from tunemv.data.dataset import MultiviewDataset
from tunemv.tinyif.model_card import image_grid, plot_curve


def loss_curve(metrics: Path, out: Path, last_step: int, window: int = 50, title: str = "stage-1 loss") -> None:
    """Only steps the shipped weights saw: a run may have logged past the exported checkpoint."""
    with open(metrics, newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("train/total") and int(r["step"]) < last_step]
    buckets: dict[int, list[float]] = {}
    for row in rows:
        buckets.setdefault(int(row["step"]) // window, []).append(float(row["train/total"]))
    steps = [(k + 1) * window for k in sorted(buckets)]
    values = [statistics.fmean(buckets[k]) for k in sorted(buckets)]
    plot_curve(steps, values, out / "loss.png", title=f"{title} (mean per {window} steps)")
    with open(out / "loss.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "loss"])
        writer.writerows(zip(steps, values, strict=True))


@torch.no_grad()
def renders(neus, backbone: Backbone, data: Path, out: Path, objects: int = 4) -> None:
    dataset = MultiviewDataset(data, "all", 8, 8, view_selection="uniform", random_caption=False)
    images, labels = [], []
    half = backbone.noise_scheduler.config.num_train_timesteps // 2
    for index in range(min(objects, len(dataset))):
        item = dataset[index]
        batch = collate_multiview([item])
        x0 = backbone.encode_views(batch.views.images).float()
        truth = (item.supervision.images + 1) / 2
        rows = [truth]
        for step in (0, half):
            t = torch.full(x0.shape[:2], step, dtype=torch.long)
            generator = torch.Generator().manual_seed(index)
            x_t = x0 if step == 0 else backbone.noise_scheduler.add_noise(
                x0[0], torch.randn(x0[0].shape, generator=generator), t[0])[None]
            field = neus.fields(x_t, t, batch.views.cameras)[0]
            image = neus.render(field, item.supervision.cameras, *x0.shape[-2:]).image
            rows.append(((backbone.decode_views(image[None])[0] + 1) / 2).clamp(0, 1))
        name = dataset.records[index].object_id
        labels += [f"{name}: held-out views", "renders from 8 clean views", f"renders from 8 views at t={half}"]
        images += rows
    image_grid(torch.cat(images), labels, out / "renders.png", columns=8, scale=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neus", required=True)
    parser.add_argument("--metrics", required=True, help="the stage-1 run's CSVLogger metrics.csv")
    parser.add_argument("--data", required=True, help="held-out procedural objects with 16 views")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    info = json.loads((Path(args.neus) / "neus.json").read_text())
    loss_curve(Path(args.metrics), out, int(info["global_step"]))
    neus = read_pretrained_neus(args.neus).eval()
    backbone = Backbone.from_pretrained(folder_backbone(args.neus))
    renders(neus, backbone, Path(args.data), out)


if __name__ == "__main__":
    main()
