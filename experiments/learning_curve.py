"""Learning curves of stage 2 (issue 18): what stage 1 buys, and the full fine-tune baseline at the same steps.

    python experiments/learning_curve.py fit from-tiny-neus      # resumes from its last.ckpt when killed
    python experiments/learning_curve.py fit from-scratch
    python experiments/learning_curve.py fit full-finetune
    python experiments/learning_curve.py evaluate from-tiny-neus --steps 250 500 1000 2000 3000 [--wait]
    python experiments/learning_curve.py table                   # markdown of every evaluated snapshot

Every run is ``configs/camera/chairs.yaml`` (the recipe of the former chairs-only models/demo-adapter: 180 chairs, batch 2 x 4 views,
AdamW 3e-4, EMA 0.999) with one change, so the curves differ only in what the issue compares:
- ``from-tiny-neus``: the shipped recipe itself (stage 2 over the frozen stage-1 field);
- ``from-scratch``: no stage 1: the NeuS starts as the initial sphere and is trained jointly with the branch,
  supervised by its render, opacity and eikonal losses on 2 held-out views per object;
- ``full-finetune``: the TuneMV3D comparison: the recipe, but the backbone's UNet is trained too.
A weights-only snapshot is kept every 250 steps under outputs/curve/RUN/checkpoints. ``evaluate`` scores a
snapshot with the reproduction's text→multiview protocol (``mv``, 6 in-set and 6 out-of-set prompts, one
seed; hull IoU and out-of-set fidelity) and ``image_to_mesh.py``'s (10 held-out chairs, mesh volume IoU and
Chamfer against mesh.ply), and writes outputs/curve/RUN/step-N/curve.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path("outputs/curve")
RECIPE = "configs/camera/chairs.yaml"
SNAPSHOT_EVERY = 250
RUNS = {
    "from-tiny-neus": [],
    "from-scratch": ["--model.init_from", "null", "--model.train_neus", "true",
                     "--data.init_args.num_supervision_views", "2"],
    "full-finetune": ["--model.train_backbone_unet", "true"],
}


def overlay(run: str) -> Path:
    """A second --config: this run's folders, a resumable last.ckpt every 125 steps and a kept snapshot every
    250 (Lightning refuses two checkpoint callbacks on the same interval: their states would collide)."""
    folder = ROOT / run
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = str(folder / "checkpoints")
    text = f"""trainer:
  default_root_dir: {folder}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {folder}, name: logs}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {checkpoints}, save_last: true, save_top_k: 0, every_n_train_steps: {SNAPSHOT_EVERY // 2}}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {checkpoints}, filename: "{{step}}", save_weights_only: true, save_top_k: -1,
                   every_n_train_steps: {SNAPSHOT_EVERY}}}
"""
    path = folder / "overlay.yaml"
    path.write_text(text)
    return path


def fit(run: str, steps: int) -> None:
    command = ["tunemv", "fit", "--config", RECIPE, "--config", str(overlay(run)), *RUNS[run],
               "--trainer.max_steps", str(steps)]
    if (ROOT / run / "checkpoints" / "last.ckpt").is_file():
        command += ["--ckpt_path", str(ROOT / run / "checkpoints" / "last.ckpt")]
    print(" ".join(command), flush=True)
    sys.exit(subprocess.call(command))


def snapshot(run: str, step: int, wait: bool = False) -> Path:
    path = ROOT / run / "checkpoints" / f"step={step}.ckpt"
    while wait and not path.is_file():  # a fit still running writes it; poll rather than fail
        time.sleep(30)
    if not path.is_file():
        raise SystemExit(f"{path}: no snapshot at step {step} yet")
    return path


def evaluate(run: str, step: int, chairs: str, objects: int, wait: bool = False) -> dict:
    """Score one snapshot; the full fine-tune is sampled from its checkpoint (it cannot be exported)."""
    out = ROOT / run / f"step-{step}"
    if (out / "curve.json").is_file():  # scored already: a queue of evaluations can be rerun after a kill
        return json.loads((out / "curve.json").read_text())
    ckpt = snapshot(run, step, wait)
    python = sys.executable
    if run == "full-finetune":
        text = ["--full-finetune", str(ckpt), "--variant", "full fine-tune (baseline), mv"]
        row_name = "full fine-tune (baseline), mv"
    else:
        adapter = out / "adapter"
        if not (adapter / "adapter.json").is_file():
            subprocess.check_call(["tunemv", "export", str(ckpt), str(adapter)])
        text = ["--adapter", str(adapter), "--variant", "mv"]
        row_name = "mv"
    truth = ROOT / "ground-truth"  # seeded renders scored once and shared by every snapshot (see reproduce.py)
    if truth.is_dir() and not (out / "text" / "ground-truth").exists():
        shutil.copytree(truth, out / "text" / "ground-truth")
    subprocess.check_call([python, "experiments/reproduce.py", *text, "--out", str(out / "text")])
    if not truth.is_dir():
        shutil.copytree(out / "text" / "ground-truth", truth)
    rows = {row["variant"]: row for row in json.loads((out / "text" / "results.json").read_text())["rows"]}
    row = rows[row_name]
    result = {"run": run, "step": step,
              "in_set_hull_iou": row["in-set"]["hull_iou"], "out_of_set_hull_iou": row["out-of-set"]["hull_iou"],
              "out_of_set_category": row["out-of-set"]["prompt_category"],
              "out_of_set_colour": row["out-of-set"]["prompt_colour"]}
    if run != "full-finetune":  # image_to_mesh.py loads adapter folders
        mesh_json = out / "image_to_mesh.json"
        subprocess.check_call([python, "experiments/image_to_mesh.py", "--adapter", str(out / "adapter"),
                               "--data", chairs, "--objects", str(objects), "--out", str(mesh_json)])
        summary = json.loads(mesh_json.read_text())["summary"]
        result |= {"mesh_volume_iou": summary["mesh"]["volume_iou"], "mesh_chamfer": summary["mesh"]["chamfer"],
                   "hull_volume_iou": summary["hull_of_generated_views"]["volume_iou"],
                   "silhouette_iou": summary["silhouette_iou"]}
    (out / "curve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return result


def table() -> str:
    results = sorted((json.loads(path.read_text()) for path in ROOT.glob("*/step-*/curve.json")),
                     key=lambda r: (list(RUNS).index(r["run"]), r["step"]))
    columns = ("in_set_hull_iou", "out_of_set_hull_iou", "out_of_set_category", "out_of_set_colour",
               "mesh_volume_iou", "mesh_chamfer", "hull_volume_iou", "silhouette_iou")
    lines = ["| run | step | " + " | ".join(columns) + " | mesh objects |", "|---|---:|" + "---:|" * (len(columns) + 1)]
    for r in results:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "–" for c in columns]
        mesh_json = ROOT / r["run"] / f"step-{r['step']}" / "image_to_mesh.json"
        objects = json.loads(mesh_json.read_text())["summary"]["objects"] if mesh_json.is_file() else "–"
        lines.append(f"| {r['run']} | {r['step']} | " + " | ".join(cells) + f" | {objects} |")
    return "\n".join(lines)


def figure(objects: Sequence[str], out: Path) -> None:
    """One row per scored snapshot and object (e.g. ``in-set/0000_a-red-chair``): its 8 generated views."""
    from reproduce import slug  # the script beside this one names the folders

    from tunemv.data.format import load_image
    from tunemv.sampling.object_folders import grid_image, upscale_for_preview

    snapshots = sorted(((p.parent.parent.name, int(p.parent.name.split("-")[1])) for p in ROOT.glob("*/step-*/curve.json")),
                       key=lambda rs: (list(RUNS).index(rs[0]), rs[1]))
    rows, labels = [], []
    for name in objects:
        for run, step in snapshots:
            variant = slug("full fine-tune (baseline), mv" if run == "full-finetune" else "mv")
            images = sorted((ROOT / run / f"step-{step}" / "text" / variant / name / "images").glob("*.png"))
            rows.append(torch.stack([load_image(path)[0] for path in images]))  # (V, 3, H, W) in [0, 1]
            labels.append(f"{run} {step}: {name}")
    grid = grid_image(upscale_for_preview(torch.stack(rows), 64))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print("\n".join(f"row {i + 1}: {label}" for i, label in enumerate(labels)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fit_parser = sub.add_parser("fit")
    fit_parser.add_argument("run", choices=RUNS)
    fit_parser.add_argument("--steps", type=int, default=3000)
    evaluate_parser = sub.add_parser("evaluate")
    evaluate_parser.add_argument("run", choices=RUNS)
    evaluate_parser.add_argument("--steps", type=int, nargs="+", required=True)
    evaluate_parser.add_argument("--chairs", default="outputs/demo/chairs")
    evaluate_parser.add_argument("--objects", type=int, default=10)
    evaluate_parser.add_argument("--wait", action="store_true", help="wait for snapshots a running fit will write")
    sub.add_parser("table")
    figure_parser = sub.add_parser("figure")
    figure_parser.add_argument("objects", nargs="+", help="e.g. in-set/0000_a-red-chair out-of-set/0001_a-blue-mug")
    figure_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "fit":
        fit(args.run, args.steps)
    elif args.command == "evaluate":
        for step in args.steps:
            evaluate(args.run, step, args.chairs, args.objects, args.wait)
    elif args.command == "figure":
        figure(args.objects, args.out)
    else:
        print(table())


if __name__ == "__main__":
    main()
