"""An on-disk cache of VAE latents of training views, so latent backbones (SD) encode each view once.

    <cache_dir>/<fingerprint>/<object_id>/<view>.safetensors      {"latent": (C, h, w)}

The fingerprint hashes what the latent depends on: the backbone (name and VAE config) and the image size.
The VAE's posterior mean is cached (training encodes with the mean), so a hit equals a fresh encoding.
Writes are atomic (temporary file + rename), so concurrent DDP ranks and killed runs leave no partial file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunemv.adapters.backbones import Backbone
from tunemv.atomic import atomic_path


class LatentCache:
    def __init__(self, cache_dir: str | Path, backbone: Backbone):
        self.root, self.backbone = Path(cache_dir), backbone
        self.hits = self.misses = 0

    def folder(self, height: int, width: int) -> Path:
        vae = dict(self.backbone.vae.config) if self.backbone.vae is not None else {}
        identity = json.dumps({"backbone": self.backbone.name_or_path, "vae": vae, "size": [height, width]},
                              sort_keys=True, default=str)
        return self.root / hashlib.sha256(identity.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, object_ids: Sequence[str], view_indices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) in [-1, 1] of views ``view_indices`` (B, V) of ``object_ids`` -> (B, V, C, h, w)."""
        if self.backbone.vae is None:  # pixel space: nothing to cache
            return self.backbone.encode_views(images)
        folder = self.folder(*images.shape[-2:])
        paths = [[folder / object_id / f"{int(view):04d}.safetensors" for view in views]
                 for object_id, views in zip(object_ids, view_indices.tolist(), strict=True)]
        missing = [(b, v) for b, row in enumerate(paths) for v, path in enumerate(row) if not path.is_file()]
        latents: dict[tuple[int, int], torch.Tensor] = {}
        if missing:
            picked = torch.stack([images[b, v] for b, v in missing])[None]
            fresh = self.backbone.encode_views(picked)[0]
            for (b, v), latent in zip(missing, fresh, strict=True):
                latents[b, v] = latent
                _save_atomic(paths[b][v], latent)
        for b, row in enumerate(paths):
            for v, path in enumerate(row):
                if (b, v) not in latents:
                    latents[b, v] = load_file(path)["latent"].to(images.device, images.dtype)
        self.misses += len(missing)
        self.hits += sum(len(row) for row in paths) - len(missing)
        return torch.stack([torch.stack([latents[b, v] for v in range(len(row))]) for b, row in enumerate(paths)])


def _save_atomic(path: Path, latent: torch.Tensor) -> None:
    with atomic_path(path) as temporary:
        save_file({"latent": latent.detach().cpu().contiguous()}, str(temporary))
