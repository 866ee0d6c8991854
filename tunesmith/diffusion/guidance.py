"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser built from a denoiser.

``cfg_denoiser`` binds a conditional and an unconditional set of inputs and
returns D(x, sigma): a drop-in for every sampler.  Cond and uncond run as one
batched forward pass (one NFE).  Options:

- ``rescale`` phi (Lin et al. 2024, "Common diffusion noise schedules and sample
  steps are flawed", eq. 15-16): match the guided noise prediction's standard
  deviation to the conditional one, then blend with weight phi; tames the
  over-saturation of large scales.
- ``interval`` (sigma_lo, sigma_hi) (Kynkäänniemi et al. 2024, "Applying guidance
  in a limited interval..."): guide only at those noise levels; elsewhere only the
  conditional branch runs (half the compute for those steps).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Cond = dict[str, Any]


def _cat_cond(a: Cond, b: Cond) -> Cond:
    """Stack two conditioning dicts along the batch (same keys; None must match None)."""
    if set(a) != set(b):
        raise ValueError(f"cond and uncond have different keys: {sorted(a)} vs {sorted(b)}")
    out: Cond = {}
    for key in a:
        if a[key] is None or b[key] is None:
            if a[key] is not b[key]:
                raise ValueError(f"conditioning '{key}' is None on one side only")
            out[key] = None
        elif torch.is_tensor(a[key]):
            out[key] = torch.cat([a[key], b[key]], dim=0)
        else:
            raise ValueError(f"conditioning '{key}' must be a tensor or None, got {type(a[key]).__name__}")
    return out


def cfg_denoiser(
    denoiser: Callable[..., torch.Tensor],
    cond: Cond,
    uncond: Cond | None,
    scale: float,
    *,
    rescale: float = 0.0,
    interval: tuple[float, float] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """D(x, sigma) = D_u + scale * (D_c - D_u), with optional rescale and guidance interval.

    ``scale`` = 1 (or no ``uncond``) runs only the conditional branch: exactly the conditional model.
    """
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    if interval is not None and not (0 <= interval[0] <= interval[1]):
        raise ValueError(f"guidance interval must be (low, high) with 0 <= low <= high, got {interval}")
    if uncond is None or scale == 1.0:
        return lambda x, sigma: denoiser(x, sigma, **cond)
    both = _cat_cond(cond, uncond)

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if interval is not None and not (interval[0] <= s <= interval[1]):
            return denoiser(x, sigma, **cond)
        sigma_b = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma_b, sigma_b]), **both).chunk(2)
        d = d_uncond + scale * (d_cond - d_uncond)
        if rescale > 0 and s > 0:
            # Rescale in noise-prediction space, eps = (x - D) / sigma, as Lin et al. define it.
            dims = tuple(range(1, x.dim()))
            eps_cond, eps = (x - d_cond) / s, (x - d) / s
            ratio = eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp(min=1e-8)
            eps = rescale * eps * ratio + (1 - rescale) * eps
            d = x - s * eps
        return d

    return guided
