"""Fit an adapter on your own renders: import NeRF-synthetic/Blender transforms.json folders, check them, fit.

    python examples/fit_on_your_renders.py --renders path/to/renders --out outputs/my-fit --steps 300

``--renders`` holds one folder per object, each with a transforms.json (or transforms_train.json) and its
images; ``--scale`` brings the objects inside the unit sphere (NeRF-synthetic scenes need about 0.66).
"""

import argparse
from pathlib import Path

from tunemv.data.check import check_dataset
from tunemv.data.importers import import_transforms
from tunemv.training import export_adapter, run_lightning

parser = argparse.ArgumentParser()
parser.add_argument("--renders", required=True)
parser.add_argument("--out", default="outputs/my-fit")
parser.add_argument("--backbone", default="./models/tiny-if", help="hub id or folder of a diffusers pipeline")
parser.add_argument("--caption", default=None, help="one caption for every object (default: folder names)")
parser.add_argument("--scale", type=float, default=1.0)
parser.add_argument("--resolution", type=int, default=32)
parser.add_argument("--steps", type=int, default=300)
args = parser.parse_args()

out = Path(args.out)
import_transforms(args.renders, out / "data", caption=args.caption, scale=args.scale, overwrite=True)
report = check_dataset(out / "data", min_views=4)
if not report.ok:
    raise SystemExit("\n".join(str(problem) for problem in report.problems))
run_lightning(["fit", "--config", "configs/tiny.yaml", "--model.backbone", args.backbone,
               "--data.root", str(out / "data"), "--data.resolution", str(args.resolution),
               "--data.num_views", "4", "--data.num_supervision_views", "2", "--trainer.max_steps", str(args.steps),
               "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.callbacks", "[]",
               "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"])
adapter = export_adapter(out / "checkpoints" / "last.ckpt", out / "adapter", overwrite=True)
print(f"adapter written to {adapter}; sample it with examples/text_to_multiview.py --adapter {adapter}")
