"""A small-scale reproduction of TuneMV3D's claims on the project's tiny backbone (issue 8).

    python experiments/reproduce.py --adapter outputs/demo/adapter \
        --full-finetune outputs/baseline/fit/checkpoints/final.ckpt --out outputs/reproduction

It samples the same prompts with every variant, then measures multiview consistency (visual-hull IoU and
photo-consistency, ``tunemv evaluate``) and prompt fidelity (the attribute classifier) for each, with
procedural ground-truth renders as the ceiling:
- prompts inside the 3D tuning set (chairs) and outside it (other categories, never seen in 3D);
- (a) the frozen 2D backbone view by view (sampler "2d");
- (b) the adapter: "mv" (= "consistency" at K = 0), "consistency" at K in {0.25, 0.5} and α in {2, 5, 10},
  "mixed" with a constant, a linear and the quadratic λ schedule (Distillation-free Text-to-3D §3.4);
- (c) a baseline that fine-tuned the whole backbone UNet as a multiview model on the same set
  (``model.train_backbone_unet``), sampled with "mv";
- (d) a one-step generator distilled from the adapter (``--generator``, ``tunemv distill``), sampled "one-step".
Writes OUT/<variant>/<split>/ (dataset-format samples with grids), OUT/results.json and OUT/results.md.
A run with ``--variant`` replaces those rows of an existing results.json made with the same settings and keeps
the others, so the table can be built a few rows at a time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tunemv.atomic import atomic_path

IN_SET = ("a red chair", "a blue chair", "a green chair", "a yellow chair", "a purple chair", "a black chair")
OUT_OF_SET = ("a red table", "a blue mug", "a green vase", "a yellow lamp", "a purple stool", "an orange torus")


def consistency(ratio: float, scale: float) -> dict:
    return {"sampler": "consistency", "sampler_options": {"consistency_ratio": ratio, "consistency_scale": scale}}


def mixed(kind: str, start: float, end: float) -> dict:
    from tunemv.sampling.guidance import MixSchedule

    return {"sampler": "mixed", "sampler_options": {"schedule": MixSchedule(kind, start, end)}}


# (name, model, pipeline options); "adapter" is the adapter on the frozen backbone, "full" the baseline.
# K = 0 is not a row: with no guided step "consistency" is "mv" bit for bit (tests/test_sampling.py).
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("2d (frozen backbone)", "adapter", {"sampler": "2d"}),
    ("mv", "adapter", {"sampler": "mv"}),
    ("consistency K=0.25 a=5", "adapter", consistency(0.25, 5.0)),
    ("consistency K=0.5 a=2", "adapter", consistency(0.5, 2.0)),
    ("consistency K=0.5 a=5", "adapter", consistency(0.5, 5.0)),
    ("consistency K=0.5 a=10", "adapter", consistency(0.5, 10.0)),
    ("mixed constant λ=0.5", "adapter", mixed("constant", 0.5, 0.5)),
    ("mixed linear λ 0→1", "adapter", mixed("linear", 0.0, 1.0)),
    ("mixed quadratic λ 0.2→1", "adapter", mixed("quadratic", 0.2, 1.0)),
    ("full fine-tune (baseline), mv", "full", {"sampler": "mv"}),
    ("one-step generator", "generator", {"sampler": "one-step", "guidance_scale": 1.0}),
)
METRICS = ("hull_iou", "photo_psnr", "prompt_category", "prompt_colour")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def ground_truth(out: Path, objects: int, views: int) -> dict[str, Path]:
    """Procedural renders at the samples' resolution: chairs (in-set) and every other category (out-of-set)."""
    from tunemv.data.generate import generate_procedural_dataset
    from tunemv.data.procedural import CATEGORIES

    roots = {"in-set": out / "ground-truth" / "in-set", "out-of-set": out / "ground-truth" / "out-of-set"}
    for split, categories in (("in-set", ["chair"]), ("out-of-set", [c for c in CATEGORIES if c != "chair"])):
        if not (roots[split] / "train.txt").is_file():
            generate_procedural_dataset(roots[split], num_objects=objects, num_views=views, resolution=32,
                                        categories=categories, seed=7, val_fraction=0, overwrite=True,
                                        progress=False)
    return roots


def evaluate(root: Path, classifier) -> dict[str, float | str]:
    from tunemv.evaluation.evaluate import evaluate_dataset

    # Border masks: the tiny backbone's backgrounds are uniform but tinted, so the white threshold would call
    # every pixel foreground and make the hull metrics constant. Ground truth is scored the same way.
    report = evaluate_dataset(root, classifier=classifier, mask_source="border")
    means = report.mean()
    return {name: means.get(name, "missing") for name in METRICS}


def run(adapter: str, full_finetune: str | None, out: Path, classifier_dir: str, views: int, steps: int,
        guidance_scale: float, seed: int, variants: Sequence[str] | None, evaluate_only: bool = False,
        scheduler: str = "auto", generator: str | None = None) -> dict:
    from tunemv.evaluation.prompt import load_classifier
    from tunemv.sampling.object_folders import ObjectFolderOptions, write_object_folders
    from tunemv.sampling.pipeline import MultiviewPipeline

    classifier = load_classifier(classifier_dir)
    if isinstance(classifier, str):
        raise SystemExit(f"{classifier_dir}: {classifier}")
    models = {"adapter": lambda: MultiviewPipeline.from_pretrained(adapter)} if adapter else {}
    if full_finetune:
        models["full"] = lambda: MultiviewPipeline.from_checkpoint(full_finetune)
    if generator:
        models["generator"] = lambda: MultiviewPipeline.from_pretrained(generator)
    settings = {"adapter": adapter, "full_finetune": full_finetune, "generator": generator, "views": views,
                "scheduler": scheduler, "steps": steps,
                "guidance_scale": guidance_scale, "seed": seed, "in_set": list(IN_SET), "out_of_set": list(OUT_OF_SET)}
    results: dict = {"settings": settings, "rows": []}
    kept = {}  # rows of an earlier run with the same settings, replaced by any variant run now
    if (out / "results.json").is_file():
        earlier = json.loads((out / "results.json").read_text())
        if earlier.get("settings") == settings:
            kept = {row["variant"]: row for row in earlier["rows"]}
    truth = ground_truth(out, len(IN_SET), views)
    scores = out / "ground-truth" / "scores.json"  # the renders are seeded: score them once per folder
    if not scores.is_file():
        with atomic_path(scores) as temporary:
            temporary.write_text(json.dumps({split: evaluate(root, classifier) for split, root in truth.items()}))
    results["rows"].append({"variant": "ground truth (procedural renders)", "seconds": None,
                            **json.loads(scores.read_text())})
    loaded: dict = {}
    previous = {name: row["seconds"] for name, row in kept.items()}  # for --evaluate-only
    for name, model, options in VARIANTS:
        if (variants and name not in variants) or model not in models:
            continue
        if model not in loaded and not evaluate_only:
            loaded.clear()  # one pipeline in memory at a time
            loaded[model] = models[model]()
        row = {"variant": name}
        start = time.perf_counter()
        for split, prompts in (("in-set", IN_SET), ("out-of-set", OUT_OF_SET)):
            root = out / slug(name) / split
            if not evaluate_only:
                output = loaded[model](list(prompts), num_views=views, scheduler=scheduler, steps=steps,
                                       seed=seed, progress=False, **{"guidance_scale": guidance_scale, **options})
                write_object_folders(output, root, settings={"variant": name, **options},
                                     options=ObjectFolderOptions(turntable_frames=0, overwrite=True))
            row[split] = evaluate(root, classifier)
        row["seconds"] = previous.get(name) if evaluate_only else round(time.perf_counter() - start, 1)
        kept[name] = row
        print(json.dumps(row), flush=True)
        save(out, results, kept)  # after every variant: a run cut short keeps the rows it finished
    return save(out, results, kept)


def save(out: Path, results: dict, rows: dict) -> dict:
    """Write results.json and results.md: ground truth, then the variants in VARIANTS order."""
    from tunemv.atomic import write_text_atomic

    table = {**results, "rows": results["rows"][:1] + [rows[name] for name, _, _ in VARIANTS if name in rows]}
    write_text_atomic(out / "results.json", json.dumps(table, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown(table))
    return table


def markdown(results: dict) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "n/a"

    header = ("| variant | " + " | ".join(f"{split} {metric}" for split in ("in-set", "out-of-set")
                                          for metric in ("IoU", "photo dB", "category", "colour")) + " | s |")
    lines = [header, "|" + "---|" * 10]
    for row in results["rows"]:
        cells = [cell(row[split][m]) for split in ("in-set", "out-of-set") for m in METRICS]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {row['seconds'] or ''} |")
    return "\n".join(lines) + "\n"


def aggregate(folders: Sequence[Path]) -> str:
    """Mean ± std over runs with different ``--seed`` (each folder a results.json), variant by variant."""
    import statistics

    runs = [json.loads((Path(folder) / "results.json").read_text()) for folder in folders]
    seeds = [run["settings"]["seed"] for run in runs]
    names = [row["variant"] for row in runs[0]["rows"] if all(
        any(r["variant"] == row["variant"] for r in run["rows"]) for run in runs)]
    header = ("| variant | " + " | ".join(f"{split} {metric}" for split in ("in-set", "out-of-set")
                                          for metric in ("IoU", "photo dB", "category", "colour")) + " |")
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean ± std over {len(runs)} runs.", "", header, "|" + "---|" * 9]
    for name in names:
        cells = []
        for split in ("in-set", "out-of-set"):
            for metric in METRICS:
                values = [next(r for r in run["rows"] if r["variant"] == name)[split][metric] for run in runs]
                values = [v for v in values if isinstance(v, float)]
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1
                             else (f"{values[0]:.3f}" if values else "n/a"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=None, help="an adapter folder fitted on chairs (tunemv demo's)")
    parser.add_argument("--full-finetune", default=None, help="checkpoint of the train_backbone_unet baseline")
    parser.add_argument("--generator", default=None, help="a distilled one-step generator folder (tunemv distill)")
    parser.add_argument("--classifier", default="models/attribute-classifier")
    parser.add_argument("--out", default="outputs/reproduction")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--scheduler", default="auto", help="step rule (default auto: ddpm on the tiny backbone)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=None, help="only these variants (repeatable)")
    parser.add_argument("--evaluate-only", action="store_true", help="re-score the samples already under --out")
    parser.add_argument("--aggregate", nargs="+", default=None, metavar="OUT",
                        help="only print mean ± std over these finished runs (one per --seed)")
    args = parser.parse_args(argv)
    if args.aggregate:
        print(aggregate([Path(folder) for folder in args.aggregate]))
        return
    if args.adapter is None and args.full_finetune is None and args.generator is None:
        parser.error("--adapter, --full-finetune or --generator is required (unless --aggregate)")
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args.adapter, args.full_finetune, out, args.classifier, args.views, args.steps,
                  args.guidance_scale, args.seed, args.variant, args.evaluate_only, args.scheduler, args.generator)
    print(markdown(results))


if __name__ == "__main__":
    main()
