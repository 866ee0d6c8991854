"""Samplers: plain functions that integrate from noise to data over a denoiser D(x, sigma).

Every sampler takes
- ``denoiser(x, sigma) -> x0 estimate`` (conditioning already bound, see guidance.py),
- ``x``: the starting point, already scaled to the first noise level (noise * sigmas[0]),
- ``sigmas``: decreasing noise levels ending in 0 (see the schedules below),
and returns the final sample.  They work in the variance-exploding coordinates
x = x0 + sigma * noise (Karras et al. 2022), whatever the network's parameterization.

``sample(...)`` dispatches by name and returns the number of network evaluations
(NFE) alongside the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from tqdm.auto import tqdm

from tunesmith.diffusion.denoiser import CountingDenoiser
from tunesmith.diffusion.objectives import sigma_to_t, t_to_sigma

StepCallback = Callable[[int, int], None]  # (steps done, total steps)

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ScheduleName = Literal["karras", "exponential", "cosine"]
SamplerName = Literal["euler", "heun", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "pingpong"]


# ---------------------------------------------------------------------------
# noise-level schedules (each ends with an appended 0)


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): uniform in sigma^(1/rho), dense near sigma_min for rho > 1."""
    _check_range(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def exponential_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Uniform in log sigma: equal steps of DPM-Solver's half-log-SNR lambda."""
    _check_range(steps, sigma_min, sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def cosine_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Uniform in the cosine schedule's time t (Stable Audio's v-model): sigma = tan(pi t / 2)."""
    _check_range(steps, sigma_min, sigma_max)
    t_hi, t_lo = sigma_to_t(torch.tensor(sigma_max, dtype=torch.float64)), sigma_to_t(torch.tensor(sigma_min, dtype=torch.float64))
    sigmas = t_to_sigma(torch.linspace(float(t_hi), float(t_lo), steps, dtype=torch.float64))
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "cosine": cosine_sigmas,
}


def get_sigmas(schedule: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sigma schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    return SCHEDULES[schedule](steps, sigma_min, sigma_max)


# ---------------------------------------------------------------------------
# helpers


def sampler_steps(sigmas: torch.Tensor, progress: bool, name: str, callback: StepCallback | None = None) -> Iterator[int]:
    """Step indices, with a progress bar; ``callback(done, total)`` runs after each step (an
    exception it raises stops the sampler there: how a server cancels a job)."""
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D schedule of at least two levels (the last usually 0)")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("sigmas must be non-increasing")
    total = len(sigmas) - 1
    for i in tqdm(range(total), desc=name, disable=not progress, leave=False):
        yield i
        if callback is not None:
            callback(i + 1, total)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _churn(
    x: torch.Tensor, sigma: torch.Tensor, gamma: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM Alg. 2 lines 5-7: raise the noise level from sigma to sigma*(1+gamma) with fresh noise."""
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + (sigma_hat**2 - sigma**2).sqrt() * _noise_like(x, generator), sigma_hat


def _gamma(s_churn: float, n: int, sigma: float, s_tmin: float, s_tmax: float) -> float:
    return min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0


# ---------------------------------------------------------------------------
# samplers


@torch.no_grad()
def sample_euler(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler steps on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

    With ``s_churn`` > 0 it is the stochastic sampler of Karras et al. 2022 (Alg. 2)
    without its second-order correction.  NFE = number of steps.
    """
    n = len(sigmas) - 1
    for i in sampler_steps(sigmas, progress, "euler", callback):
        x, sigma = _churn(x, sigmas[i], _gamma(s_churn, n, float(sigmas[i]), s_tmin, s_tmax), generator)
        d = (x - denoiser(x, sigma)) / sigma
        x = x + d * (sigmas[i + 1] - sigma)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Heun's second-order method, Karras et al. 2022 Alg. 1 (deterministic) / Alg. 2 (s_churn > 0).

    The step to sigma = 0 is an Euler step (the correction would divide by 0).
    NFE = 2 * steps - 1 when the schedule ends at 0.
    """
    n = len(sigmas) - 1
    for i in sampler_steps(sigmas, progress, "heun", callback):
        x, sigma = _churn(x, sigmas[i], _gamma(s_churn, n, float(sigmas[i]), s_tmin, s_tmax), generator)
        sigma_next = sigmas[i + 1]
        d = (x - denoiser(x, sigma)) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), written for x = x0 + sigma * noise.

    The predicted noise is kept for part of the next noise level and fresh noise
    fills the rest; ``eta`` = 0 is deterministic (then it coincides with Euler in
    sigma), ``eta`` = 1 is DDPM-like ancestral sampling.  NFE = number of steps.
    """
    for i in sampler_steps(sigmas, progress, "ddim", callback):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, sigma)
        eps = (x - x0) / sigma
        # DDIM's sigma_t(eta) in variance-preserving units, then converted to these coordinates:
        # with a = 1/sqrt(1+sigma^2) the VP quantities are alpha_bar = a^2, noise std = sigma * a.
        a, a_next = 1 / (1 + sigma**2).sqrt(), 1 / (1 + sigma_next**2).sqrt()
        abar, abar_next = a**2, a_next**2
        vp_std = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)).clamp(min=0).sqrt()
        fresh = vp_std / a_next  # VP std -> this coordinate system (divide by a_next)
        kept = (sigma_next**2 - fresh**2).clamp(min=0).sqrt()
        x = x0 + kept * eps
        if eta > 0 and sigma_next > 0:
            x = x + fresh * _noise_like(x, generator)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (Alg. 2): second-order multistep in lambda = -log sigma.

    Deterministic (``generator`` is accepted for a uniform signature and unused).  The data prediction is extrapolated linearly from this step's and the previous
    step's denoised values; the first step and the final step to 0 are first order.
    NFE = number of steps.
    """
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in sampler_steps(sigmas, progress, "dpm++2m", callback):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue  # the last step (to sigma 0); the loop ends, and its callback runs
        h = float(sigma.log() - sigma_next.log())  # lambda_next - lambda
        if previous is None:
            estimate = denoised
        else:
            r = h_previous / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
        previous, h_previous = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Second-order multistep DPM-Solver++ for the diffusion SDE (Lu et al. 2022), midpoint form:
    the sampler of Stable Audio Open's pipeline (diffusers' CosineDPMSolverMultistepScheduler).

    Over one step in lambda = -log sigma of size h, with E = 1 - e^{-(1 + eta) h}:
        x' = (sigma'/sigma) e^{-eta h} x + E D + (E / 2r) (D - D_prev) + sigma' sqrt(1 - e^{-2 eta h}) z,
    r = h_prev / h (the D_prev term from the second step on).  The step to sigma = 0 returns D.
    ``eta`` = 0 is DPM-Solver++(2M).  NFE = number of steps; one fresh draw from ``generator``
    per step except the last.
    """
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in sampler_steps(sigmas, progress, "dpm++2m-sde", callback):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue  # the last step (to sigma 0); the loop ends, and its callback runs
        h = float(sigma.log() - sigma_next.log())
        gain = -math.expm1(-(1 + eta) * h)
        x = (sigma_next / sigma) * math.exp(-eta * h) * x + gain * denoised
        if previous is not None:
            x = x + (gain / (2 * h_previous / h)) * (denoised - previous)
        if eta > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * _noise_like(x, generator)
        previous, h_previous = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Third-order multistep DPM-Solver++ for the diffusion SDE (Lu et al. 2022, SDE-DPM-Solver++).

    The exact solution over one step in lambda = -log sigma, with k = 1 + eta, H = k h, is
        x' = (sigma'/sigma) e^{-eta h} x + integral_0^h k e^{-k(h-u)} D(lambda + u) du + noise,
        noise std = sigma' sqrt(1 - e^{-2 eta h}).
    Expanding D to second order, D + u D' + u^2/2 D'', integrates to
        (1 - e^{-H}) D + h phi2 D' - h^2 phi3 D'',  phi2 = 1 + expm1(-H)/H,  phi3 = phi2/H - 1/2,
    with D', D'' estimated from the last three denoised values (Newton divided differences).
    ``eta`` = 0 gives the 3M ODE solver.  NFE = number of steps.
    """
    history: list[tuple[torch.Tensor, float]] = []  # (denoised, lambda), newest last
    for i in sampler_steps(sigmas, progress, "dpm++3m-sde", callback):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue  # the last step (to sigma 0); the loop ends, and its callback runs
        lam, lam_next = -float(sigma.log()), -float(sigma_next.log())
        h = lam_next - lam
        big_h = (1 + eta) * h
        phi2 = 1 + math.expm1(-big_h) / big_h
        phi3 = phi2 / big_h - 0.5
        x = (sigma_next / sigma) * math.exp(-eta * h) * x - math.expm1(-big_h) * denoised
        if len(history) >= 1:
            d_prev, lam_prev = history[-1]
            slope = (denoised - d_prev) / (lam - lam_prev)
            if len(history) >= 2:
                d_prev2, lam_prev2 = history[-2]
                slope_prev = (d_prev - d_prev2) / (lam_prev - lam_prev2)
                curvature = 2 * (slope - slope_prev) / (lam - lam_prev2)  # D''
                first = slope + curvature / 2 * (lam - lam_prev)  # D' at the newest point
                x = x + h * phi2 * first - h**2 * phi3 * curvature
            else:
                x = x + h * phi2 * slope
        if eta > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * _noise_like(x, generator)
        history = [*history[-1:], (denoised, lam)]
    return x


def sample_pingpong(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The few-step sampler of distilled students (consistency models, Song et al. 2023, Alg. 1;
    DMD2's multi-step generator): denoise to a clean estimate, then re-noise it with fresh noise
    to the next level, x' = D(x, sigma) + sigma' * n.  Each step is one network evaluation and
    nothing is extrapolated between steps, which is why a student trained on its own
    intermediate states (backward simulation) can take 1-4 of them.  NFE = number of steps.
    """
    for i in sampler_steps(sigmas, progress, "pingpong", callback):
        denoised = denoiser(x, sigmas[i])
        sigma_next = sigmas[i + 1]
        x = denoised if sigma_next == 0 else denoised + sigma_next * _noise_like(x, generator)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m-sde": sample_dpmpp_3m_sde,
    "pingpong": sample_pingpong,
}


def expected_nfe(sampler: str, steps: int) -> int:
    """Network evaluations of ``sampler`` over ``steps`` steps of a schedule ending at 0."""
    return 2 * steps - 1 if sampler == "heun" else steps


@dataclass
class SampleOutput:
    x: torch.Tensor
    nfe: int  # network evaluations (one batched cond+uncond forward counts once)


def sample(
    denoiser: Denoise,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "dpmpp-2m",
    *,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    **options: float,
) -> SampleOutput:
    """Run a named sampler from ``init + sigmas[0] * noise`` (init defaults to 0) and count NFE."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if not torch.isfinite(noise).all():
        raise ValueError("the initial noise contains NaN or infinite values")
    counter = CountingDenoiser(denoiser)
    sigmas = sigmas.to(noise.device)
    x = noise * sigmas[0] if init is None else init + noise * sigmas[0]
    out = SAMPLERS[sampler](counter, x, sigmas, generator=generator, progress=progress, callback=callback, **options)
    return SampleOutput(out, counter.nfe)
