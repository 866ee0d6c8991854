"""The VAE bottleneck: a diagonal Gaussian per latent frame, pulled towards N(0, I) by a KL term.

As in Stable Audio's autoencoder, the encoder predicts a mean and a pre-softplus
scale; a small KL weight keeps the latents near unit scale (what the diffusion model
expects) without washing out the detail the decoder needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_gaussian(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2D, F) encoder output -> mean (B, D, F) and standard deviation (B, D, F) > 0."""
    mean, scale = h.chunk(2, dim=1)
    return mean, F.softplus(scale) + 1e-4


def sample_gaussian(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised sample mean + std * eps (Kingma & Welling 2014)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) summed over channels, averaged over batch and frames."""
    var = std.square()
    return 0.5 * (mean.square() + var - torch.log(var) - 1).sum(dim=1).mean()
