"""One-step generator against its multi-step teacher: seconds per object for 8 views plus the fused field.

    python benchmarks/one_step_generator.py --generator models/demo-generator --teacher models/demo-adapter

Both run in this one process, alternating, on the same prompts, seeds and cameras: the teacher with its own
sampler ("mv", DDPM 25 steps, CFG 4, as docs/results.md samples it), the generator with "one-step" (its
folder's defaults). "Views" is the pipeline call (noise to decoded RGB views); "field" is the NeuS field
fused from those views (``neus.fields``: what every turntable and mesh is rendered from); mesh extraction
(marching cubes at ``--mesh-resolution``) is timed apart, since it costs the same for both. Medians over
``--repeats`` objects after one warm-up call each. Targets (issue 20): ≥ 15× faster, ≤ 1 s for the views.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from tunemv.sampling.pipeline import MultiviewPipeline

PROMPTS = ("a red chair", "a blue mug", "a green vase", "a yellow lamp")


def timed(pipe: MultiviewPipeline, prompt: str, seed: int, views: int, options: dict, mesh_resolution: int
          ) -> dict[str, float]:
    start = time.perf_counter()
    out = pipe(prompt, num_views=views, seed=seed, progress=False, **options)
    after_views = time.perf_counter()
    field = out.field
    zeros = torch.zeros(field.latents.shape[:2], dtype=torch.long)
    with torch.no_grad():
        field.neus.fields(field.latents.float(), zeros, field.cameras)
    after_field = time.perf_counter()
    field.mesh(0, resolution=mesh_resolution)
    end = time.perf_counter()
    return {"views": after_views - start, "field": after_field - after_views, "mesh": end - after_field}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="models/demo-generator")
    parser.add_argument("--teacher", default="models/demo-adapter")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="the teacher's CFG (default: 4)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--mesh-resolution", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as tunemv fit and sample on CPU
    load = os.getloadavg()[0]
    models = {"teacher": (MultiviewPipeline.from_pretrained(args.teacher),
                          {"sampler": "mv", "steps": args.steps, "guidance_scale": args.guidance_scale}),
              "one-step": (MultiviewPipeline.from_pretrained(args.generator), {})}
    for pipe, options in models.values():  # warm-up: first-call allocations and lazy imports
        timed(pipe, PROMPTS[0], 0, args.views, options, 32)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for index in range(args.repeats):
        prompt = PROMPTS[index % len(PROMPTS)]
        for name, (pipe, options) in models.items():
            times[name].append(timed(pipe, prompt, index, args.views, options, args.mesh_resolution))
    median = {name: {part: statistics.median(run[part] for run in runs) for part in ("views", "field", "mesh")}
              for name, runs in times.items()}
    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, load "
                         f"{load:.2f} at start", "views": args.views, "teacher_steps": args.steps,
              "repeats": args.repeats, "median_seconds": median,
              "speed-up, views + field": (median["teacher"]["views"] + median["teacher"]["field"])
              / (median["one-step"]["views"] + median["one-step"]["field"])}
    for name, parts in median.items():
        print(f"{name:>9}: views {parts['views']:.3f} s, field {parts['field']:.3f} s, "
              f"views + field {parts['views'] + parts['field']:.3f} s; mesh at {args.mesh_resolution}³ "
              f"{parts['mesh']:.3f} s")
    print(f"speed-up (views + field): {result['speed-up, views + field']:.1f}x  ({result['machine']})")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
