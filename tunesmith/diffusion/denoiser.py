"""One denoiser interface D(x, sigma, **cond) -> estimate of the clean x0, over either parameterization.

Samplers only ever see this function; whether the network behind it was trained
with the v-objective on a cosine schedule or with EDM preconditioning is hidden
here.  The network is any callable ``net(x_in, noise_level, **cond)`` returning a
tensor shaped like ``x_in`` (the DiT, or an analytic function in tests).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol

import torch

from tunesmith.diffusion.objectives import cosine_alpha_sigma, edm_coefficients, edm_loss, sigma_to_t, v_loss

Parameterization = Literal["v", "edm"]


class DenoiserFn(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor: ...


def _per_item(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a (B,) tensor on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


class Denoiser:
    """Turns a network into D(x, sigma, **cond) and knows its training loss.

    Not an ``nn.Module``: the weights live in ``net``; this only holds the arithmetic.
    """

    def __init__(self, net: Callable[..., torch.Tensor], parameterization: Parameterization = "v", sigma_data: float = 1.0) -> None:
        if parameterization not in ("v", "edm"):
            raise ValueError(f"parameterization must be 'v' or 'edm', got {parameterization!r}")
        self.net, self.parameterization, self.sigma_data = net, parameterization, sigma_data

    def network_inputs(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network reads for the noisy x at ``sigma``: (scaled input, its noise-level input);
        for callers that want the network's features rather than its estimate (a GAN critic)."""
        sigma = _per_item(sigma, x)
        if self.parameterization == "v":
            t = sigma_to_t(sigma)
            return x * _bcast(cosine_alpha_sigma(t)[0], x), t
        _, _, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        return x * _bcast(c_in, x), c_noise

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        sigma = _per_item(sigma, x)
        if self.parameterization == "v":
            # x = x0 + sigma*noise is z / alpha on the cosine schedule; x0 = alpha z - s v.
            t = sigma_to_t(sigma)
            alpha, s = cosine_alpha_sigma(t)
            z = x * _bcast(alpha, x)
            v = self.net(z, t, **cond)
            return _bcast(alpha, x) * z - _bcast(s, x) * v
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f = self.net(x * _bcast(c_in, x), c_noise, **cond)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Training loss at noise levels ``sigma`` (B,) for clean ``x0`` and Gaussian ``noise``."""
        if self.parameterization == "v":
            t = sigma_to_t(sigma)
            alpha, s = cosine_alpha_sigma(t)
            z = _bcast(alpha, x0) * x0 + _bcast(s, x0) * noise
            return v_loss(self.net(z, t, **cond), x0, noise, t)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        x = x0 + _bcast(sigma, x0) * noise
        return edm_loss(self.net(x * _bcast(c_in, x0), c_noise, **cond), x0, noise, sigma, self.sigma_data)


class CountingDenoiser:
    """Wraps a denoiser and counts its calls: the number of function evaluations (NFE)."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)
