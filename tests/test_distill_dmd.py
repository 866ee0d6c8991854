"""DMD on a distribution with a known answer: a 2-D mixture of Gaussians whose exact denoiser is
the teacher.  A one-step generator trained with the distribution-matching loss (and a fake
denoiser trained online on its samples) covers every mode in proportion to its weight and
matches the mixture's mean and covariance; with the fake denoiser frozen it collapses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.objectives import sample_training_sigmas
from tunesmith.distill.dmd import distribution_matching_gradient, distribution_matching_loss, fake_score_loss

MEANS = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1])
STD = 0.3


def mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma * n = x] for the mixture: each component's posterior mean, weighted by
    the component's responsibility for x under the noised mixture (exact)."""
    s2 = sigma.view(-1, 1) ** 2
    var = STD**2 + s2  # (B, 1)
    log_r = WEIGHTS.log()[None] - ((x[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * var) - var.log()
    posterior = (STD**2 * x[:, None] + s2[:, None] * MEANS[None]) / var[:, None]
    return (log_r.softmax(-1)[..., None] * posterior).sum(1)


def mixture_moments() -> tuple[torch.Tensor, torch.Tensor]:
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    second = (WEIGHTS[:, None, None] * MEANS[:, :, None] * MEANS[:, None, :]).sum(0) + STD**2 * torch.eye(2)
    return mean, second - mean[:, None] * mean[None]


def mlp(inputs: int, outputs: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, outputs))


class NoiseConditionedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(3, 2)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, noise_level.view(-1, 1)], -1))


def train_student(steps: int = 400, fake_updates: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    generator = mlp(2, 2)
    fake_net = NoiseConditionedMLP()
    fake = Denoiser(fake_net, "edm", sigma_data=2.0)
    opt_g = torch.optim.Adam(generator.parameters(), 1e-3)
    opt_f = torch.optim.Adam(fake_net.parameters(), 1e-3)

    def sigmas(n: int) -> torch.Tensor:
        return sample_training_sigmas(n, "log_normal", mean=0.0, std=1.2).clamp(0.02, 40.0)

    for _ in range(steps):
        for _ in range(fake_updates):
            with torch.no_grad():
                x0 = generator(torch.randn(256, 2))
            loss = fake_score_loss(fake, x0, torch.randn_like(x0), sigmas(256))
            opt_f.zero_grad()
            loss.backward()
            opt_f.step()
        x0 = generator(torch.randn(256, 2))
        loss = distribution_matching_loss(x0, torch.randn_like(x0), sigmas(256), mixture_denoiser, fake)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    return generator


def mode_shares(samples: torch.Tensor) -> torch.Tensor:
    nearest = ((samples[:, None] - MEANS[None]) ** 2).sum(-1).argmin(-1)
    return torch.bincount(nearest, minlength=len(MEANS)).float() / len(samples)


def test_the_teacher_is_the_exact_denoiser():
    """The analytic denoiser agrees with a Monte-Carlo posterior mean (what the test relies on)."""
    torch.manual_seed(0)
    n = 400_000
    component = torch.multinomial(WEIGHTS, n, replacement=True)
    x0 = MEANS[component] + STD * torch.randn(n, 2)
    sigma = 1.0
    x = x0 + sigma * torch.randn(n, 2)
    near = ((x - torch.tensor([0.5, 1.0])) ** 2).sum(-1) < 0.15**2
    expected = x0[near].mean(0)
    got = mixture_denoiser(torch.tensor([[0.5, 1.0]]), torch.tensor([sigma]))[0]
    assert near.sum() > 300 and torch.allclose(got, expected, atol=0.12)


def test_the_loss_gradient_is_the_dmd_gradient():
    torch.manual_seed(1)
    x0 = torch.randn(8, 2, requires_grad=True)
    noise, sigma = torch.randn(8, 2), torch.rand(8) + 0.1
    fake = lambda x, s: 0.5 * x  # noqa: E731
    distribution_matching_loss(x0, noise, sigma, mixture_denoiser, fake).backward()
    expected = distribution_matching_gradient(x0.detach(), noise, sigma, mixture_denoiser, fake) / 8
    torch.testing.assert_close(x0.grad, expected)
    # eq. 7-8 by hand for one example
    x_t = x0.detach()[0] + sigma[0] * noise[0]
    real = mixture_denoiser(x_t[None], sigma[:1])[0]
    weight = 1 / ((x0.detach()[0] - real).abs().mean() + 1e-4)
    torch.testing.assert_close(expected[0] * 8, weight * (0.5 * x_t - real))


@pytest.mark.slow
def test_a_dmd_student_covers_every_mode_and_the_fake_score_is_what_makes_it():
    student = train_student()
    with torch.no_grad():
        samples = student(torch.randn(20_000, 2))
    shares = mode_shares(samples)
    assert (shares - WEIGHTS).abs().max() < 0.06, f"mode shares {shares.tolist()} against {WEIGHTS.tolist()}"
    mean, cov = mixture_moments()
    assert (samples.mean(0) - mean).norm() < 0.25
    assert (torch.cov(samples.T) - cov).abs().max() < 0.6
    # the same training with the fake denoiser frozen at its initialisation: no longer a distribution
    collapsed = train_student(steps=150, fake_updates=0)
    with torch.no_grad():
        frozen = mode_shares(collapsed(torch.randn(20_000, 2)))
    assert (frozen - WEIGHTS).abs().max() > 0.3, f"without the fake score: {frozen.tolist()}"
    assert math.isfinite(float(samples.abs().max()))
