"""Prediction algebra: every backbone parameterisation to ε and back, at per-view timesteps.

Samplers combine predictions (CFG, mixed score, consistency guidance) as ε: the combinations are linear, and
ε is the one parameterisation in which the frozen backbone, another 2D model and the multiview model agree
whatever each was trained to predict. The x_t here is the DDPM-space sample, x_t = √ᾱ·x0 + √(1−ᾱ)·ε, which
is what the UNet sees (``scheduler.scale_model_input`` maps σ-space schedulers back to it).
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alpha_bar(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ᾱ at (B, V) timesteps -> (B, V, 1, 1, 1); fractional timesteps (Euler, Heun) interpolate linearly."""
    table = alphas_cumprod.to(timesteps.device, torch.float64)
    t = timesteps.to(torch.float64).clamp(0, len(table) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(table) - 1)
    value = table[low] + (table[high] - table[low]) * (t - low)
    return value[..., None, None, None]


def _coefficients(alphas_cumprod, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = alpha_bar(alphas_cumprod, timesteps)
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def to_epsilon(prediction: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
               alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """(B, V, C, h, w) prediction of x_t=``sample`` at (B, V) ``timesteps`` -> ε.

    v = √ᾱ·ε − √(1−ᾱ)·x0 gives ε = √ᾱ·v + √(1−ᾱ)·x_t; x0 gives ε = (x_t − √ᾱ·x0) / √(1−ᾱ).
    """
    if prediction_type == "epsilon":
        return prediction
    sqrt_a, sqrt_1ma = _coefficients(alphas_cumprod, timesteps, prediction)
    if prediction_type == "v_prediction":
        return sqrt_a * prediction + sqrt_1ma * sample
    if prediction_type == "sample":
        return (sample - sqrt_a * prediction) / sqrt_1ma
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_epsilon(epsilon: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
                 alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The inverse of ``to_epsilon``: ε -> the ``prediction_type`` parameterisation."""
    if prediction_type == "epsilon":
        return epsilon
    x0 = epsilon_to_sample(epsilon, sample, timesteps, alphas_cumprod)
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        sqrt_a, sqrt_1ma = _coefficients(alphas_cumprod, timesteps, epsilon)
        return sqrt_a * epsilon - sqrt_1ma * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def epsilon_to_sample(epsilon: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
                      alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x̂0 = (x_t − √(1−ᾱ)·ε) / √ᾱ: the clean views a step's ε points at (previews, the refine loop)."""
    sqrt_a, sqrt_1ma = _coefficients(alphas_cumprod, timesteps, epsilon)
    return (sample - sqrt_1ma * epsilon) / sqrt_a
