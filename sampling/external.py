"""ε_2d from another 2D model for the mixed and 2d samplers (Distillation-free Text-to-3D, eq. 2): e.g. a stronger
or fine-tuned sibling.

Mixing scores only makes sense in one space and one noise process, so the other model must share the
backbone's latent space (family, channels, VAE scaling), resolution and noise schedule; anything else is
refused with the mismatch named. Its own text encoder and parameterisation are used.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from einops import rearrange

from tunemv.adapters.backbones import Backbone, ModelError
from tunemv.adapters.denoiser import ModePredictions
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
    """ε of another backbone's UNet, mode "2d" only, for one job's prompts: the same interface as
    ``MultiviewScore``."""

    modes = ("2d",)

    def __init__(self, model: Backbone, prompts: list[str], negative_prompts: list[str] | None,
                 view_chunk: int | None = None):
        self.model, self.view_chunk = model, view_chunk
        self.cond = model.encode_prompt(prompts)
        self.uncond = None if negative_prompts is None else model.encode_prompt(negative_prompts)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, modes: Sequence[str] = ("2d",),
                 guided: bool = True, cond_only: Collection[str] = ()) -> ModePredictions:
        if tuple(modes) != self.modes:
            raise ValueError(f"{self.model.name_or_path}: another 2D model only predicts mode '2d', not {tuple(modes)}")
        _batch, views = timesteps.shape
        epsilon, variance = self._epsilon(sample, timesteps, self.cond, views)
        uncond = {"2d": self._epsilon(sample, timesteps, self.uncond, views)[0]} \
            if guided and self.uncond is not None and "2d" not in cond_only else {}
        return ModePredictions({"2d": epsilon}, uncond, {} if variance is None else {"2d": variance})

    @classmethod
    def for_job(cls, model: str | Backbone, backbone: Backbone, prompts: list[str],
                negative_prompts: list[str] | None, view_chunk: int | None = None) -> ExternalTwoDScore:
        """Load ``model`` (a hub id, a folder or a loaded ``Backbone``) beside ``backbone``, refusing one from
        another space."""
        other = model if isinstance(model, Backbone) else Backbone.from_pretrained(
            model, torch_dtype=backbone.dtype, device=backbone.device)
        check_same_space(backbone, other)
        return cls(other, prompts, negative_prompts, view_chunk)

    def _epsilon(self, sample, timesteps, text, views: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ε, and the learned-variance half where the model predicts one."""
        model = self.model
        flat = rearrange(sample, "b v c h w -> (b v) c h w").to(model.dtype)
        flat_t = rearrange(timesteps, "b v -> (b v)")
        per_view = text.per_view(views)
        step = self.view_chunk or len(flat)
        parts = []
        for start in range(0, len(flat), step):
            part = slice(start, start + step)
            part_text = per_view[part]
            parts.append(model.unet(flat[part], flat_t[part], part_text.hidden_states,
                                    added_cond_kwargs=part_text.added_cond_kwargs).sample)
        output = rearrange(torch.cat(parts), "(b v) c h w -> b v c h w", v=views).to(sample.dtype)
        prediction, variance = output[:, :, :model.prediction_channels], output[:, :, model.prediction_channels:]
        epsilon = to_epsilon(prediction, sample, timesteps, model.noise_scheduler.alphas_cumprod, model.prediction_type)
        return epsilon, variance if variance.shape[2] else None
