"""Distribution matching distillation (DMD, Yin et al. 2024, sec. 3; DMD2, Yin et al. 2024).

A one- or few-step generator G learns to sample the teacher's distribution without ever
seeing the teacher's trajectories.  The gradient of KL(p_G || p_teacher), taken on noised
samples x_t = x0 + sigma * n of G's output, is the difference of two scores; in denoiser
form (score(x_t) = (D(x_t) - x_t) / sigma^2) it points from the teacher's denoised estimate
towards a *fake* denoiser's, one that is trained, online, on G's own samples:

    grad_x0 KL  ~  w(sigma) * (D_fake(x_t, sigma) - D_real(x_t, sigma))          (DMD eq. 7)

with DMD's normalisation w = 1 / mean|x0 - D_real(x_t)| (eq. 8), which keeps the step
size the same across noise levels.  The fake denoiser is what stops mode collapse: with a
frozen one, G drifts to the teacher's densest mode; trained on G's samples, it makes G's
distribution, not one point, match the teacher's.

Which noise levels the two losses see is the caller's choice (Presto's observation: it
matters), made by drawing ``sigma`` from :func:`tunesmith.diffusion.objectives.sample_training_sigmas`
or any other distribution.  Denoisers are plain callables D(x, sigma) -> x0 estimate,
as everywhere in :mod:`tunesmith.diffusion`: the teacher is guided already (CFG folded
into the student) when the caller wraps it with :func:`tunesmith.diffusion.guidance.cfg_denoiser`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Denoise = Callable[..., torch.Tensor]


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


@torch.no_grad()
def distribution_matching_gradient(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, real: Denoise, fake: Denoise, *,
    eps: float = 1e-4, **cond: Any,
) -> torch.Tensor:
    """The DMD gradient (eq. 7-8) at G's samples ``x0`` (B, ...), noised with ``noise`` at ``sigma`` (B,)."""
    x_t = x0 + _bcast(sigma, x0) * noise
    d_real = real(x_t, sigma, **cond)
    d_fake = fake(x_t, sigma, **cond)
    dims = tuple(range(1, x0.dim()))
    weight = 1.0 / ((x0 - d_real).abs().mean(dim=dims, keepdim=True) + eps)
    return (d_fake - d_real) * weight


def distribution_matching_loss(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, real: Denoise, fake: Denoise, *,
    eps: float = 1e-4, **cond: Any,
) -> torch.Tensor:
    """A loss whose gradient with respect to ``x0`` is the DMD gradient, averaged over the batch.

    Written as 0.5 * ||x0 - stopgrad(x0 - g)||^2 per example (DMD's implementation): its
    gradient is exactly g, and its value (0.5 * ||g||^2) is a readable training signal.
    """
    grad = distribution_matching_gradient(x0.detach(), noise, sigma, real, fake, eps=eps, **cond)
    target = (x0 - grad).detach()
    return 0.5 * (x0 - target).pow(2).flatten(1).sum(1).mean()


def fake_score_loss(fake: Any, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
    """The fake denoiser's loss on the generator's samples: the usual denoising objective of its
    parameterisation (``fake`` is a :class:`tunesmith.diffusion.denoiser.Denoiser`), on detached
    ``x0`` so that only the fake model learns from it."""
    return fake.loss(x0.detach(), sigma, noise, **cond)
