"""Noise schedules, preconditioning and training losses as small pure functions.

One coordinate system ties everything together: the "variance exploding" noise
level ``sigma`` of Karras et al. (2022), where a noisy sample is
``x = x0 + sigma * noise``.  Samplers and the denoiser speak ``sigma``.

Two parameterizations of the network live on top of it:

- v-prediction on the cosine schedule (Salimans & Ho 2022; used by Stable Audio):
  time t in [0, 1], alpha = cos(pi t / 2), s = sin(pi t / 2), the network sees
  z = alpha * x0 + s * noise and predicts v = alpha * noise - s * x0.
  Since z = x / sqrt(1 + sigma^2), the two coordinates meet at sigma = s / alpha = tan(pi t / 2).
- EDM (Karras et al. 2022, Table 1): D(x) = c_skip x + c_out F(c_in x, c_noise).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

NoiseDistribution = Literal["uniform", "logit_normal", "log_normal"]

# t is kept strictly inside (0, 1): t = 1 is sigma = infinity.
T_EPS = 1e-4


# ---------------------------------------------------------------------------
# the cosine schedule and its link to sigma


def cosine_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, s) of the cosine schedule at time t: signal and noise scales, alpha^2 + s^2 = 1."""
    angle = t * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """Cosine time -> VE noise level: sigma = tan(pi t / 2)."""
    return torch.tan(t * (math.pi / 2))


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """VE noise level -> cosine time: t = 2 atan(sigma) / pi."""
    return torch.atan(sigma) * (2 / math.pi)


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v the network should predict for clean x0 and noise at time t (shape (B,))."""
    alpha, s = (c.view(-1, *[1] * (x0.dim() - 1)) for c in cosine_alpha_sigma(t))
    return alpha * noise - s * x0


def v_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a v prediction (the v-objective)."""
    return (prediction.float() - v_target(x0, noise, t).float()).pow(2).mean()


# ---------------------------------------------------------------------------
# EDM preconditioning


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM (Karras et al. 2022, Table 1).

    They keep the network's input and training target at unit variance at every noise level.
    """
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """What F must output so that c_skip x + c_out F = x0 for x = x0 + sigma * noise."""
    c_skip, c_out, _, _ = (c.view(-1, *[1] * (x0.dim() - 1)) for c in edm_coefficients(sigma, sigma_data))
    x = x0 + sigma.view_as(c_skip) * noise
    return (x0 - c_skip * x) / c_out


def edm_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss: lambda(sigma) ||D - x0||^2 with lambda = 1 / c_out^2, i.e. plain MSE on F."""
    return (prediction.float() - edm_target(x0, noise, sigma, sigma_data).float()).pow(2).mean()


# ---------------------------------------------------------------------------
# which noise levels to train on


def sample_training_sigmas(
    n: int,
    distribution: NoiseDistribution,
    generator: torch.Generator | None = None,
    *,
    mean: float = -1.2,
    std: float = 1.2,
) -> torch.Tensor:
    """Draw n training noise levels sigma.

    - ``uniform``: t ~ U(0, 1) on the cosine schedule (Stable Audio's v-objective);
    - ``logit_normal``: t = sigmoid(N(mean, std)) (Esser et al. 2024), focusing on mid-range noise;
    - ``log_normal``: ln sigma ~ N(mean, std) (EDM's P_mean = -1.2, P_std = 1.2).
    """
    if n < 1:
        raise ValueError(f"need n >= 1 noise levels, got {n}")
    if distribution == "uniform":
        t = torch.rand(n, generator=generator)
    elif distribution == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator) * std + mean)
    elif distribution == "log_normal":
        return (torch.randn(n, generator=generator) * std + mean).exp()
    else:
        raise ValueError(f"unknown noise distribution {distribution!r} (uniform, logit_normal, log_normal)")
    return t_to_sigma(t.clamp(T_EPS, 1 - T_EPS))
