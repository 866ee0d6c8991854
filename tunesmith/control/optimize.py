"""DITTO's loop: optimise a diffusion model's initial noise so that its output matches a target.

    x_T --(deterministic sampler, K steps)--> latents --(decode)--> audio --(feature)--> loss

and Adam on x_T (Novack et al. 2024, Alg. 1).  Nothing of the model is trained; the
gradient flows back through every sampler step, so each step is checkpointed
(``torch.utils.checkpoint``): the backward pass recomputes a step's activations instead
of keeping them, and memory is that of one step plus the K step inputs, not K steps of
activations.  After every update x_T is put back on the Gaussian shell (its norm set to
sqrt(numel) per example), where the model was trained to start: DITTO's guard against
optimised noise that the model no longer turns into music.

The sampler is DDIM (Euler in sigma on the probability-flow ODE, Song et al. 2021;
Karras et al. 2022 eq. 3): deterministic, one network evaluation per step, and the same
steps as :func:`tunesmith.diffusion.samplers.sample_ddim` with eta = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(denoiser: Denoise, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One deterministic step from ``sigma`` to ``sigma_next`` (0 returns the denoised estimate)."""
    denoised = denoiser(x, sigma.expand(x.shape[0]))
    if float(sigma_next) == 0.0:
        return denoised
    return denoised + (x - denoised) * (sigma_next / sigma)


def sample_with_grad(denoiser: Denoise, noise: torch.Tensor, sigmas: torch.Tensor, *, checkpointed: bool = True) -> torch.Tensor:
    """x0 from ``noise`` (at unit scale) through DDIM over ``sigmas``, differentiable in ``noise``."""
    x = noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        if checkpointed:
            x = checkpoint(ddim_step, denoiser, x, sigmas[i], sigmas[i + 1], use_reentrant=False)
        else:
            x = ddim_step(denoiser, x, sigmas[i], sigmas[i + 1])
    return x


def to_gaussian_shell(noise: torch.Tensor) -> torch.Tensor:
    """Each example rescaled to norm sqrt(its size): where Gaussian noise of that size lives."""
    dims = tuple(range(1, noise.dim()))
    norm = noise.pow(2).sum(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
    size = noise[0].numel()
    return noise * (size**0.5 / norm)


@dataclass
class NoiseOptimization:
    noise: torch.Tensor  # the optimised initial noise (unit scale), on the Gaussian shell
    losses: list[float] = field(default_factory=list)  # the loss before each update, then the final one


def optimize_noise(
    denoiser: Denoise,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    iterations: int = 20,
    lr: float = 0.05,
    checkpointed: bool = True,
    progress: bool = False,
    callback: Callable[[int, int, float], None] | None = None,
) -> NoiseOptimization:
    """Adam on the initial noise so that ``loss_of(x0)`` falls; x0 is the sampler's output for it
    (``loss_of`` decodes and measures: latents -> audio -> feature -> loss).

    ``callback(iteration, iterations, loss)`` runs after each update (an exception stops the run).
    """
    if iterations < 0 or not lr > 0:
        raise ValueError(f"need iterations >= 0 and lr > 0, got {iterations} and {lr}")
    if not torch.isfinite(noise).all():
        raise ValueError("the initial noise contains NaN or infinite values")
    x_t = to_gaussian_shell(noise.detach().clone()).requires_grad_(True)
    optimizer = torch.optim.Adam([x_t], lr=lr)
    result = NoiseOptimization(noise=x_t.detach())
    for i in tqdm(range(iterations), desc="control", disable=not progress, leave=False):
        loss = loss_of(sample_with_grad(denoiser, x_t, sigmas, checkpointed=checkpointed))
        if not torch.isfinite(loss):
            raise ValueError(f"the control loss became {float(loss)} at iteration {i}")
        result.losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x_t.copy_(to_gaussian_shell(x_t))
        if callback is not None:
            callback(i + 1, iterations, result.losses[-1])
    with torch.no_grad():
        result.losses.append(float(loss_of(sample_with_grad(denoiser, x_t, sigmas, checkpointed=False))))
    result.noise = x_t.detach()
    return result
