"""Prompt fidelity of a text-to-image backbone, read by the attribute classifier.

``python experiments/backbone_fidelity.py models/tiny-if`` samples one image per category × colour prompt and prints
the fraction whose classified category and colour match the prompt's (chance: 1/12 and 1/14).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from tunemv.data.procedural import CATEGORIES, COLOURS
from tunemv.evaluation.attribute_classifier import AttributeClassifier, parse_caption
from tunemv.tinyif.sampling import sample_images

FORMS = {"plain": "{article} {colour} {category}", "render": "a 3D render of {article} {colour} {category}"}


def attribute_prompts(form: str = "plain") -> list[str]:
    """One prompt per category × colour pair (168), in the caption wording ``form`` ("plain" or "render")."""
    template = FORMS[form]
    return [template.format(article="an" if colour[0] in "aeiou" else "a", colour=colour, category=category)
            for category in CATEGORIES for colour in COLOURS]


@torch.no_grad()
def backbone_fidelity(backbone, classifier: AttributeClassifier, prompts: Sequence[str], samples_per_prompt: int = 1,
                    steps: int = 50, guidance_scale: float = 4.0, seed: int = 0,
                    scheduler: str = "ddpm") -> dict[str, float]:
    """Fraction of samples whose classified category / colour match the ones their prompt names."""
    expanded = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    images = sample_images(backbone, expanded, steps, guidance_scale, torch.Generator().manual_seed(seed), scheduler)
    predicted = classifier.predict(images)
    wanted = [parse_caption(prompt) for prompt in expanded]
    category = [p == w[0] for p, w in zip(predicted["category"], wanted, strict=True) if w[0] is not None]
    colour = [p == w[1] for p, w in zip(predicted["colour"], wanted, strict=True) if w[1] is not None]
    return dict(category=sum(category) / max(len(category), 1), colour=sum(colour) / max(len(colour), 1),
                samples=len(expanded))


def main(argv: Sequence[str] | None = None) -> None:
    from tunemv.adapters.backbones import Backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="a pixel-space (IF-family) backbone folder, e.g. models/tiny-if")
    parser.add_argument("--classifier", default="models/attribute-classifier")
    parser.add_argument("--forms", nargs="+", default=["plain", "render"], choices=list(FORMS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default="ddpm", help="step rule (default ddpm, IF's own; ddim, euler, ...)")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.backbone if args.backbone.startswith((".", "/")) else f"./{args.backbone}"
    backbone, classifier = Backbone.from_pretrained(path), AttributeClassifier.from_pretrained(args.classifier)
    for form in args.forms:
        start = time.perf_counter()
        result = backbone_fidelity(backbone, classifier, attribute_prompts(form), 1, args.steps, args.guidance_scale,
                                 scheduler=args.scheduler)
        print(json.dumps(dict(form=form, scheduler=args.scheduler, steps=args.steps, **result, seconds=round(time.perf_counter() - start, 1))))


if __name__ == "__main__":
    main()
