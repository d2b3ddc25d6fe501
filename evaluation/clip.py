"""CLIP text-image and image-image similarity (IM-3D, Table 1), when a CLIP model can be loaded.

The score is torchmetrics' CLIPScore definition, ``100 * max(cos(a, b), 0)``, computed here directly because
torchmetrics 1.9's ``CLIPScore`` breaks with transformers >= 5 (``get_image_features`` now returns a
``ModelOutput``, not a tensor).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tunemv.evaluation.availability import unavailable


class ClipSimilarity:
    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor

    @torch.no_grad()
    def _embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D) unit embeddings; the processor resizes and normalises."""
        pixels = self.processor(images=list((images * 255).round().to(torch.uint8)), return_tensors="pt")
        return _unit(self.model.get_image_features(pixel_values=pixels["pixel_values"]))

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return _unit(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                  attention_mask=tokens["attention_mask"]))

    def text_image(self, images: torch.Tensor, text: str) -> torch.Tensor:
        """(N,) score of each image against one caption."""
        return 100 * (self._embed_images(images) @ self._embed_texts([text])[0]).clamp(min=0)

    def image_image(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """(N,) score of each image against its reference image."""
        return 100 * (self._embed_images(images) * self._embed_images(references)).sum(-1).clamp(min=0)


def _unit(features) -> torch.Tensor:
    features = features if isinstance(features, torch.Tensor) else features.pooler_output  # transformers >= 5
    return torch.nn.functional.normalize(features.float(), dim=-1)


def load_clip(path_or_id: str | os.PathLike) -> ClipSimilarity | str:
    """A CLIP model and processor by local folder or hub id, else an "unavailable: ..." string.

    A hub id is looked up in the local cache first; it is downloaded only when that misses and
    ``HF_HUB_OFFLINE`` is not set (offline machines: set it, or the failed download costs ~30 s).
    """
    from transformers import CLIPModel, CLIPProcessor

    name = str(path_or_id)
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not local.is_dir():
            return unavailable(f"CLIP model folder {local} does not exist")
        attempts = [{}]
    else:
        attempts = [{"local_files_only": True}] + ([] if os.environ.get("HF_HUB_OFFLINE") else [{}])
    reason = ""
    for options in attempts:
        try:
            source = str(local) if local.is_dir() else name
            return ClipSimilarity(CLIPModel.from_pretrained(source, **options),
                                  CLIPProcessor.from_pretrained(source, **options))
        except Exception as exc:  # OSError for missing files or network, others for a broken folder: all "unavailable"
            reason = f"cannot load CLIP model {name!r} ({type(exc).__name__}: {exc})"
    return unavailable(reason)
