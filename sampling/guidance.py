"""Guidance pieces, per step and per view, all in ε (TuneMV3D §3.3; Distillation-free Text-to-3D §3.3–3.4).

- text CFG:            ε_m = ε_m(∅) + w·(ε_m(c) − ε_m(∅))
- mixed score:         ε = λ(t)·ε_mv + (1 − λ(t))·ε_2d                    (Distillation-free Text-to-3D eq. 2)
- consistency guidance ε ← ε + α·(ε_mv(c) − ε_ind(c)) on a fraction K of the steps, spread uniformly.
  For a DDIM step, x_{t−1} is affine in ε with the same coefficient for every ε, so this is exactly
  TuneMV3D eq. 4, x̂ = x + α(x − x̄), with x and x̄ the steps taken with ε_mv(c) and ε_ind(c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIX_SCHEDULES = ("constant", "linear", "cosine", "quadratic")
MIX_SCHEDULE_ALIASES = {"seed002": "quadratic"}  # the name it had before the papers were cited by name


@dataclass(frozen=True)
class MixSchedule:
    """λ(t), the weight of the multiview score, as a function of the noise level τ = t / T ∈ [0, 1].

    ``start`` is λ at pure noise (τ = 1), ``end`` at the clean image (τ = 0):
    - "constant": λ = end, whatever t;
    - "linear":   λ = end + (start − end)·τ;
    - "cosine":   λ = end + (start − end)·(1 − cos(πτ))/2, flat at both ends;
    - "quadratic": λ = start + (end − start)·(1 − τ)², small for the high-noise steps and growing fast as
      t → 0, our reading of Distillation-free Text-to-3D §3.4 ("a relatively smaller value, gradually
      increasing as T decreases"); "seed002" is an alias.
    """

    kind: str = "quadratic"
    start: float = 0.2
    end: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "kind", MIX_SCHEDULE_ALIASES.get(self.kind, self.kind))
        if self.kind not in MIX_SCHEDULES:
            raise ValueError(f"unknown mix schedule {self.kind!r}; choose one of {', '.join(MIX_SCHEDULES)}")
        for name in ("start", "end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mix schedule {name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def constant(cls, value: float) -> MixSchedule:
        return cls("constant", value, value)

    def __call__(self, timestep: float, num_train_timesteps: int) -> float:
        tau = min(max(float(timestep) / num_train_timesteps, 0.0), 1.0)
        ramp = {"constant": 0.0, "linear": tau, "cosine": (1 - math.cos(math.pi * tau)) / 2,
                "quadratic": 1 - (1 - tau) ** 2}
        return self.end + (self.start - self.end) * ramp[self.kind]


def check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"consistency_ratio must be in [0, 1], got {ratio}")


def consistency_steps(num_steps: int, ratio: float) -> frozenset[int]:
    """The indices of round(ratio·n) of n steps, spread uniformly: K = 0.5 of 10 -> {1, 3, 5, 7, 9}."""
    check_ratio(ratio)
    count = round(ratio * num_steps)
    return frozenset(int((j + 0.5) * num_steps / count) for j in range(count)) if count else frozenset()


def classifier_free(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """ε(∅) + w·(ε(c) − ε(∅)), written as diffusers' pipelines write it so that results match theirs."""
    return cond if uncond is None else uncond + scale * (cond - uncond)


def mixed_score(multiview: torch.Tensor, two_d: torch.Tensor, weight: float) -> torch.Tensor:
    """λ·ε_mv + (1 − λ)·ε_2d; λ = 1 and λ = 0 return one input unchanged (bit-exact, no rounding)."""
    if weight == 1.0:
        return multiview
    if weight == 0.0:
        return two_d
    return weight * multiview + (1.0 - weight) * two_d


def consistency_guidance(epsilon: torch.Tensor, multiview_cond: torch.Tensor, independent_cond: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """ε + α·(ε_mv(c) − ε_ind(c)); α = 0 returns ε unchanged."""
    return epsilon if scale == 0.0 else epsilon + scale * (multiview_cond - independent_cond)
