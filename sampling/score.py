"""ε sources: the one interface a sampler sees, whatever model stands behind it (as k-diffusion's external.py).

``MultiviewScore`` serves the adapter's modes ("mv", "independent", "2d") from one shared-encoder ``predict``
call; ``ExternalTwoDScore`` (in ``external``) serves "2d" from another backbone. Both are called as
``score(x_t (B, V, C, h, w), timesteps (B, V), modes, guided, cond_only) -> ModePredictions`` in ε, whatever
the model predicts, so a sampler merges two symmetric sources. A sampler asks the score, never the model
behind it: ``view_chunk`` and ``render_field`` are the rest of what samplers need.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.denoiser import ModePredictions, MultiviewDenoiser
from tunemv.adapters.text import Text
from tunemv.geometry.cameras import Cameras
from tunemv.sampling.algebra import to_epsilon


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
                 cond_only: Collection[str] = ()) -> ModePredictions:
        """ε for each of ``modes``, with the prompt and, when ``guided``, without it (except ``cond_only``)."""
        uncond = self.uncond if guided else None
        out = self.denoiser.predict(sample, timesteps, self.cameras, self.text, tuple(modes), uncond,
                                    cond_only=cond_only)
        to_eps = lambda p: to_epsilon(p, sample, timesteps, self.alphas_cumprod, self.backbone.prediction_type)  # noqa: E731
        return ModePredictions({m: to_eps(p) for m, p in out.cond.items()},
                               {m: to_eps(p) for m, p in out.uncond.items()}, out.variance)

    @property
    def view_chunk(self) -> int | None:
        """How many images one model call takes (None: all); another 2D model a sampler brings uses it too."""
        return self.denoiser.view_chunk

    @torch.no_grad()
    def render_field(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, C, h, w) the NeuS field fused from clean ``latents`` (t = 0), rendered at the job's cameras."""
        zeros = torch.zeros(latents.shape[:2], dtype=torch.long, device=latents.device)
        return self.denoiser.render_condition(latents, zeros, self.cameras).image
