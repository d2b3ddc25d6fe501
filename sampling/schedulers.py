"""The step rule: any diffusers scheduler, by a short name or its class name, built from the backbone's config.

Samplers hand schedulers ε (see ``algebra``), so the scheduler is always built with
``prediction_type="epsilon"``. A learned-variance schedule (IF) stays learned for DDPM, which IFPipeline
samples with: the loop appends the prompted prediction's variance half to the guided ε, as IFPipeline does.
Other schedulers have no use for a variance and get "fixed_small".
"""

from __future__ import annotations

from typing import Any

import diffusers
from diffusers import SchedulerMixin

from tunemv.errors import TunemvError

# short name -> (diffusers class, extra config); anything else is tried as a diffusers class name
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    # diffusers refuses first-order "dpmsolver" with its default final σ of zero
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}


AUTO = "auto"  # the family's own step rule: see ``default_scheduler``


def default_scheduler(family: str) -> str:
    """What "auto" means: DDPM for pixel-space (IF-family) backbones, as IF's own pipelines sample, DDIM otherwise.

    DDIM works on pixel backbones too: its steps use the ε of the clipped x̂0 there (``job.step_arguments``),
    without which it drained ``models/tiny-if``'s samples to tinted blobs (the model card has the figures).
    """
    return "ddpm" if family == "if" else "ddim"


class SchedulerError(TunemvError, ValueError):
    """An unknown scheduler name."""


def available_schedulers() -> list[str]:
    return [AUTO, *SCHEDULERS]


def make_scheduler(name: str | SchedulerMixin, scheduler_config: dict[str, Any], family: str | None = None,
                   **overrides) -> SchedulerMixin:
    """A fresh scheduler named ``name`` ("auto", "ddim", "dpmsolver++", "EulerDiscreteScheduler", ...) over the
    backbone's noise schedule; "auto" is ``default_scheduler(family)``. An instance is rebuilt from its own
    config, so its state is never shared."""
    if name == AUTO:
        name = default_scheduler(family)
    if isinstance(name, SchedulerMixin):
        cls, extra, base = type(name), {}, dict(name.config)
    else:
        class_name, extra = SCHEDULERS.get(name, (name, {}))
        cls = getattr(diffusers, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
            raise SchedulerError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} "
                                 "or a diffusers scheduler class name")
        base = dict(scheduler_config)
    config = {**base, **extra, **overrides, "prediction_type": "epsilon"}
    if config.get("variance_type") in LEARNED_VARIANCE and not issubclass(cls, diffusers.DDPMScheduler):
        config["variance_type"] = "fixed_small"
    return cls.from_config(config)


LEARNED_VARIANCE = ("learned", "learned_range")


def takes_variance(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler's step reads a learned-variance half appended to ε (DDPM on IF)."""
    return scheduler.config.get("variance_type") in LEARNED_VARIANCE
