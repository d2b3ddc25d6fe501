"""Prompt fidelity of a pixel-space text-to-image backbone, read by the attribute classifier.

    python experiments/backbone_fidelity.py models/tiny-if --out outputs/fidelity/tiny-if \
        [--rules ddpm:50 ddpm:25 ddim:50] [--seeds 0 1] [--guidance-scale 4]

For every step rule, all 168 category × colour prompts are sampled once per seed; the classifier reads each
image. Printed and written to OUT/fidelity.json: the category and colour match per rule (chance 1/12 and
1/14), per category, and the category confusion (prompted -> read). OUT/grid-RULE.png has one row per
category (its 14 colours, seed 0) at 3x nearest-neighbour scale.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from tunemv.adapters.backbones import Backbone
from tunemv.data.procedural import CATEGORIES, COLOURS
from tunemv.evaluation.attribute_classifier import AttributeClassifier, parse_caption
from tunemv.tinyif.model_card import image_grid
from tunemv.tinyif.sampling import sample_images


def attribute_prompts() -> list[str]:
    """One prompt per category × colour pair (168), category-major, in the captions' plain wording."""
    return [f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {category}" for category in CATEGORIES for colour in COLOURS]


@torch.no_grad()
def measure_rule(backbone, classifier, prompts: list[str], rule: str, steps: int, seeds: list[int],
                 guidance_scale: float, batch: int) -> tuple[dict, torch.Tensor]:
    """Fidelity of one step rule over prompts x seeds; returns (the figures, seed 0's images)."""
    wanted = [parse_caption(prompt) for prompt in prompts]
    matches_category, matches_colour, confusion = [], [], Counter()
    first_images = None
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        images = torch.cat([sample_images(backbone, prompts[start: start + batch], steps, guidance_scale, generator,
                                          scheduler=rule) for start in range(0, len(prompts), batch)])
        first_images = images if first_images is None else first_images
        predicted = classifier.predict(images)
        for (category, colour), got_category, got_colour in zip(wanted, predicted["category"], predicted["colour"],
                                                                strict=True):
            matches_category.append((category, got_category == category))
            matches_colour.append(got_colour == colour)
            confusion[f"{category}->{got_category}"] += 1
    per_category = {c: sum(ok for name, ok in matches_category if name == c) /
                    sum(1 for name, _ in matches_category if name == c) for c in CATEGORIES}
    figures = dict(rule=rule, steps=steps, seeds=seeds, samples=len(matches_colour),
                   category=sum(ok for _, ok in matches_category) / len(matches_category),
                   colour=sum(matches_colour) / len(matches_colour), per_category=per_category,
                   weakest=min(per_category, key=per_category.get),
                   confusion={c: {k.split("->")[1]: v for k, v in confusion.items() if k.split("->")[0] == c}
                              for c in CATEGORIES})
    return figures, first_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", help="a pixel-space (IF-family) backbone folder, e.g. models/tiny-if")
    parser.add_argument("--classifier", default="models/attribute-classifier")
    parser.add_argument("--rules", nargs="+", default=["ddpm:50", "ddpm:25", "ddim:50"], help="RULE:STEPS")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=84, help="prompts per sampling call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="output folder for fidelity.json and the grids")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = args.backbone if args.backbone.startswith((".", "/")) else f"./{args.backbone}"
    backbone, classifier = Backbone.from_pretrained(path), AttributeClassifier.from_pretrained(args.classifier)
    prompts, results = attribute_prompts(), []
    for spec in args.rules:
        rule, steps = spec.split(":")
        start = time.perf_counter()
        figures, images = measure_rule(backbone, classifier, prompts, rule, int(steps), args.seeds,
                                       args.guidance_scale, args.batch)
        figures.update(guidance_scale=args.guidance_scale, seconds=round(time.perf_counter() - start, 1))
        results.append(figures)
        image_grid(images, list(CATEGORIES), out / f"grid-{rule}-{steps}.png", columns=len(COLOURS), scale=3)
        print(json.dumps({k: v for k, v in figures.items() if k != "confusion"}), flush=True)
        (out / "fidelity.json").write_text(json.dumps(dict(backbone=args.backbone, results=results), indent=1))


if __name__ == "__main__":
    main()
