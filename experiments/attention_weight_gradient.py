"""Issue 19, defect 6: the NeuS weights enter the cross-view attention as log w; with gradient, 1/w is up to 1e6.

    python experiments/attention_weight_gradient.py --steps 100 --out outputs/weight_gradient

For each ``cross_view_weight_gradient`` ("full": the old behaviour, "floored": log max(w, 1e-3), "detached"):
a short stage-2 fit with a trained NeuS (``configs/camera/chairs.yaml`` from ``models/tiny-neus`` with
``train_neus: true`` and 4 supervision views), the same seed and data for each. Then:
- the exported weights are the trained ones (``--no-ema``): the EMA of so short a run is mostly its start;
- the NeuS gradient norm per step (``train/grad_norm_neus``, before clipping) from the run's CSV log;
- the held-out field: ``neus_probe.py`` on 12 chairs no fit has seen (8 clean views in: volume IoU against the analytic
  chair, PSNR of renders at the 8 other views);
- text→multiview hull IoU of the 6 in-set chair prompts ("mv", 25 DDPM steps, border masks).
Writes OUT/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("full", "floored", "detached")
PROMPTS = ("a red chair", "a blue chair", "a green chair", "a yellow chair", "a purple chair", "a black chair")


def tunemv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunemv", *args], check=True, env={**os.environ, "WANDB_MODE": "offline"})


def grad_norms(run: Path) -> dict[str, float]:
    (metrics,) = run.glob("logs/version_*/metrics.csv")
    with metrics.open() as file:
        values = [float(row["train/grad_norm_neus"]) for row in csv.DictReader(file) if row.get("train/grad_norm_neus")]
    return {"grad_norm_neus_median": statistics.median(values), "grad_norm_neus_max": max(values),
            "logged_steps": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--chairs", default="outputs/demo/chairs")
    parser.add_argument("--out", default="outputs/weight_gradient")
    parser.add_argument("--variant", action="append", default=None)
    args = parser.parse_args()
    out = Path(args.out)
    from tunemv.cli.demo import prepare_chairs

    chairs = prepare_chairs(Path(args.chairs), 200)
    held_out = out / "held-out-chairs"  # chairs no fit has seen (another seed), with their analytic shapes
    if not (held_out / "train.txt").is_file():
        tunemv("data", "procedural", "--out", str(held_out), "--objects", "12", "--views", "16", "--resolution", "32",
               "--categories", "chair", "--seed", "123", "--val-fraction", "0", "--quiet")
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    for variant in args.variant or VARIANTS:
        run = out / variant
        if not (run / "checkpoints" / "last.ckpt").is_file():
            tunemv("fit", "--config", "configs/camera/chairs.yaml", "--model.train_neus", "true",
                   "--model.cross_view.weight_gradient", variant, "--data.init_args.root", str(chairs),
                   "--data.init_args.num_supervision_views", "4", "--trainer.max_steps", str(args.steps),
                   "--model.optimization.warmup_steps", "20", "--trainer.log_every_n_steps", "1",
                   "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
                   "--trainer.enable_progress_bar", "false")
        # The trained weights, not the EMA: at decay 0.999 the EMA of a 100-step run is still 90% its start.
        tunemv("export", str(run / "checkpoints" / "last.ckpt"), str(run / "adapter"), "--no-ema", "--overwrite")
        subprocess.run([sys.executable, "experiments/neus_probe.py", "--neus", str(run / "adapter"), "--data",
                        str(held_out), "--timesteps", "0", "--out", str(run / "probe.json")], check=True)
        samples = run / "samples"
        tunemv("sample", "--adapter", str(run / "adapter"), *[a for p in PROMPTS for a in ("--prompt", p)],
               "--steps", "25", "--guidance-scale", "4", "--out", str(samples), "--overwrite", "--quiet",
               "--turntable-frames", "0")
        tunemv("evaluate", str(samples), "--mask-source", "border", "--quiet", "--out", str(run / "metrics.json"))
        probe = json.loads((run / "probe.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        results[variant] = {"steps": args.steps, **grad_norms(run), "probe": probe,
                            "hull_iou": metrics["mean"]["hull_iou"]}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({variant: results[variant]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
