"""The "one-step" sampler: a distilled generator's clean views from one model evaluation (GECO §3.1).

The generator is a ``MultiviewDenoiser`` whose branch and NeuS were distilled (``tunemv distill``) to map noise
z at the generator timestep t_G to x̂0 in one "mv" evaluation: x̂0 = (z − √(1−ᾱ)·ε) / √ᾱ, with the prompt's
classifier-free guidance. t_G is not the last timestep T − 1: on a cosine schedule ᾱ_{T−1} is ~1e-9, and
dividing by √ᾱ would multiply every error of ε by ~10⁴. It is the noisiest t with ᾱ_t ≥ ``min_alpha_bar``
(0.005, the level of DMD's t = 999 on SD's schedule), where z is still noise to 7% of a unit signal.

Clean reference views (image→multiview) enter at t = 0 and come back unchanged, as with every sampler.
"""

from __future__ import annotations

import torch

from tunemv.sampling.algebra import epsilon_to_sample
from tunemv.sampling.denoising_loop import SamplingJob, SamplingResult
from tunemv.sampling.guidance import classifier_free

MIN_ALPHA_BAR = 0.005


def check_min_alpha_bar(min_alpha_bar: float) -> None:
    if not 0.0 < min_alpha_bar < 1.0:
        raise ValueError(f"min_alpha_bar must be in (0, 1), got {min_alpha_bar}")


def one_step_timestep(alphas_cumprod: torch.Tensor, min_alpha_bar: float = MIN_ALPHA_BAR) -> int:
    """The noisiest training timestep whose ᾱ is at least ``min_alpha_bar`` (t_G of the generator)."""
    check_min_alpha_bar(min_alpha_bar)
    above = torch.nonzero(alphas_cumprod >= min_alpha_bar).flatten()
    if not len(above):
        raise ValueError(f"no timestep of this schedule has ᾱ >= {min_alpha_bar}")
    return int(above.max())


def pixel_clip_bound(backbone, scheduler_config) -> float | None:
    """The range a pixel-space backbone's schedule clips x̂0 to (``clip_sample``); None: no clip (latent
    backbones, or a schedule without it). The sampler and distillation's G clip alike through this."""
    if backbone.vae is None and scheduler_config.get("clip_sample", False):
        return float(scheduler_config.get("clip_sample_range", 1.0))
    return None


class OneStepSampler:
    """x̂0 from one guided "mv" evaluation at t_G; ``timestep`` overrides t_G (an int in [0, T))."""

    fixed_steps = 1  # whatever steps= says: what the pipeline records as run (and no scheduler steps)

    def __init__(self, timestep: int | None = None, min_alpha_bar: float = MIN_ALPHA_BAR):
        if timestep is not None and (int(timestep) != timestep or timestep < 0):
            raise ValueError(f"timestep must be a whole number >= 0, got {timestep}")
        check_min_alpha_bar(min_alpha_bar)  # a bad option fails when the sampler is built
        self.timestep = None if timestep is None else int(timestep)
        self.min_alpha_bar = float(min_alpha_bar)

    def timestep_for(self, alphas_cumprod: torch.Tensor) -> int:
        if self.timestep is None:
            return one_step_timestep(alphas_cumprod, self.min_alpha_bar)
        if self.timestep >= len(alphas_cumprod):
            raise ValueError(f"timestep {self.timestep} is past the schedule's {len(alphas_cumprod)} steps")
        return self.timestep

    @torch.no_grad()
    def __call__(self, job: SamplingJob) -> SamplingResult:
        alphas = job.score.alphas_cumprod
        t = torch.tensor(self.timestep_for(alphas), device=job.noise.device)
        timesteps = job.view_timesteps(t)  # (B, V); references at 0
        z = job.keep_references(job.noise)
        out = job.score(z, timesteps, ("mv",), guided=job.guided)
        epsilon = classifier_free(out.cond["mv"], out.uncond.get("mv"), job.guidance_scale)
        x0 = epsilon_to_sample(epsilon, z, timesteps, alphas.to(z.device))
        bound = pixel_clip_bound(job.score.backbone, job.scheduler.config)
        if bound is not None:
            x0 = x0.clamp(-bound, bound)  # pixel space: the schedule's own clip of x̂0
        if job.callback is not None:
            job.callback(0, t, x0, x0)  # one evaluation: its x̂0 is the result
        return SamplingResult(job.keep_references(x0))
