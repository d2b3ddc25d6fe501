"""Side-by-side views of models for the same prompts and seed: the teacher and its distilled generators.

    python experiments/generator_figure.py --model "teacher (25 steps)=models/demo-adapter" \
        --model "one-step=models/demo-generator" --out docs/images/one-step-generator.png

Per prompt, one row per model: its views on an 8-view orbit, then a row of the NeuS field fused from the
last model's views, rendered at the same cameras (what its turntable and mesh come from). Each model samples
with its folder's own sampler ("mv" at 25 DDPM steps and CFG 4 for an adapter, "one-step" for a generator).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tunemv.sampling.object_folders import grid_image, upscale_for_preview
from tunemv.sampling.pipeline import MultiviewPipeline

PROMPTS = ("a red chair", "a blue mug", "a green vase")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--prompt", action="append", default=None)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    prompts = args.prompt or list(PROMPTS)
    rows: dict[str, list[torch.Tensor]] = {prompt: [] for prompt in prompts}
    for index, spec in enumerate(args.model):
        label, folder = spec.split("=", 1)
        pipe = MultiviewPipeline.from_pretrained(folder)
        multi_step = pipe.sampling_defaults["sampler"] != "one-step"
        options = {"steps": 25, "guidance_scale": 4.0} if multi_step else {}
        for prompt in prompts:
            out = pipe(prompt, num_views=args.views, seed=args.seed, progress=False, **options)
            rows[prompt].append(out.pixels[0])
            if index == len(args.model) - 1:
                rows[prompt].append(out.field.render(out.field.cameras[0])[0])
        print(f"{label}: {folder}", flush=True)
    grid = torch.stack([row for prompt in prompts for row in rows[prompt]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid_image(upscale_for_preview(grid, 64)).save(args.out)
    print(f"rows per prompt: {', '.join(s.split('=', 1)[0] for s in args.model)}, field of the last; {args.out}")


if __name__ == "__main__":
    main()
