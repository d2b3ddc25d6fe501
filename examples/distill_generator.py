"""Distil a fitted adapter into a one-step generator (GECO), then sample it in one step.

    python examples/distill_generator.py --teacher models/demo-adapter --objects 48 --steps 600

The teacher samples ``--objects`` text prompts once (cached under OUT/pseudo-ground-truth); stage I (VSD) runs
for the first half of ``--steps`` and stage II (3D-consistent distillation) for the rest.
"""

import argparse
import json
from pathlib import Path

from tunemv.sampling import MultiviewPipeline
from tunemv.training import export_adapter, run_lightning

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", default="models/demo-adapter")
parser.add_argument("--out", default="outputs/my-generator")
parser.add_argument("--objects", type=int, default=48)
parser.add_argument("--views", type=int, default=4)
parser.add_argument("--teacher-steps", type=int, default=25)
parser.add_argument("--steps", type=int, default=600)
args = parser.parse_args()

out = Path(args.out)
run_lightning(["fit", "--config", "configs/distill_demo.yaml", "--model.teacher", args.teacher,
               "--model.vsd.steps", str(args.steps // 2), "--data.init_args.teacher", args.teacher,
               "--data.init_args.cache_dir", str(out / "pseudo-ground-truth"),
               "--data.init_args.num_objects", str(args.objects), "--data.init_args.num_reference_objects", "0",
               "--data.init_args.num_views", str(args.views), "--data.init_args.steps", str(args.teacher_steps),
               "--trainer.max_steps", str(args.steps), "--trainer.default_root_dir", str(out),
               "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false"],
              system="distill")
generator = export_adapter(out / "checkpoints" / "last.ckpt", out / "generator", overwrite=True)
pipe = MultiviewPipeline.from_pretrained(generator)  # samples "one-step" by default
views = pipe("a red chair", num_views=args.views, seed=0).images[0]
print(json.dumps({"generator": str(generator), "views": len(views), "sampler": pipe.sampling_defaults["sampler"]}))
