"""ε_2d from another 2D model for the mixed sampler (seed 002 eq. 2): e.g. a stronger or fine-tuned sibling.

Mixing scores only makes sense in one space and one noise process, so the other model must share the
backbone's latent space (family, channels, VAE scaling), resolution and noise schedule; anything else is
refused with the mismatch named. Its own text encoder and parameterisation are used.
"""

from __future__ import annotations

import torch
from einops import rearrange

from tunemv.adapters.backbones import Backbone, ModelError
from tunemv.sampling.algebra import to_epsilon


def check_same_space(backbone: Backbone, other: Backbone) -> None:
    """Raise ``ModelError`` naming the first difference that makes the two scores incomparable."""
    def refuse(what: str, ours, theirs):
        raise ModelError(f"{other.name_or_path}: cannot mix its 2D score with {backbone.name_or_path}: {what} "
                         f"differs ({theirs} vs {ours})")

    if (backbone.vae is None) != (other.vae is None):
        refuse("space (pixels vs VAE latents)", "pixels" if backbone.vae is None else "latents",
               "pixels" if other.vae is None else "latents")
    for name in ("in_channels", "prediction_channels", "sample_size", "vae_scale_factor"):
        if getattr(backbone, name) != getattr(other, name):
            refuse(name, getattr(backbone, name), getattr(other, name))
    if backbone.vae is not None:
        for key in ("latent_channels", "scaling_factor", "shift_factor"):
            if backbone.vae.config.get(key) != other.vae.config.get(key):
                refuse(f"VAE {key}", backbone.vae.config.get(key), other.vae.config.get(key))
    ours, theirs = backbone.noise_scheduler.alphas_cumprod, other.noise_scheduler.alphas_cumprod
    if len(ours) != len(theirs):
        refuse("number of training timesteps", len(ours), len(theirs))
    if not torch.allclose(ours, theirs, atol=1e-6):
        refuse("noise schedule (alphas_cumprod)", backbone.scheduler_config.get("beta_schedule"),
               other.scheduler_config.get("beta_schedule"))


class ExternalTwoDScore:
    """``(x_t (B, V, C, h, w), timesteps (B, V)) -> (ε(c), ε(∅) or None)`` from another backbone's UNet."""

    def __init__(self, model: Backbone, prompts: list[str], negative_prompts: list[str] | None,
                 view_chunk: int | None = None):
        self.model, self.view_chunk = model, view_chunk
        self.cond = model.encode_prompt(prompts)
        self.uncond = None if negative_prompts is None else model.encode_prompt(negative_prompts)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        _batch, views = timesteps.shape
        outputs = [self._epsilon(sample, timesteps, text, views) for text in (self.cond, self.uncond) if text]
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def _epsilon(self, sample, timesteps, text, views: int) -> torch.Tensor:
        model = self.model
        flat = rearrange(sample, "b v c h w -> (b v) c h w").to(model.dtype)
        flat_t = rearrange(timesteps, "b v -> (b v)")
        hidden = text.hidden_states.repeat_interleave(views, 0)
        added = None if text.added_cond_kwargs is None else {
            k: v.repeat_interleave(views, 0) for k, v in text.added_cond_kwargs.items()}
        step = self.view_chunk or len(flat)
        parts = []
        for start in range(0, len(flat), step):
            part = slice(start, start + step)
            part_added = None if added is None else {k: v[part] for k, v in added.items()}
            parts.append(model.split_prediction(model.unet(flat[part], flat_t[part], hidden[part],
                                                            added_cond_kwargs=part_added).sample))
        prediction = rearrange(torch.cat(parts), "(b v) c h w -> b v c h w", v=views).to(sample.dtype)
        return to_epsilon(prediction, sample, timesteps, model.noise_scheduler.alphas_cumprod, model.prediction_type)
