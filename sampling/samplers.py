"""The built-in samplers: "mv", "consistency", "mixed", "2d" and "refine" (IM-3D, seed 000 §3.4).

Each step makes one shared-encoder ``MultiviewDenoiser.predict`` call for every mode the step needs (with and
without the prompt), converts each prediction to ε and combines them (see ``guidance``). A plugin sampler
subclasses ``GuidedSampler`` and overrides ``modes`` (what to predict at a step) and ``combine``.
"""

from __future__ import annotations

from functools import partial

import torch

from tunemv.sampling.algebra import to_epsilon
from tunemv.sampling.guidance import classifier_free, consistency_guidance, consistency_steps, mixed_score
from tunemv.sampling.job import SamplingJob, SamplingResult, denoise
from tunemv.sampling.registry import register_sampler

Predictions = dict[str, torch.Tensor]  # mode -> (B, V, C, h, w) ε


class GuidedSampler:
    """One ``predict`` call per step, predictions in ε, combined by ``combine``; the base is plain "mv"."""

    default_consistency_ratio = 0.0

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

    def prepare(self, job: SamplingJob) -> None:
        ratio = self.default_consistency_ratio if job.consistency_ratio is None else job.consistency_ratio
        self.guided_steps = consistency_steps(job.steps * job.scheduler.order, ratio) \
            if job.consistency_scale != 0.0 else frozenset()

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        return ("mv", "independent") if step_index in self.guided_steps else ("mv",)

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        epsilon = classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale)
        return self.consistency(job, epsilon, cond)

    @staticmethod
    def consistency(job: SamplingJob, epsilon: torch.Tensor, cond: Predictions) -> torch.Tensor:
        if "independent" not in cond:
            return epsilon
        return consistency_guidance(epsilon, cond["mv"], cond["independent"], job.consistency_scale)

    # ---------------------------------------------------------------------------------------------- step
    def epsilon(self, job: SamplingJob, model_input: torch.Tensor, timesteps: torch.Tensor, step_index: int,
                num_steps: int) -> torch.Tensor:
        t = float(timesteps.max())  # references sit at 0; the step's t is the largest
        modes = self.modes(job, t, step_index)
        cond, uncond = self.predict(job, model_input, timesteps, modes)
        return self.combine(job, cond, uncond, t, step_index)

    def predict(self, job: SamplingJob, model_input: torch.Tensor, timesteps: torch.Tensor,
                modes: tuple[str, ...]) -> tuple[Predictions, Predictions]:
        """ε for each mode, with the prompt and (under CFG) without; an external "2d" model runs on its own."""
        external = job.two_d is not None and "2d" in modes
        own = tuple(mode for mode in modes if not (external and mode == "2d"))
        cond, uncond = {}, {}
        if own:
            uncond_text = job.uncond_text if job.guidance_scale > 1.0 else None
            with torch.no_grad():
                out = job.denoiser.predict(
                    model_input, timesteps, job.cameras, job.text.hidden_states, own,
                    None if uncond_text is None else uncond_text.hidden_states, job.text.added_cond_kwargs,
                    None if uncond_text is None else uncond_text.added_cond_kwargs, cond_only=self.cond_only_modes)
            to_eps = lambda p: to_epsilon(p, model_input, timesteps, job.alphas_cumprod, job.prediction_type)  # noqa: E731
            cond = {mode: to_eps(p) for mode, p in out.cond.items()}
            uncond = {mode: to_eps(p) for mode, p in out.uncond.items()}
        if external:
            with torch.no_grad():
                cond["2d"], two_d_uncond = job.two_d(model_input, timesteps)
            if two_d_uncond is not None and job.guidance_scale > 1.0:
                uncond["2d"] = two_d_uncond
        return cond, uncond


# Consistency guidance takes ε_mv(c) − ε_ind(c) only: ε_ind(∅) is never needed.
COND_ONLY_INDEPENDENT = frozenset({"independent"})


@register_sampler("mv")
class MultiviewSampler(GuidedSampler):
    """The adapter's multiview prediction with text CFG (consistency guidance only if a ratio is given)."""

    cond_only_modes = COND_ONLY_INDEPENDENT


@register_sampler("consistency")
class ConsistencySampler(GuidedSampler):
    """"mv" plus consistency guidance on a fraction K (default 0.5) of the steps (seed 003 §3.3, eq. 4)."""

    cond_only_modes = COND_ONLY_INDEPENDENT

    default_consistency_ratio = 0.5


@register_sampler("mixed")
class MixedScoreSampler(GuidedSampler):
    """λ(t)·ε_mv + (1 − λ(t))·ε_2d, each with CFG (seed 002 eq. 2, §3.4), plus consistency guidance if asked."""

    cond_only_modes = COND_ONLY_INDEPENDENT

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        weight = job.mix_schedule(timestep, job.num_train_timesteps)
        # λ = 0 needs no multiview score, except where consistency guidance takes ε_mv(c) − ε_ind(c).
        guided = step_index in self.guided_steps
        modes = super().modes(job, timestep, step_index) if weight > 0 or guided else ()
        return (*modes, "2d") if weight < 1 else modes

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        weight = job.mix_schedule(timestep, job.num_train_timesteps)
        two_d = classifier_free(cond["2d"], uncond.get("2d"), job.guidance_scale) if "2d" in cond else None
        multiview = classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale) if "mv" in cond else None
        epsilon = mixed_score(multiview, two_d, weight)
        return self.consistency(job, epsilon, cond)


@register_sampler("2d")
class TwoDSampler(GuidedSampler):
    """The frozen backbone (or the job's other 2D model) view by view: the baseline."""

    def modes(self, job: SamplingJob, timestep: float, step_index: int) -> tuple[str, ...]:
        return ("2d",)

    def combine(self, job: SamplingJob, cond: Predictions, uncond: Predictions, timestep: float,
                step_index: int) -> torch.Tensor:
        return classifier_free(cond["2d"], uncond.get("2d"), job.guidance_scale)


@register_sampler("refine")
class RefineSampler(GuidedSampler):
    """IM-3D's loop (seed 000 §3.4): sample, render the NeuS field fused from the clean views at the same
    cameras, re-noise the renders to t* = ``refine_strength``·T and denoise again, ``refine_rounds`` times.

    The renders are consistent by construction (one field); denoising from t* restores detail.
    """

    cond_only_modes = COND_ONLY_INDEPENDENT

    def __call__(self, job: SamplingJob) -> SamplingResult:
        self.prepare(job)
        latents = self.run(job, desc="refine 0")
        start = _start_index(job.steps, job.refine_strength)
        for round_index in range(job.refine_rounds):
            renders = render_field(job, latents)
            timesteps = job.scheduler.timesteps  # set by the first run; the same for every round
            t_start = timesteps[start * job.scheduler.order: start * job.scheduler.order + 1]
            noise = torch.randn(latents.shape, generator=job.generator, device="cpu",
                                dtype=latents.dtype).to(latents.device)
            flat_shape = (-1, *latents.shape[2:])
            noised = job.scheduler.add_noise(renders.reshape(flat_shape), noise.reshape(flat_shape),
                                             t_start.repeat(renders.shape[0] * renders.shape[1]))
            latents = self.run(job, latents=noised.reshape(latents.shape), start_index=start,
                               desc=f"refine {round_index + 1}")
        return SamplingResult(latents)


def _start_index(steps: int, strength: float) -> int:
    """The first step of a re-noised run, as diffusers' img2img: strength 1 starts from pure noise."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"refine_strength must be in (0, 1], got {strength}")
    return steps - max(1, min(steps, round(steps * strength)))


@torch.no_grad()
def render_field(job: SamplingJob, latents: torch.Tensor) -> torch.Tensor:
    """The NeuS field fused from clean ``latents`` (t = 0), rendered at the job's cameras; references kept."""
    zeros = torch.zeros(latents.shape[:2], dtype=torch.long, device=latents.device)
    renders = job.denoiser.render_condition(latents, zeros, job.cameras).image
    return job.keep_references(renders.to(latents.dtype))
