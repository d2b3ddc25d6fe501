"""The VSD update of the one-step generator (GECO §3.1, eq. 1) as a stop-gradient surrogate loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunemv.training.vsd import dmd_weight, sample_timesteps, sds_weight, vsd_surrogate_loss

B, V, C, H = 2, 3, 3, 8


def tiny_generator() -> nn.Module:
    torch.manual_seed(0)
    # float64: x − sg(x − g) is exactly g there; in float32 it is g to a few ulps of x
    return nn.Sequential(nn.Conv2d(C, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, C, 3, padding=1)).double()


def generate(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return generator(z.flatten(0, 1)).unflatten(0, (B, V))  # (B, V, C, h, w)


def eq1_gradient(generator: nn.Module, z, g, weight) -> list[torch.Tensor]:
    """Eq. 1 written out: Σ w·(ε_pre − ε_stu)·∂G/∂θ, averaged over objects (a vector-Jacobian product)."""
    x = generate(generator, z)
    upstream = weight.view(-1, 1, 1, 1, 1) * g / B
    return list(torch.autograd.grad(x, list(generator.parameters()), grad_outputs=upstream))


def test_the_surrogate_losss_gradient_is_eq_1():
    generator = tiny_generator()
    z, teacher, student = torch.randn(3, B, V, C, H, H, dtype=torch.float64).unbind(0)
    x = generate(generator, z)
    weight = dmd_weight(x, torch.randn_like(x))
    loss = vsd_surrogate_loss(x, teacher, student, weight)
    ours = torch.autograd.grad(loss, list(generator.parameters()), retain_graph=True)
    expected = eq1_gradient(generator, z, teacher - student, weight)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Calibration: the same check on a surrogate with the wrong weight fails, so the comparison can fail.
    wrong = vsd_surrogate_loss(x, teacher, student, 2 * weight)
    doubled = torch.autograd.grad(wrong, list(generator.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(doubled, expected, strict=True)) > 1e-4


def test_the_surrogate_passes_no_gradient_into_the_scores():
    x = torch.randn(B, V, C, H, H, requires_grad=True)
    teacher = torch.randn(B, V, C, H, H, requires_grad=True)
    student = torch.randn(B, V, C, H, H, requires_grad=True)
    vsd_surrogate_loss(x, teacher, student).backward()
    assert teacher.grad is None and student.grad is None
    torch.testing.assert_close(x.grad, (teacher - student).detach() / B)


def test_scores_of_another_shape_are_refused():
    x = torch.randn(B, V, C, H, H)
    with pytest.raises(ValueError, match="one shape"):
        vsd_surrogate_loss(x, x, x[:, :2])


def test_dmd_weight_is_the_inverse_mean_absolute_distance_per_object():
    x = torch.zeros(B, V, C, H, H)
    teacher = torch.stack([torch.full((V, C, H, H), 0.5), torch.full((V, C, H, H), -2.0)])
    torch.testing.assert_close(dmd_weight(x, teacher), torch.tensor([2.0, 0.5]))


def test_sds_weight_is_one_minus_alpha_bar():
    alphas = torch.linspace(0.99, 0.01, 1000)
    torch.testing.assert_close(sds_weight(alphas, torch.tensor([0, 999])), torch.tensor([0.01, 0.99]))


def test_timesteps_stay_in_geco_s_range():
    t = sample_timesteps(10_000, 1000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 20 and int(t.max()) == 979  # round(0.02·999), round(0.98·999), both reached
    with pytest.raises(ValueError, match="t_range"):
        sample_timesteps(1, 1000, t_range=(0.5, 0.2))
