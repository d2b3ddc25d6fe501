"""What a sampler is given (``SamplingJob``) and the denoising loop every built-in sampler shares.

A sampler is registered as a factory (usually its class) whose keyword arguments are its own options:
``get_sampler(name)(**options)`` is an object whose ``__call__(job) -> SamplingResult`` turns the job's noise
into clean views. The job holds only what every sampler needs; plugin authors usually subclass
``GuidedSampler`` (in ``samplers``) and override ``modes`` and ``combine``; the loop below handles the
scheduler, clean reference views, progress and callbacks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import SchedulerMixin
from einops import rearrange
from tqdm.auto import tqdm

from tunemv.adapters.text import Text
from tunemv.geometry.cameras import Cameras
from tunemv.sampling.algebra import epsilon_to_sample
from tunemv.sampling.schedulers import takes_variance
from tunemv.sampling.score import MultiviewScore


@dataclass
class SamplingJob:
    """Everything one sampling run needs. Shapes: B objects, V views, C channels, h x w model-space size.

    ``score`` is the multiview denoiser's ε for this job's cameras and text; ``noise`` is x_T before
    ``init_noise_sigma``; ``references`` (B, V) marks clean reference views whose ``reference_latents`` enter
    every step at t = 0 and come back unchanged. ``prompts`` and ``negative_prompts`` (None: no classifier-free
    guidance) are the text as strings, for samplers that bring a model with its own text encoder.
    """

    score: MultiviewScore
    scheduler: SchedulerMixin  # built with prediction_type="epsilon" (see ``schedulers``)
    noise: torch.Tensor  # (B, V, C, h, w)
    prompts: list[str]
    negative_prompts: list[str] | None = None
    steps: int = 50
    guidance_scale: float = 7.5
    references: torch.Tensor | None = None  # (B, V) bool
    reference_latents: torch.Tensor | None = None  # (B, V, C, h, w), used where ``references``
    eta: float = 0.0  # DDIM's stochasticity
    generator: torch.Generator | None = None
    # (step, t, latents, denoised) after every step, denoised the step's x̂0 (as k-diffusion's callback has it);
    # a tensor it returns replaces the latents (callback_on_step_end)
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None
    progress: bool = True
    progress_bar: dict = field(default_factory=dict)  # further tqdm options (set_progress_bar_config)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.noise.dim() != 5 or tuple(self.noise.shape[:2]) != tuple(self.cameras.shape):
            raise ValueError(f"noise must be (B, V, C, h, w) matching cameras {list(self.cameras.shape)}, "
                             f"got {list(self.noise.shape)}")
        if len(self.prompts) != self.noise.shape[0]:
            raise ValueError(f"{len(self.prompts)} prompts for {self.noise.shape[0]} objects")
        if (self.references is None) != (self.reference_latents is None):
            raise ValueError("references and reference_latents go together")
        if self.references is not None and self.references.all(dim=1).any():
            raise ValueError("every object needs at least one view to generate; all of its views are references")

    @property
    def cameras(self) -> Cameras:  # [B, V] at model resolution
        return self.score.cameras

    @property
    def text(self) -> Text:
        return self.score.text

    @property
    def guided(self) -> bool:
        """Whether steps use classifier-free guidance (and so predict without the prompt too)."""
        return self.guidance_scale > 1.0 and self.negative_prompts is not None

    @property
    def num_train_timesteps(self) -> int:
        return self.score.num_train_timesteps

    def keep_references(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` with the reference views replaced by their clean latents (bit-exact)."""
        if self.references is None:
            return latents
        mask = self.references[:, :, None, None, None]
        return torch.where(mask, self.reference_latents.to(latents.dtype), latents)

    def view_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """(B, V) timesteps: ``t`` for every view, 0 for the clean references (TuneMV3D §3.4)."""
        timesteps = t.to(self.noise.device).expand(self.noise.shape[:2]).clone()
        if self.references is not None:
            timesteps[self.references] = 0
        return timesteps


@dataclass(frozen=True)
class Step:
    """Where one model evaluation sits in a denoising run: what a sampler's hooks are told, so that a sampler
    keeps nothing between evaluations or runs."""

    index: int  # this evaluation's index in the run, from 0
    count: int  # the run's evaluations (Heun: 2n − 1 for n steps; a refine round: the schedule's tail)
    timestep: float  # the step's t (the largest of the views'; references sit at 0)


@dataclass
class SamplingResult:
    latents: torch.Tensor  # (B, V, C, h, w) clean views in model space, references unchanged


def denoise(job: SamplingJob, epsilon_fn: Callable[[torch.Tensor, torch.Tensor, Step], Any],
            latents: torch.Tensor | None = None, start_index: int = 0, desc: str = "sampling") -> torch.Tensor:
    """Run the scheduler from step ``start_index`` (x_T = noise when ``latents`` is None) to the clean views.

    ``epsilon_fn(model_input, timesteps (B, V), step)`` returns the guided ε, or (ε, the learned-variance half
    or None), which a learned-variance scheduler (DDPM on IF) steps with. Schedulers see (B·V, C, h, w), as in
    diffusers' pipelines, so per-image rules (IF's thresholding) stay per image.
    """
    scheduler, batch = job.scheduler, job.noise.shape[0]
    flat = lambda x: rearrange(x, "b v c h w -> (b v) c h w")  # noqa: E731
    unflat = lambda x: rearrange(x, "(b v) c h w -> b v c h w", b=batch)  # noqa: E731
    scheduler.set_timesteps(job.steps, device=job.noise.device)
    timesteps = scheduler.timesteps[start_index * scheduler.order:]
    if start_index and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_index * scheduler.order)
    x = job.keep_references(job.noise * scheduler.init_noise_sigma if latents is None else latents)
    step_kwargs = step_arguments(scheduler, job.eta, job.generator, pixel_space=job.score.backbone.vae is None)
    bar = {"desc": desc, "leave": False, **job.progress_bar, "disable": not job.progress}
    for index, t in enumerate(tqdm(timesteps, **bar)):
        model_input = job.keep_references(unflat(scheduler.scale_model_input(flat(x), t)))
        view_t = job.view_timesteps(t)
        epsilon = epsilon_fn(model_input, view_t, Step(index, len(timesteps), float(view_t.max())))
        epsilon, variance = epsilon if isinstance(epsilon, tuple) else (epsilon, None)
        guided = epsilon
        if variance is not None and takes_variance(scheduler):
            epsilon = torch.cat([epsilon, variance.to(epsilon.dtype)], dim=2)
        x = job.keep_references(unflat(scheduler.step(flat(epsilon), t, flat(x), **step_kwargs).prev_sample))
        if job.callback is not None:
            denoised = job.keep_references(epsilon_to_sample(guided, model_input, view_t, job.score.alphas_cumprod))
            replaced = job.callback(index, t, x, denoised)
            x = x if replaced is None else job.keep_references(replaced.to(x))
    return x


def step_arguments(scheduler: SchedulerMixin, eta: float, generator: torch.Generator | None,
                   pixel_space: bool = False) -> dict:
    """diffusers' prepare_extra_step_kwargs: eta and the generator, where the scheduler's step takes them.

    In pixel space, a DDIM step that clips x̂0 (``clip_sample`` or ``thresholding``) also recomputes ε from
    the clipped x̂0 (``use_clipped_model_output``). diffusers' default keeps the unclipped ε in the direction
    term, so every step throws the clipped-off part of the image away: on ``models/tiny-if`` at CFG 4 that
    drained the samples to tinted blobs (category match 0.125, against 0.750 with the consistent ε; see its
    model card). Latent backbones keep diffusers' default, so their samples stay diffusers' own.
    """
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    clips = scheduler.config.get("clip_sample", False) or scheduler.config.get("thresholding", False)
    if pixel_space and clips and "use_clipped_model_output" in accepted:
        kwargs["use_clipped_model_output"] = True
    return kwargs
