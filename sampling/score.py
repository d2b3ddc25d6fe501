"""ε sources: the one interface a sampler sees, whatever model stands behind it (as k-diffusion's external.py).

``MultiviewScore`` serves the adapter's modes ("mv", "independent", "2d") from one shared-encoder ``predict``
call; ``ExternalTwoDScore`` (in ``external``) serves "2d" from another backbone. Both are called as
``score(x_t (B, V, C, h, w), timesteps (B, V), modes, guided, cond_only) -> Epsilons`` and convert whatever the
model predicts to ε, so a sampler merges two symmetric sources.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.denoiser import MultiviewDenoiser
from tunemv.adapters.text import Text
from tunemv.geometry.cameras import Cameras
from tunemv.sampling.algebra import to_epsilon


@dataclass
class Epsilons:
    cond: dict[str, torch.Tensor]  # mode -> (B, V, C, h, w) ε with the prompt
    uncond: dict[str, torch.Tensor]  # mode -> ε with the negative prompt; empty without classifier-free guidance
    # mode -> (B, V, C, h, w) the learned-variance half with the prompt, for backbones that predict one (IF)
    variance: dict[str, torch.Tensor] = field(default_factory=dict)


class MultiviewScore:
    """ε of the multiview denoiser on its backbone, for one job's cameras ``[B, V]`` and text ``(B, L, D)``.

    ``uncond`` is the negative prompt's ``Text`` (None: no classifier-free guidance).
    """

    def __init__(self, denoiser: MultiviewDenoiser, backbone: Backbone, cameras: Cameras, text: Text,
                 uncond: Text | None = None):
        self.denoiser, self.backbone, self.cameras, self.text, self.uncond = denoiser, backbone, cameras, text, uncond

    @property
    def alphas_cumprod(self) -> torch.Tensor:  # (T,) the backbone's training schedule
        return self.backbone.noise_scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, modes: Sequence[str], guided: bool = True,
                 cond_only: Collection[str] = ()) -> Epsilons:
        """ε for each of ``modes``, with the prompt and, when ``guided``, without it (except ``cond_only``)."""
        uncond = self.uncond if guided else None
        out = self.denoiser.predict(sample, timesteps, self.cameras, self.text, tuple(modes), uncond,
                                    cond_only=cond_only)
        to_eps = lambda p: to_epsilon(p, sample, timesteps, self.alphas_cumprod, self.backbone.prediction_type)  # noqa: E731
        return Epsilons({m: to_eps(p) for m, p in out.cond.items()}, {m: to_eps(p) for m, p in out.uncond.items()},
                        out.variance)
