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
from typing import Any

import torch
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.denoiser import ModePredictions
from tunemv.sampling.denoising_loop import SamplingJob, SamplingResult, Step, denoise
from tunemv.sampling.external import ExternalTwoDScore
from tunemv.sampling.guidance import (
    MixSchedule,
    check_ratio,
    classifier_free,
    consistency_guidance,
    consistency_steps,
    mixed_score,
)

Scores = dict[str, Any]  # mode -> the score serving it in place of the job's own (another model's "2d")


class GuidedSampler:
    """One score call per step, predictions in ε, combined by ``combine``; the base is plain "mv".

    Options: ``consistency_scale`` α and ``consistency_ratio`` K of consistency guidance (TuneMV3D §3.3,
    eq. 4), on a fraction K of the steps; K = 0 (this class's default) turns it off.

    A sampler holds its options and nothing else: what one run needs (another model's score) is made per call
    and passed along, and each hook is told its ``Step``, so one instance serves any number of runs, batches
    or threads alike. A plugin overrides ``modes(job, step)`` and ``combine(job, predictions, step)``.
    """

    default_consistency_ratio = 0.0
    # Modes whose unconditional (CFG) prediction ``combine`` never reads; the denoiser then skips their
    # unconditional copy (a branch and a decoder pass). Empty here, so a plugin gets every prediction; the
    # built-ins use ``COND_ONLY_INDEPENDENT``.
    cond_only_modes: frozenset[str] = frozenset()

    def __init__(self, consistency_scale: float = 7.5, consistency_ratio: float | None = None):
        self.consistency_scale = float(consistency_scale)
        self.consistency_ratio = self.default_consistency_ratio if consistency_ratio is None else float(consistency_ratio)
        check_ratio(self.consistency_ratio)

    def __call__(self, job: SamplingJob) -> SamplingResult:
        return SamplingResult(self.run(job, self.scores(job), desc=type(self).__name__))

    def scores(self, job: SamplingJob) -> Scores:
        """The scores this run takes besides the job's own, by mode; none here."""
        return {}

    def run(self, job: SamplingJob, scores: Scores, **kwargs) -> torch.Tensor:
        """The shared loop (``denoise``) with this sampler's guided ε."""
        return denoise(job, partial(self.epsilon, job, scores), **kwargs)

    def takes_consistency(self, step: Step) -> bool:
        """Whether this model evaluation takes consistency guidance: round(K·n) of a run's n evaluations,
        spread uniformly. Counted over the run's real evaluations, not ``steps × order``: Heun makes 2n − 1 of
        them, and a refine round runs only the tail of the schedule."""
        return self.consistency_scale != 0.0 and step.index in consistency_steps(step.count, self.consistency_ratio)

    def consistency_scale_at(self, step: Step) -> float:
        """α at ``step``; a plugin may schedule it."""
        return self.consistency_scale

    def modes(self, job: SamplingJob, step: Step) -> tuple[str, ...]:
        return ("mv", "independent") if self.takes_consistency(step) else ("mv",)

    def combine(self, job: SamplingJob, predictions: ModePredictions, step: Step) -> torch.Tensor:
        epsilon = classifier_free(predictions.cond["mv"], predictions.uncond.get("mv"), job.guidance_scale)
        return self.consistency(epsilon, predictions, step)

    def consistency(self, epsilon: torch.Tensor, predictions: ModePredictions, step: Step) -> torch.Tensor:
        cond = predictions.cond
        if "independent" not in cond:
            return epsilon
        return consistency_guidance(epsilon, cond["mv"], cond["independent"], self.consistency_scale_at(step))

    # ---------------------------------------------------------------------------------------------- step
    def epsilon(self, job: SamplingJob, scores: Scores, model_input: torch.Tensor, timesteps: torch.Tensor,
                step: Step) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(guided ε, the learned-variance half or None) at one model evaluation."""
        predictions = self.predict(job, scores, model_input, timesteps, self.modes(job, step))
        return self.combine(job, predictions, step), self.variance(job, predictions, step)

    def variance(self, job: SamplingJob, predictions: ModePredictions, step: Step) -> torch.Tensor | None:
        """The learned-variance half a DDPM step on IF uses: the prompted prediction's, as IFPipeline takes
        it; "mv" before "2d" (``MixedScoreSampler`` mixes the two by λ). None where the backbone has none."""
        variances = predictions.variance
        return next((variances[mode] for mode in ("mv", "2d", "independent") if mode in variances), None)

    def predict(self, job: SamplingJob, scores: Scores, model_input: torch.Tensor, timesteps: torch.Tensor,
                modes: tuple[str, ...]) -> ModePredictions:
        """ε for each mode, with the prompt and (under CFG) without, the learned-variance halves with them;
        a mode in ``scores`` from that score, the rest from the job's own, one call each."""
        routed: dict[Any, list[str]] = {}
        for mode in modes:
            routed.setdefault(scores.get(mode, job.score), []).append(mode)
        predictions = ModePredictions({}, {})
        for score, wanted in sorted(routed.items(), key=lambda item: item[0] is not job.score):
            predictions = predictions.merged(score(model_input, timesteps, tuple(wanted), guided=job.guided,
                                                   cond_only=self.cond_only_modes))
        return predictions


# Consistency guidance takes ε_mv(c) − ε_ind(c) only: ε_ind(∅) is never needed.
COND_ONLY_INDEPENDENT = frozenset({"independent"})


class TwoDModelOption:
    """Mixin for samplers with a ``two_d_model`` option: another 2D backbone whose ε replaces the frozen
    backbone's "2d" score (a hub id, a folder or a loaded ``Backbone``, in the same space)."""

    two_d_model: str | Backbone | None = None

    def scores(self, job: SamplingJob) -> Scores:
        if self.two_d_model is None:
            return super().scores(job)
        return {**super().scores(job), "2d": ExternalTwoDScore.for_job(
            self.two_d_model, job.score.backbone, job.prompts, job.negative_prompts if job.guided else None,
            job.score.view_chunk)}


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

    def modes(self, job: SamplingJob, step: Step) -> tuple[str, ...]:
        weight = self.schedule(step.timestep, job.num_train_timesteps)
        # λ = 0 needs no multiview score, except where consistency guidance takes ε_mv(c) − ε_ind(c).
        modes = super().modes(job, step) if weight > 0 or self.takes_consistency(step) else ()
        return (*modes, "2d") if weight < 1 else modes

    def combine(self, job: SamplingJob, predictions: ModePredictions, step: Step) -> torch.Tensor:
        cond, uncond = predictions.cond, predictions.uncond
        weight = self.schedule(step.timestep, job.num_train_timesteps)
        two_d = classifier_free(cond["2d"], uncond.get("2d"), job.guidance_scale) if "2d" in cond else None
        multiview = classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale) if "mv" in cond else None
        epsilon = mixed_score(multiview, two_d, weight)
        return self.consistency(epsilon, predictions, step)

    def variance(self, job: SamplingJob, predictions: ModePredictions, step: Step) -> torch.Tensor | None:
        variances = predictions.variance
        if "mv" in variances and "2d" in variances:
            return mixed_score(variances["mv"], variances["2d"], self.schedule(step.timestep, job.num_train_timesteps))
        return super().variance(job, predictions, step)


class TwoDSampler(TwoDModelOption, GuidedSampler):
    """The frozen backbone (or the ``two_d_model``) view by view: the baseline."""

    def __init__(self, two_d_model: str | Backbone | None = None):
        super().__init__(consistency_scale=0.0)
        self.two_d_model = two_d_model

    def modes(self, job: SamplingJob, step: Step) -> tuple[str, ...]:
        return ("2d",)

    def combine(self, job: SamplingJob, predictions: ModePredictions, step: Step) -> torch.Tensor:
        return classifier_free(predictions.cond["2d"], predictions.uncond.get("2d"), job.guidance_scale)


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
        scores = self.scores(job)
        latents = self.run(job, scores, desc="refine 0")
        start = _start_index(job.steps, self.strength)
        for round_index in range(self.rounds):
            noise = torch.randn(latents.shape, generator=job.generator, device="cpu",
                                dtype=latents.dtype).to(latents.device)
            noised = renoise(job.scheduler, job.steps, start, render_field(job, latents), noise)
            latents = self.run(job, scores, latents=noised, start_index=start, desc=f"refine {round_index + 1}")
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
    return job.keep_references(job.score.render_field(latents).to(latents.dtype))
