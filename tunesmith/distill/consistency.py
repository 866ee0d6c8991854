"""Consistency distillation (Song et al. 2023, sec. 4; improved as in Song & Dhariwal 2023).

A consistency function f(x, sigma) maps every point of one probability-flow ODE trajectory
to the trajectory's end, so one evaluation from pure noise is a sample.  It is learnt by
making f agree on two neighbouring points of a trajectory: x at sigma_hi (real data,
noised), and x' at sigma_lo one ODE step of the *teacher* further:

    loss = w(sigma_hi, sigma_lo) * d(f(x, sigma_hi), stopgrad f(x', sigma_lo)),

with w = 1 / (sigma_hi - sigma_lo) and d the pseudo-Huber distance (iCT, sec. 3.3); the
target network is the student itself under stop-gradient (iCT's finding: no EMA target).
The boundary condition f(x, 0) = x holds by construction for tunesmith's denoisers (c_skip).
"""

from __future__ import annotations

from typing import Callable

import torch

Denoise = Callable[..., torch.Tensor]


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def teacher_ode_step(teacher: Denoise, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler (= DDIM) step of the probability-flow ODE dx/dsigma = (x - D(x)) / sigma."""
    d = teacher(x, sigma)
    return x + _bcast(sigma_next - sigma, x) * (x - d) / _bcast(sigma, x)


def pseudo_huber(diff: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(mean(diff^2) + c^2) - c per example: L2-like for large errors, robust near 0."""
    return (diff.float().pow(2).flatten(1).mean(1) + c * c).sqrt() - c


def consistency_distillation_loss(
    student: Denoise, teacher: Denoise, x0: torch.Tensor, noise: torch.Tensor,
    sigma_hi: torch.Tensor, sigma_lo: torch.Tensor, *, huber_c: float = 0.03,
) -> torch.Tensor:
    """The loss above for real ``x0`` (B, ...), noised with ``noise`` at ``sigma_hi`` (B,); the
    teacher (guidance bound) steps to ``sigma_lo`` (B,).  Denoisers take (x, sigma)."""
    if bool((sigma_lo >= sigma_hi).any()) or bool((sigma_lo <= 0).any()):
        raise ValueError("consistency pairs need 0 < sigma_lo < sigma_hi")
    x_hi = x0 + _bcast(sigma_hi, x0) * noise
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher, x_hi, sigma_hi, sigma_lo)
        target = student(x_lo, sigma_lo)
    weight = 1.0 / (sigma_hi - sigma_lo)
    return (weight * pseudo_huber(student(x_hi, sigma_hi) - target, huber_c)).mean()


def consistency_pairs(levels: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_hi, sigma_lo) per example: neighbours drawn uniformly from increasing ``levels``."""
    if levels.dim() != 1 or len(levels) < 2 or bool((levels[1:] <= levels[:-1]).any()) or float(levels[0]) <= 0:
        raise ValueError("consistency levels must be a positive, increasing 1-D sequence of at least two")
    n = torch.randint(0, len(levels) - 1, (batch,), generator=generator)
    return levels[n + 1], levels[n]
