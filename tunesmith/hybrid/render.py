"""Stage 2: coarse tokens -> latents by a sampler over the DPD, with guidance on the tokens.

Two ways to sample, chosen by name:

- ``"angle"``: MeLoDy's rotation sampler (tunesmith.hybrid.angle.sample) in the network's own
  coordinates, with per-frame times, so the known frames of an outpainting window sit at
  t = 0 beside the frames being generated;
- any sampler of tunesmith.diffusion.samplers (``"dpmpp-2m"``, ``"euler"``, ...), through the
  one Denoiser (an angle model is a v-model on the cosine schedule: the coordinates coincide),
  with the known frames pinned by ``keep_known``.

Guidance (Ho & Salimans 2022) contrasts the tokens with all-"no token" rows, batched as one
forward pass per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunesmith.diffusion.denoiser import CountingDenoiser, Denoiser
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.inpaint import keep_known
from tunesmith.diffusion.samplers import SAMPLERS, get_sigmas
from tunesmith.diffusion.samplers import sample as sample_sigmas
from tunesmith.hybrid import angle
from tunesmith.hybrid.dpd import DualPathDiffusion

SAMPLER_NAMES = ("angle", *SAMPLERS)


@dataclass
class Rendered:
    latents: torch.Tensor  # (B, D, T), in the model's (scaled) units
    nfe: int  # network evaluations (a guided pair counts once)


def guided_velocity(model: DualPathDiffusion, tokens: torch.Tensor, cfg: float, extra: dict[str, torch.Tensor]
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """v(z, t) with classifier-free guidance on the tokens: v_u + cfg (v_c - v_u), one batched pass."""
    if cfg < 0:
        raise ValueError(f"guidance scale must be >= 0, got {cfg}")
    if cfg == 1.0:
        return lambda z, t: model(z, t, tokens, **extra)
    null = torch.full_like(tokens, model.null_token)
    both_tokens = torch.cat([tokens, null])
    both_extra = {k: torch.cat([v, v]) for k, v in extra.items()}

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = model(torch.cat([z, z]), torch.cat([t, t]), both_tokens, **both_extra).chunk(2)
        return uncond + cfg * (cond - uncond)

    return v


@torch.no_grad()
def render(
    model: DualPathDiffusion,
    tokens: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int = 20,
    sampler: str = "angle",
    cfg: float = 1.0,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    sigma_min: float = 0.01,
    sigma_max: float = 80.0,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Rendered:
    """Latents (B, D, T) for tokens (B, K, T * r) from unit noise (B, D, T).

    ``known`` (B, D, T) with ``keep`` (B, 1, T) = 1: frames given (outpainting); they come out
    exactly as given."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLER_NAMES)})")
    c = model.config
    b, _, frames = noise.shape
    extra: dict[str, torch.Tensor] = {}
    if keep is not None:
        if known is None:
            raise ValueError("keep needs the known latents it applies to")
        keep = keep.to(noise.device, noise.dtype).expand(b, 1, frames)
        known = known.to(noise.device, noise.dtype) * keep
        if c.inpainting:
            extra = {"inpaint_mask": keep, "inpaint_latents": known}
    if sampler == "angle":
        if c.objective == "edm":
            raise ValueError("the angle sampler needs a velocity model (objective 'angle' or 'v'); use a sigma sampler")
        net = CountingDenoiser(guided_velocity(model, tokens, cfg, extra))
        z = angle.sample(net, noise, angle.times(steps), known=known, keep=keep, progress=progress, callback=callback)
        return Rendered(z, net.nfe)
    parameterization = "edm" if c.objective == "edm" else "v"
    denoiser = Denoiser(model, parameterization, c.sigma_data)
    cond = {"tokens": tokens, **extra}
    uncond = {"tokens": torch.full_like(tokens, model.null_token), **extra}
    guided = cfg_denoiser(denoiser, cond, uncond, cfg)
    if keep is not None:
        guided = keep_known(guided, known, keep)
    sigmas = get_sigmas("exponential", steps, sigma_min, sigma_max)
    out = sample_sigmas(guided, noise, sigmas, sampler, progress=progress, callback=callback)
    x = out.x if keep is None else keep * known + (1 - keep) * out.x
    return Rendered(x, out.nfe)
