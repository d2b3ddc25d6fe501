"""Prompt fidelity: does the project's attribute classifier see the category and colour the caption asks for?

The classifier is ``attribute_classifier.AttributeClassifier`` (or any object with its ``predict(images) ->
{"category": [...], "colour": [...]}`` for (N, 3, H, W) images in [0, 1]); captions are read by its
``parse_caption`` when it has one, else the module's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tunemv.evaluation.attribute_classifier import AttributeClassifier, parse_caption
from tunemv.evaluation.availability import unavailable


def load_classifier(path: str | os.PathLike):
    """The classifier at ``path``, else an "unavailable: ..." string."""
    try:
        return AttributeClassifier.from_pretrained(path)
    except Exception as exc:  # any failure means "not available", with its reason
        return unavailable(f"cannot load the attribute classifier from {path} ({type(exc).__name__}: {exc})")


def caption_parser(classifier) -> Callable[[str], tuple[str | None, str | None]]:
    return getattr(classifier, "parse_caption", parse_caption)


@torch.no_grad()
def prompt_fidelity(classifier, images: torch.Tensor, caption: str) -> dict[str, float | str]:
    """Fraction of the (N, 3, H, W) views whose predicted category / colour matches the caption's."""
    parse = caption_parser(classifier)
    wanted = dict(zip(("category", "colour"), parse(caption), strict=True))
    predicted = classifier.predict(images)
    out: dict[str, float | str] = {}
    for attribute, target in wanted.items():
        if target is None:
            out[f"prompt_{attribute}"] = unavailable(f"the caption names no {attribute} the classifier knows")
        else:
            out[f"prompt_{attribute}"] = sum(p == target for p in predicted[attribute]) / len(predicted[attribute])
    return out
