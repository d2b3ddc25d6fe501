"""Noising for the diffusion loss: views noised by the backbone's training scheduler, the target of its
parameterisation, the timestep shift for many views and the high-noise loss weight."""

from __future__ import annotations

import math

import torch
from einops import rearrange


def flat_views(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b v ... -> (b v) ...")


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, V, C, h, w) views noised at (B, V) timesteps by the backbone's training ``scheduler``."""
    return scheduler.add_noise(flat_views(x0), flat_views(noise), flat_views(t)).unflatten(0, x0.shape[:2])


def diffusion_target(scheduler, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                     ) -> torch.Tensor:
    """The plain denoising loss's target in the backbone's parameterisation: ε, x0 or v, for (B, V) views."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return scheduler.get_velocity(flat_views(x0), flat_views(noise), flat_views(t)).unflatten(0, x0.shape[:2])


def signal_to_noise(scheduler, device: torch.device) -> torch.Tensor:
    """SNR(t) = ᾱ / (1 − ᾱ) over the training grid, float64."""
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
    return alphas / (1 - alphas)


def check_timestep_shift(shift: float | str | None) -> None:
    if shift is None or shift == "views":
        return
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not math.isfinite(shift) or shift < 1:
        raise ValueError(f"timestep_shift must be a number >= 1, 'views' or null, got {shift!r}")


def shift_timesteps(scheduler, t: torch.Tensor, shift: float) -> torch.Tensor:
    """Training timesteps moved toward low SNR: log-SNR(t') = log-SNR(t) − log(shift), t' on the training grid.

    MV-Adapter shifts by the number of views, since V views of one object carry more signal between them than
    one image, so the layout (and the pose) is settled at noisier steps than a single image's. ``shift`` 1 is
    the identity.
    """
    log_snr = signal_to_noise(scheduler, t.device).log()  # decreasing in t
    target = log_snr[t] - math.log(shift)
    # The first grid step at or below the target log-SNR (searchsorted wants an increasing sequence).
    index = torch.searchsorted(-log_snr, -target)
    return index.clamp(max=len(log_snr) - 1).to(t.dtype)


def check_high_noise_weight(cap: float | None) -> None:
    if cap is None:
        return
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap < 1:
        raise ValueError(f"high_noise_weight must be a number >= 1 or null, got {cap!r}")


def high_noise_weights(scheduler, t: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-sample weights of the ε loss: clip(1 / SNR(t), 1, cap), divided by their mean over the training grid.

    The ε loss is SNR(t) times the x0 loss, so at high noise, where the pose and the layout are settled, it
    barely punishes a wrong x̂0 (SNR 0.025 at t = 900 under the cosine schedule). Weighting by 1 / SNR there
    makes it the x0 loss, and keeping the ε loss where SNR > 1 is Salimans & Ho's truncated-SNR weighting
    ("Progressive Distillation", §4); ``cap`` bounds it for an ε network, whose x̂0 error grows without bound
    as SNR → 0. The mean over uniform t is 1, so the loss's scale (and gradient clipping) is unchanged on
    average. ``cap`` 1 is the plain ε loss.
    """
    weights = (1 / signal_to_noise(scheduler, t.device)).clamp(1.0, cap)
    return (weights / weights.mean())[t].float()
