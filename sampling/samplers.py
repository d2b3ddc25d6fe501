"""The built-in samplers: "mv", "consistency", "mixed", "2d" and "refine" (IM-3D §3.4).

A sampler's keyword arguments are its options: ``ConsistencySampler(consistency_scale=7.5,
consistency_ratio=0.5)``, ``MixedScoreSampler(schedule=MixSchedule("linear", 0.3, 0.9))``,
``RefineSampler(rounds=2, strength=0.5)``; each option's default is written once, here. Bad values fail when
the sampler is built, before any model loads.

Each step makes one shared-encoder call of the job's ``MultiviewScore`` for every mode the step needs (with
and without the prompt), already in ε, and combines them (see ``guidance``). A plugin sampler subclasses
``GuidedSampler`` and overrides ``modes`` (what to predict at a step) and ``combine``. The built-ins are
registered through the ``tunemv.samplers`` entry points, the mechanism plugins use.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.sampling.denoising_loop import SamplingJob, SamplingResult, denoise
from tunemv.sampling.external import ExternalTwoDScore
from tunemv.sampling.guidance import (
    MixSchedule,
    check_ratio,
    classifier_free,
    consistency_guidance,
    consistency_steps,
    mixed_score,
)

Predictions = dict[str, torch.Tensor]  # mode -> (B, V, C, h, w) ε


class GuidedSampler:
    """One score call per step, predictions in ε, combined by ``combine``; the base is plain "mv".

    Options: ``consistency_scale`` α and ``consistency_ratio`` K of consistency guidance (TuneMV3D §3.3,
    eq. 4), on a fraction K of the steps; K = 0 (this class's default) turns it off.
    """

    default_consistency_ratio = 0.0

    def __init__(self, consistency_scale: float = 7.5, consistency_ratio: float | None = None):
        self.consistency_scale = float(consistency_scale)
        self.consistency_ratio = self.default_consistency_ratio if consistency_ratio is None else float(consistency_ratio)
        check_ratio(self.consistency_ratio)

    def __call__(self, job: SamplingJob) -> SamplingResult:
        self.prepare(job)
        return SamplingResult(self.run(job, desc=type(self).__name__))

    def run(self, job: SamplingJob, **kwargs) -> torch.Tensor:
        """The shared loop (``denoise``) with this sampler's guided ε."""
        return denoise(job, partial(self.epsilon, job), **kwargs)

    # Modes whose unconditional (CFG) prediction ``combine`` never reads; the denoiser then skips their
    # unconditional copy (a branch and a decoder pass). Empty here, so a plugin gets every prediction; the
    # built-ins use ``COND_ONLY_INDEPENDENT``.
    cond_only_modes: frozenset[str] = frozenset()
    two_d: ExternalTwoDScore | None = None  # another model's "2d" score, where a sampler takes one

    def prepare(self, job: SamplingJob) -> None:
        self.guided_steps: frozenset[int] = frozenset()  # set per run by ``epsilon``, from that run's length
        self.variances: Predictions = {}  # learned-variance halves of the last prediction (IF)

    def guided_steps_of(self, num_steps: int) -> frozenset[int]:
        """The model evaluations (indices into one run of ``num_steps``) that take consistency guidance.

        Counted over the run's real evaluations, not ``steps × order``: Heun makes 2n − 1 of them, and a
        refine round runs only the tail of the schedule."""
        if self.consistency_scale == 0.0:
            return frozenset()
        return consistency_steps(num_steps, self.consistency_ratio)

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        return ("mv", "independent") if step_index in self.guided_steps else ("mv",)

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        epsilon = classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale)
        return self.consistency(epsilon, cond)

    def consistency(self, epsilon: torch.Tensor, cond: Predictions) -> torch.Tensor:
        if "independent" not in cond:
            return epsilon
        return consistency_guidance(epsilon, cond["mv"], cond["independent"], self.consistency_scale)

    # ---------------------------------------------------------------------------------------------- step
    def epsilon(self, job: SamplingJob, model_input: torch.Tensor, timesteps: torch.Tensor, step_index: int,
                num_steps: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        t = float(timesteps.max())  # references sit at 0; the step's t is the largest
        if step_index == 0:
            self.guided_steps = self.guided_steps_of(num_steps)
        modes = self.modes(job, t, step_index)
        cond, uncond = self.predict(job, model_input, timesteps, modes)
        epsilon = self.combine(job, cond, uncond, t, step_index)
        variance = self.variance(job, self.variances, t)
        return epsilon if variance is None else (epsilon, variance)

    def variance(self, job: SamplingJob, variances: Predictions, timestep: float) -> torch.Tensor | None:
        """The learned-variance half a DDPM step on IF uses: the prompted prediction's, as IFPipeline takes
        it; "mv" before "2d" (``MixedScoreSampler`` mixes the two by λ). None where the backbone has none."""
        return next((variances[mode] for mode in ("mv", "2d", "independent") if mode in variances), None)

    def predict(self, job: SamplingJob, model_input: torch.Tensor, timesteps: torch.Tensor,
                modes: tuple[str, ...]) -> tuple[Predictions, Predictions]:
        """ε for each mode, with the prompt and (under CFG) without; "2d" from ``two_d`` when there is one.
        The learned-variance halves, if any, are left in ``self.variances``."""
        external = self.two_d is not None and "2d" in modes
        own = tuple(mode for mode in modes if not (external and mode == "2d"))
        cond, uncond = {}, {}
        self.variances: Predictions = {}
        for score, wanted in ((job.score, own), (self.two_d, ("2d",) if external else ())):
            if wanted:
                out = score(model_input, timesteps, wanted, guided=job.guided, cond_only=self.cond_only_modes)
                cond.update(out.cond)
                uncond.update(out.uncond)
                self.variances.update(out.variance)
        return cond, uncond


# Consistency guidance takes ε_mv(c) − ε_ind(c) only: ε_ind(∅) is never needed.
COND_ONLY_INDEPENDENT = frozenset({"independent"})


class TwoDModelOption:
    """Mixin for samplers with a ``two_d_model`` option: another 2D backbone whose ε replaces the frozen
    backbone's "2d" score (a hub id, a folder or a loaded ``Backbone``, in the same space)."""

    two_d_model: str | Backbone | None = None

    def prepare(self, job: SamplingJob) -> None:
        super().prepare(job)
        self.two_d = None if self.two_d_model is None else ExternalTwoDScore.for_job(
            self.two_d_model, job.score.backbone, job.prompts, job.negative_prompts if job.guided else None,
            job.score.denoiser.view_chunk)


class MultiviewSampler(GuidedSampler):
    """The adapter's multiview prediction with text CFG (consistency guidance only if a ratio is given)."""

    cond_only_modes = COND_ONLY_INDEPENDENT


class ConsistencySampler(GuidedSampler):
    """"mv" plus consistency guidance on a fraction K (default 0.5) of the steps (TuneMV3D §3.3, eq. 4)."""

    cond_only_modes = COND_ONLY_INDEPENDENT
    default_consistency_ratio = 0.5


class MixedScoreSampler(TwoDModelOption, GuidedSampler):
    """λ(t)·ε_mv + (1 − λ(t))·ε_2d, each with CFG (Distillation-free Text-to-3D eq. 2, §3.4), plus
    consistency guidance if a ratio is given.

    Options: ``schedule`` λ(t), a ``MixSchedule`` or the name of its kind (start 0.2, end 1); ``two_d_model``
    for ε_2d.
    """

    cond_only_modes = COND_ONLY_INDEPENDENT

    def __init__(self, schedule: MixSchedule | str = "quadratic", two_d_model: str | Backbone | None = None,
                 consistency_scale: float = 7.5, consistency_ratio: float | None = None):
        super().__init__(consistency_scale, consistency_ratio)
        self.schedule = MixSchedule(schedule) if isinstance(schedule, str) else schedule
        self.two_d_model = two_d_model

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        weight = self.schedule(timestep, job.num_train_timesteps)
        # λ = 0 needs no multiview score, except where consistency guidance takes ε_mv(c) − ε_ind(c).
        guided = step_index in self.guided_steps
        modes = super().modes(job, timestep, step_index) if weight > 0 or guided else ()
        return (*modes, "2d") if weight < 1 else modes

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        weight = self.schedule(timestep, job.num_train_timesteps)
        two_d = classifier_free(cond["2d"], uncond.get("2d"), job.guidance_scale) if "2d" in cond else None
        multiview = classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale) if "mv" in cond else None
        epsilon = mixed_score(multiview, two_d, weight)
        return self.consistency(epsilon, cond)

    def variance(self, job: SamplingJob, variances: Predictions, timestep: float) -> torch.Tensor | None:
        if "mv" in variances and "2d" in variances:
            return mixed_score(variances["mv"], variances["2d"], self.schedule(timestep, job.num_train_timesteps))
        return super().variance(job, variances, timestep)


class TwoDSampler(TwoDModelOption, GuidedSampler):
    """The frozen backbone (or the ``two_d_model``) view by view: the baseline."""

    def __init__(self, two_d_model: str | Backbone | None = None):
        super().__init__(consistency_scale=0.0)
        self.two_d_model = two_d_model

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        return ("2d",)

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        return classifier_free(cond["2d"], uncond.get("2d"), job.guidance_scale)


class RefineSampler(GuidedSampler):
    """IM-3D's loop (IM-3D §3.4): sample, render the NeuS field fused from the clean views at the same
    cameras, re-noise the renders to t* = ``strength``·T and denoise again, ``rounds`` times.

    The renders are consistent by construction (one field); denoising from t* restores detail.
    """

    cond_only_modes = COND_ONLY_INDEPENDENT

    def __init__(self, rounds: int = 2, strength: float = 0.5, consistency_scale: float = 7.5,
                 consistency_ratio: float | None = None):
        super().__init__(consistency_scale, consistency_ratio)
        if rounds < 0 or int(rounds) != rounds:
            raise ValueError(f"rounds must be a whole number >= 0, got {rounds}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        self.rounds, self.strength = int(rounds), float(strength)

    def __call__(self, job: SamplingJob) -> SamplingResult:
        self.prepare(job)
        latents = self.run(job, desc="refine 0")
        start = _start_index(job.steps, self.strength)
        for round_index in range(self.rounds):
            noise = torch.randn(latents.shape, generator=job.generator, device="cpu",
                                dtype=latents.dtype).to(latents.device)
            noised = renoise(job.scheduler, job.steps, start, render_field(job, latents), noise)
            latents = self.run(job, latents=noised, start_index=start,
                               desc=f"refine {round_index + 1}")
        return SamplingResult(latents)


def renoise(scheduler, steps: int, start: int, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B, V, C, h, w) ``clean`` views noised to the level of step ``start`` of a ``steps``-step schedule.

    As diffusers' img2img pipelines do it: the schedule is set afresh and its begin index placed first, because
    σ-indexed schedulers (Euler, DPM-Solver++, UniPC, Heun, LMS) read the noise level of ``add_noise`` from
    their step index, which after a finished run points at the schedule's end, where σ = 0.
    """
    scheduler.set_timesteps(steps, device=clean.device)
    first = start * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    t_start = scheduler.timesteps[first: first + 1]
    flat = rearrange(clean, "b v c h w -> (b v) c h w")
    noised = scheduler.add_noise(flat, rearrange(noise, "b v c h w -> (b v) c h w"), t_start.repeat(len(flat)))
    return rearrange(noised, "(b v) c h w -> b v c h w", b=clean.shape[0])


def _start_index(steps: int, strength: float) -> int:
    """The first step of a re-noised run, as diffusers' img2img: strength 1 starts from pure noise."""
    return steps - max(1, min(steps, round(steps * strength)))


@torch.no_grad()
def render_field(job: SamplingJob, latents: torch.Tensor) -> torch.Tensor:
    """The NeuS field fused from clean ``latents`` (t = 0), rendered at the job's cameras; references kept."""
    zeros = torch.zeros(latents.shape[:2], dtype=torch.long, device=latents.device)
    renders = job.score.denoiser.render_condition(latents, zeros, job.cameras).image
    return job.keep_references(renders.to(latents.dtype))
