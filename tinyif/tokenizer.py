"""The tiny backbone's tokenizer: word level, T5's special tokens, a vocabulary of the procedural captions.

T5's real tokenizer is a SentencePiece model that cannot be downloaded here. A word-level ``tokenizers`` model
behind ``PreTrainedTokenizerFast`` loads through ``AutoTokenizer`` like the hub one: pad 0, eos 1, unk 2, and
``</s>`` appended to every prompt, as T5 does.
"""

from __future__ import annotations

import re

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tunemv.data.procedural import BUILDERS, CATEGORIES, COLOURS, make_captions

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
# A few generic prompt words besides the captions', so ordinary prompts ("a photo of a red chair") still parse.
EXTRA_WORDS = ("a", "an", "the", "of", "photo", "object", "on", "white", "background", "3d", "render")
_WORD = re.compile(r"\w+|[^\w\s]+")  # what the Whitespace pre-tokenizer splits on


def caption_words(caption: str) -> list[str]:
    """The words the tokenizer sees in ``caption``: lower-cased, split on whitespace and punctuation."""
    return _WORD.findall(caption.lower())


def caption_vocabulary(draws_per_category: int = 64, seed: int = 0) -> list[str]:
    """Every word the procedural captions can produce, sorted.

    Detail phrases come from random binary choices inside each builder, so ``draws_per_category`` objects per
    category (with every colour cycled through) reach each phrase with overwhelming probability; the tests
    check fresh captions from other seeds for unknown words.
    """
    rng = np.random.default_rng(seed)
    words = set(EXTRA_WORDS)
    colours = list(COLOURS)
    for category in CATEGORIES:
        for draw in range(draws_per_category):
            # The builders alone: make_object's SDF normalisation costs ~0.1 s and changes no caption.
            details = BUILDERS[category](rng)[1]
            for caption in make_captions(category, colours[draw % len(colours)], details):
                words.update(caption_words(caption))
    for colour in colours:  # the detail-free caption forms
        for category in CATEGORIES:
            for caption in make_captions(category, colour, []):
                words.update(caption_words(caption))
    return sorted(words)


def build_tokenizer(words: list[str] | None = None, model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (default: ``caption_vocabulary()``) that appends ``</s>``."""
    words = caption_vocabulary() if words is None else words
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length)
