"""Prompt fidelity: does the project's attribute classifier see the category and colour the caption asks for?

The classifier is ``tunemv.foundation.attribute_classifier`` (issue 8), used through its public API only:
``AttributeClassifier.from_pretrained(path)``, ``.predict(images) -> {"category": [...], "colour": [...], ...}``
for (N, 3, H, W) images in [0, 1], and ``parse_caption(caption) -> (category, colour)`` (None when absent;
taken from the classifier object when it has one, else from the module).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tunemv.evaluation.availability import unavailable

CLASSIFIER_MODULE = "tunemv.foundation.attribute_classifier"


def load_classifier(path: str | os.PathLike):
    """The classifier at ``path``, else an "unavailable: ..." string."""
    try:
        from tunemv.foundation import attribute_classifier
    except ImportError as exc:
        return unavailable(f"{CLASSIFIER_MODULE} cannot be imported ({exc})")
    try:
        return attribute_classifier.AttributeClassifier.from_pretrained(path)
    except Exception as exc:  # a foreign loader: any failure means "not available", with its reason
        return unavailable(f"cannot load the attribute classifier from {path} ({type(exc).__name__}: {exc})")


def caption_parser(classifier) -> Callable[[str], tuple[str | None, str | None]] | str:
    parse = getattr(classifier, "parse_caption", None)
    if parse is None:
        try:
            from tunemv.foundation.attribute_classifier import parse_caption as parse
        except ImportError as exc:
            return unavailable(f"no parse_caption in {CLASSIFIER_MODULE} ({exc})")
    return parse


@torch.no_grad()
def prompt_fidelity(classifier, images: torch.Tensor, caption: str) -> dict[str, float | str]:
    """Fraction of the (N, 3, H, W) views whose predicted category / colour matches the caption's."""
    parse = caption_parser(classifier)
    if isinstance(parse, str):
        return {"prompt_category": parse, "prompt_colour": parse}
    wanted = dict(zip(("category", "colour"), parse(caption), strict=True))
    predicted = classifier.predict(images)
    out: dict[str, float | str] = {}
    for attribute, target in wanted.items():
        if target is None:
            out[f"prompt_{attribute}"] = unavailable(f"the caption names no {attribute} the classifier knows")
        else:
            out[f"prompt_{attribute}"] = sum(p == target for p in predicted[attribute]) / len(predicted[attribute])
    return out
