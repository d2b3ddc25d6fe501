"""Sample diversity of a model folder: the mode-collapse check of GECO Fig. 6 (issue 20).

    python experiments/diversity.py --model teacher=models/demo-adapter --model one-step=models/demo-generator \
        --out docs/distillation/diversity.json

For each prompt, each model samples ``--seeds`` objects (seeds 0..N−1, the same noise for every model through
the pipeline's seeding) with its folder's own sampler; the figure is the mean over all pairs of objects of the
RMS distance between their views (RGB in [0, 1], all views of an object together), raw and after 4×4
average pooling (which ignores pixel speckle). A collapsed generator gives every seed the same object: a
distance near 0. Models run one after another in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from tunemv.sampling.pipeline import MultiviewPipeline

PROMPTS = ("a red chair", "a blue mug")


def mean_pairwise_distance(views: torch.Tensor, pool: int = 1) -> float:
    """(N, V, 3, H, W) in [0, 1] -> mean over pairs of RMS(a − b), after ``pool``×``pool`` average pooling.

    Pooling (4: 32 px views become 8 px) keeps shape and colour and removes pixel-level speckle, which a
    noisy one-step sample has and which would otherwise count as diversity."""
    if pool > 1:
        views = F.avg_pool2d(views.flatten(0, 1), pool).unflatten(0, views.shape[:2])
    return statistics.fmean(float((views[i] - views[j]).square().mean().sqrt())
                            for i, j in itertools.combinations(range(len(views)), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--prompt", action="append", default=None)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25, help="multi-step samplers' steps (default: 25)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="multi-step samplers' CFG (default: 4)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    prompts = args.prompt or list(PROMPTS)
    results: dict = {"settings": vars(args) | {"prompt": prompts}, "models": {}}
    for spec in args.model:
        name, folder = spec.split("=", 1)
        pipe = MultiviewPipeline.from_pretrained(folder)
        one_step = pipe.sampling_defaults["sampler"] == "one-step"
        options = {} if one_step else {"steps": args.steps, "guidance_scale": args.guidance_scale}
        per_prompt = {}
        for prompt in prompts:
            views = torch.cat([pipe(prompt, num_views=args.views, seed=seed, progress=False, **options).pixels
                               for seed in range(args.seeds)])
            per_prompt[prompt] = {"rms": mean_pairwise_distance(views), "rms_pooled4": mean_pairwise_distance(views, 4)}
        results["models"][name] = {"folder": folder, "sampler": pipe.sampling_defaults["sampler"] if one_step else "mv",
                                   "per_prompt": per_prompt,
                                   "mean": {key: statistics.fmean(v[key] for v in per_prompt.values())
                                            for key in ("rms", "rms_pooled4")}}
        print(json.dumps({name: results["models"][name]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
