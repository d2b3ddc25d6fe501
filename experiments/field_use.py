"""Does the adapter read its field? Denoising error by mode on held-out objects (issue 18's diagnosis).

    python experiments/field_use.py --adapter models/demo-adapter --data outputs/demo/chairs --objects 10

For each held-out object, V views spaced in azimuth are noised to one shared t, and the x̂0 error of each mode
is measured against the clean views: ``2d`` (the frozen backbone), ``independent`` (the branch without NeuS)
and ``mv`` (the branch on the field's renders g_i). The same with view 0 clean (image→multiview), scored on the
other views. If the branch used the field, ``mv`` would beat ``independent`` most where the views carry
geometry the noise hides, i.e. with a clean reference at high t. Also the error of g_i itself (the field's render).
"""

from __future__ import annotations

import argparse
import json

import torch
from einops import rearrange

from tunemv.data.dataset import MultiviewDataset
from tunemv.geometry import Cameras
from tunemv.sampling.algebra import epsilon_to_sample, to_epsilon
from tunemv.sampling.pipeline import MultiviewPipeline


def masked_mse(estimate: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> float:
    """(B, V, C, h, w) estimate against the clean views, averaged over the (B, V) views the mask keeps."""
    per_view = (estimate.clamp(-1, 1) - x0).square().mean(dim=(2, 3, 4))
    return float((per_view * mask).sum() / mask.sum())


def x0_estimate(prediction, x_t, t, backbone) -> torch.Tensor:
    """x̂0 of the backbone's own parameterisation (ε, v or x0), through the sampling algebra."""
    alphas = backbone.noise_scheduler.alphas_cumprod
    epsilon = to_epsilon(prediction, x_t, t, alphas, backbone.prediction_type)
    return epsilon_to_sample(epsilon, x_t, t, alphas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[250, 500, 750, 900])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = MultiviewPipeline.from_pretrained(args.adapter)
    backbone, denoiser = pipe.backbone, pipe.denoiser.eval()
    scheduler = backbone.noise_scheduler
    data = MultiviewDataset(args.data, "val", num_views=args.views, num_supervision_views=0,
                            view_selection="uniform", random_caption=False)
    rows = []
    for index in range(min(args.objects, len(data))):
        item = data[index]
        x0 = backbone.encode_views(item["images"][None]).float()  # (1, V, C, h, w)
        cameras = Cameras.stack([item["cameras"].rescale(*x0.shape[-2:])])  # [1, V]
        text = backbone.encode_prompt([item["caption"]])
        for t_value in args.timesteps:
            for reference in (False, True):
                t = torch.full((1, args.views), t_value)
                noise = torch.randn_like(x0)
                flat = rearrange(x0, "b v c h w -> (b v) c h w")
                x_t = scheduler.add_noise(flat, rearrange(noise, "b v c h w -> (b v) c h w"),
                                          rearrange(t, "b v -> (b v)")).unflatten(0, (1, args.views))
                mask = torch.ones(1, args.views)
                if reference:
                    x_t[:, 0], t[:, 0], mask[:, 0] = x0[:, 0], 0, 0
                row = {"object": item["object_id"], "t": t_value, "reference": reference}
                with torch.no_grad():
                    for mode in ("2d", "independent", "mv"):
                        out = denoiser(x_t, t, cameras, text.hidden_states.float(), mode=mode,
                                       added_cond_kwargs=text.added_cond_kwargs)
                        row[mode] = masked_mse(x0_estimate(out.prediction, x_t, t, backbone), x0, mask)
                        if mode == "mv":
                            row["field_render"] = masked_mse(out.condition, x0, mask)
                rows.append(row)
    summary = {}
    for t_value in args.timesteps:
        for reference in (False, True):
            picked = [r for r in rows if r["t"] == t_value and r["reference"] == reference]
            key = f"t={t_value}" + (", view 0 clean" if reference else "")
            summary[key] = {m: sum(r[m] for r in picked) / len(picked) for m in ("2d", "independent", "mv", "field_render")}
            print(key, " ".join(f"{m} {v:.4f}" for m, v in summary[key].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"adapter": args.adapter, "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
