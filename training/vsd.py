"""Variational score distillation for a one-step multiview generator (GECO §3.1, eq. 1–2).

GECO trains the generator G with the gradient of eq. 1,

    ∇θ L_VSD = E_{t,ε}[ w(t) · (ε_pre(x_t; y, t) − ε_stu(x_t; y, t)) · ∂G(θ, z)/∂θ ],

where x_t is G's output x̂0 noised to t, ε_pre the frozen teacher and ε_stu a student score trained online on
G's outputs with the plain denoising loss (eq. 2). Autograd needs a loss, not a gradient, so the update is
written as a surrogate whose gradient with respect to x̂0 is exactly w·(ε_pre − ε_stu): the stop-gradient
form ½·w·‖x̂0 − sg(x̂0 − g)‖², with g = ε_pre − ε_stu (``vsd_surrogate_loss``).

w(t): GECO does not give one. ``dmd_weight`` is DMD's normaliser (One-step Diffusion with Distribution
Matching Distillation, eq. 8), 1 / mean|x̂0 − x̂0_pre| per object, which makes the step size independent of
how far the teacher's denoised estimate is from G's output at that t; ``sds_weight`` is the σ_t² = 1 − ᾱ_t
of DreamFusion and ProlificDreamer. t is drawn from [0.02, 0.98]·T, as GECO §4.1 does.
"""

from __future__ import annotations

import torch

T_RANGE = (0.02, 0.98)  # GECO §4.1: the student's (and the update's) t as a fraction of T


def vsd_surrogate_loss(generated: torch.Tensor, epsilon_teacher: torch.Tensor, epsilon_student: torch.Tensor,
                       weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """A scalar whose gradient w.r.t. ``generated`` (B, V, C, h, w) is w·(ε_pre − ε_stu) / B (eq. 1, mean
    over objects). ``weight``: a float or (B,) per object; the scores are detached (they are not trained by
    this loss: the teacher is frozen and the student has its own, eq. 2)."""
    if generated.shape != epsilon_teacher.shape or generated.shape != epsilon_student.shape:
        raise ValueError(f"generated {list(generated.shape)}, teacher {list(epsilon_teacher.shape)} and student "
                         f"{list(epsilon_student.shape)} scores must have one shape (B, V, C, h, w)")
    dtype = torch.promote_types(generated.dtype, torch.float32)  # half outputs: the loss in fp32
    gradient = (epsilon_teacher - epsilon_student).detach().to(dtype)
    weight = torch.as_tensor(weight, dtype=dtype, device=generated.device).detach()
    if weight.dim() == 1:
        weight = weight.view(-1, *([1] * (generated.dim() - 1)))  # (B,) -> (B, 1, 1, 1, 1)
    x = generated.to(dtype)
    target = (x - gradient).detach()
    # d/dx ½‖x − sg(x − g)‖² = x − (x − g) = g; summed per object, averaged over objects.
    return (0.5 * weight * (x - target).square()).flatten(1).sum(1).mean()


def dmd_weight(generated: torch.Tensor, x0_teacher: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B,) DMD's per-object normaliser 1 / mean|x̂0 − x̂0_pre|, detached (over views, channels and pixels)."""
    distance = (generated.detach().float() - x0_teacher.detach().float()).abs().flatten(1).mean(1)
    return 1.0 / distance.clamp(min=eps)


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B,) σ_t² = 1 − ᾱ_t at (B,) integer timesteps (DreamFusion's w(t))."""
    return (1.0 - alphas_cumprod.to(t.device)[t]).float()


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator | None = None,
                     t_range: tuple[float, float] = T_RANGE, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) integer timesteps uniform in ``t_range``·T (both ends included)."""
    low, high = t_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= low <= high <= 1, got {t_range}")
    first, last = round(low * (num_train_timesteps - 1)), round(high * (num_train_timesteps - 1))
    return torch.randint(first, last + 1, (batch,), generator=generator).to(device)
