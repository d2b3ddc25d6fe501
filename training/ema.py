"""The EMA of the trainable weights, with diffusers' decay warm-up.

A fixed decay d keeps d^n of the step-1 weights after n updates: at d = 0.999 a 250-step snapshot is 78% its
initial weights, and for zero-initialised control branches that is a 78% shrink of what was learned.
diffusers' ``EMAModel`` warms the decay up as min(d, (1 + n) / (10 + n)): the start's weight is under 1e-8
after 50 updates, the average spans about the last ninth of the run until n ≈ 9/(1 − d), and then it is the
plain EMA. torch's ``AveragedModel`` calls ``multi_avg_fn(ema, live, n)`` with n the updates averaged so far,
so the warm-up fits there.
"""

from __future__ import annotations

import torch


def warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after ``num_averaged`` earlier ones (diffusers ``EMAModel.get_decay``)."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def warmup_ema_multi_avg_fn(decay: float):
    """``AveragedModel(multi_avg_fn=...)``: ema ← ema + (1 − d_n)·(live − ema), d_n the warmed-up decay."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay {decay}: must be in [0, 1)")

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], live_params: list[torch.Tensor], num_averaged) -> None:
        weight = 1.0 - warmup_decay(decay, int(num_averaged))  # one host sync a step, as the non-finite guard
        torch._foreach_lerp_(ema_params, live_params, weight)

    return update
