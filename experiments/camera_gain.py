"""Does the adapter use the camera where the pose is settled? A teacher-forced probe, no sampling.

    python experiments/camera_gain.py outputs/camera/adapters/none outputs/camera/adapters/plucker \
        --data outputs/camera/heldout --categories chair mug --objects 6

Held-out objects' ground-truth views (8 of the 16, at their own cameras) are noised at each t, and the denoised
guess x̂0 = (x_t − √(1−ᾱ) ε̂) / √ᾱ is scored (mean squared error against the clean views) for:

- ``2d``: the frozen backbone;
- ``true``: the adapter in mode mv at the views' cameras;
- ``turned``: the same, with every camera turned 180° (``--turn``) about the vertical axis. The relative geometry is the
  same, so the field and the epipolar attention see the same problem; only an absolute camera signal
  (``camera_conditioning``) can tell the two apart.

``gain`` = 1 − true / turned: the share of the x̂0 error that knowing the camera removes. At t ≥ 700 the
noisy views barely show the pose, so a gain near 0 there means sampling cannot follow the camera. Noise is
drawn from ``--seed`` per object and t, the same for every adapter.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tunemv.adapters.text import Text
from tunemv.data.format import list_objects, load_image, read_object
from tunemv.geometry.cameras import Cameras
from tunemv.sampling.algebra import epsilon_to_sample
from tunemv.sampling.pipeline import MultiviewPipeline
from tunemv.training.noising import add_noise


def turned(cameras: Cameras, degrees: float = 180.0) -> Cameras:
    """Every camera rotated about the world's vertical (+z) axis through the object's centre."""
    angle = math.radians(degrees)
    rotation = torch.eye(4, dtype=cameras.c2w.dtype)
    rotation[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return Cameras(cameras.K, rotation @ cameras.c2w, cameras.width, cameras.height)


def load_views(folder: Path, views: int, size: int) -> tuple[torch.Tensor, Cameras, str]:
    """(1, V, 3, size, size) in [-1, 1], their cameras [1, V] and the caption."""
    record = read_object(folder)
    index = torch.arange(views) * (record.num_views // views)
    images = torch.stack([load_image(record.image_paths[int(i)])[0] for i in index])
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="area") * 2 - 1
    cameras = record.cameras[index].rescale(size, size)
    return images[None], Cameras.stack([cameras]), record.captions[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--data", type=Path, default=Path("outputs/camera/heldout"))
    parser.add_argument("--categories", nargs="+", default=["chair", "mug"])
    parser.add_argument("--objects", type=int, default=6, help="per category")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[900, 800, 700, 500])
    parser.add_argument("--turn", type=float, default=180.0, help="degrees the 'turned' cameras are rotated by")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the table here too")
    args = parser.parse_args()
    names = list_objects(args.data, "all")
    folders = [args.data / n for c in args.categories for n in [n for n in names if n.endswith(f"_{c}")][: args.objects]]
    results = {}
    for adapter in args.adapters:
        pipe = MultiviewPipeline.from_pretrained(adapter)
        size = pipe.backbone.image_resolution
        scheduler = pipe.backbone.noise_scheduler
        rows = {t: {"2d": [], "true": [], "turned": []} for t in args.timesteps}
        for number, folder in enumerate(folders):
            images, cameras, caption = load_views(folder, args.views, size)
            x0 = pipe.backbone.encode_views(images).float()
            text = Text(pipe.backbone.encode_prompt([caption]).hidden_states.float())
            for t in args.timesteps:
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed * 7919 + number * 31 + t))
                timesteps = torch.full(x0.shape[:2], t)
                x_t = add_noise(scheduler, x0, noise, timesteps)
                with torch.no_grad():
                    first = pipe.denoiser.predict(x_t, timesteps, cameras, text, modes=("mv", "2d")).cond
                    second = pipe.denoiser.predict(x_t, timesteps, turned(cameras, args.turn), text, modes=("mv",)).cond
                for key, eps in (("2d", first["2d"]), ("true", first["mv"]), ("turned", second["mv"])):
                    x0_hat = epsilon_to_sample(eps, x_t, timesteps, scheduler.alphas_cumprod)
                    rows[t][key].append(float((x0_hat.clamp(-1, 1) - x0).square().mean()))
        table = {}
        for t, row in rows.items():
            mean = {k: sum(v) / len(v) for k, v in row.items()}
            mean["gain"] = 1 - mean["true"] / mean["turned"]
            table[str(t)] = mean
            print(f"{adapter} t={t}: x0 error 2d {mean['2d']:.4f}, true {mean['true']:.4f}, "
                  f"turned {mean['turned']:.4f}, camera gain {mean['gain']:+.3f}", flush=True)
        results[adapter] = table
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
