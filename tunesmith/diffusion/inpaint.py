"""Inpainting, outpainting and audio-to-audio on latents.

Masks are (B, 1, T) over latent frames with 1 = known (keep), 0 = generate.

- A mask-conditioned DiT (``DiTConfig.inpainting``) sees the mask and the known
  latents as extra input channels; it was trained with random masks.  At sampling
  time :func:`keep_known` also pins the denoiser's estimate to the known latents,
  so every sampler ends with the known region exactly equal to the input.
- For a model trained without mask channels, :func:`sample_repaint` follows
  RePaint (Lugmayr et al. 2022): at each step the known region is replaced by the
  known latents noised to the current level, and each step can be repeated
  ("resampling": diffuse back, denoise again) to harmonize the boundary.
- Audio-to-audio (Stable Audio's style transfer; SDEdit, Meng et al. 2022):
  start from the reference noised to an intermediate level chosen by ``strength``.
"""

from __future__ import annotations

from typing import Callable

import torch

from tunesmith.diffusion.objectives import sigma_to_t, t_to_sigma
from tunesmith.diffusion.samplers import StepCallback, sampler_steps

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_mask(mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """A float (B, 1, T) mask of 0/1 matching ``latents`` (B, D, T); clear errors otherwise."""
    if mask.dim() == 1:
        mask = mask[None, None]
    elif mask.dim() == 2:
        mask = mask[:, None]
    if mask.dim() != 3 or mask.shape[1] != 1 or mask.shape[-1] != latents.shape[-1]:
        raise ValueError(f"mask must be (B, 1, T={latents.shape[-1]}), got {tuple(mask.shape)}")
    mask = mask.to(latents.device, latents.dtype).expand(latents.shape[0], 1, -1)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask values must be 0 (generate) or 1 (keep)")
    return mask


def keep_known(denoiser: Denoise, known: torch.Tensor, mask: torch.Tensor) -> Denoise:
    """D'(x, sigma) = known where mask = 1, D(x, sigma) elsewhere.

    Every sampler's last step (to sigma = 0) returns the denoiser's estimate, so the
    known region of the result equals ``known`` exactly.
    """

    def pinned(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mask * known + (1 - mask) * denoiser(x, sigma)

    return pinned


@torch.no_grad()
def sample_repaint(
    denoiser: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    resample: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Alg. 1) with DDIM-style (Euler) steps in sigma.

    At each level sigma_i the known region is set to known + sigma_i * fresh noise;
    the step is then taken; with ``resample`` = r > 1 the result is diffused back to
    sigma_i and the step repeated r - 1 more times.  NFE = steps * resample (the last
    step once).
    """
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")

    def noise() -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    for i in sampler_steps(sigmas, progress, "repaint", callback):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        rounds = 1 if sigma_next == 0 else resample
        for r in range(rounds):
            x = mask * (known + sigma * noise()) + (1 - mask) * x
            d = denoiser(x, sigma)
            x = d + (x - d) / sigma * sigma_next  # Euler step of the probability-flow ODE
            if r < rounds - 1:
                x = x + (sigma**2 - sigma_next**2).sqrt() * noise()
    return mask * known + (1 - mask) * x


def strength_to_sigma(strength: float, sigma_max: float) -> float:
    """Audio-to-audio: the starting noise level for a ``strength`` in (0, 1].

    Strength is the fraction of the cosine-schedule time from clean (0) to
    ``sigma_max`` (1): 1 starts from (almost) pure noise, 0.5 keeps the broad structure.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return float(t_to_sigma(torch.tensor(strength * float(sigma_to_t(torch.tensor(sigma_max))))))


def bridge_seams(latents: torch.Tensor, keep: torch.Tensor, frames: int) -> torch.Tensor:
    """Regenerated latents (B, D, T) made continuous with the kept ones at every seam.

    A mask-conditioned model starts a regenerated region with a step away from the last kept
    frame several times the music's median step (measured on the default DiT: 3.5-5.4x),
    which the decoder turns into an audible seam.  The offset between the two frames across
    each seam is added to the regenerated side and faded out along a raised cosine over
    ``frames`` frames (the inertialisation of motion blending; a run between two kept parts
    gives each seam at most half of it): the first regenerated frame lands near its kept
    neighbour, the rest of the region is the model's own.  ``keep``
    (B or 1, 1, T) is 1 on kept frames; those are returned unchanged."""
    if frames <= 0:
        return latents
    kept = keep.expand(latents.shape[0], 1, latents.shape[-1])[:, 0] > 0.5  # (B, T)
    out = latents.clone()
    total = latents.shape[-1]
    for row in range(out.shape[0]):
        flags = kept[row].tolist()
        f = 0
        while f < total:  # each run [start, end) of regenerated frames
            if flags[f]:
                f += 1
                continue
            start = f
            while f < total and not flags[f]:
                f += 1
            seams = [(start, 1)] * (start > 0) + [(f - 1, -1)] * (f < total)  # its first frame, and inwards
            span = min(frames, (f - start) // len(seams) or 1) if seams else 0  # two seams share a short run
            fade = 0.5 * (1 + torch.cos(torch.pi * torch.arange(1, span + 1, dtype=torch.float64) / (span + 1)))
            for into, step in seams:
                offset = latents[row, :, into - step] - latents[row, :, into]
                for j in range(span):
                    out[row, :, into + j * step] += float(fade[j]) * offset
    return out


def keep_weights(kept: torch.Tensor, fade: int) -> torch.Tensor:
    """(T,) weight of the user's own samples in the output, from ``kept`` (T,) bool: 1 on every
    kept sample, falling to 0 along a raised cosine over ``fade`` samples into each regenerated
    region.  The crossfade lies wholly in the regenerated part, so what the user kept is
    returned bit for bit."""
    kept = kept.flatten().bool()
    if fade <= 0 or bool(kept.all()) or not bool(kept.any()):
        return kept.float()
    t = torch.arange(kept.numel())
    # distance of each sample to the nearest kept one: the last kept at or before it, the next at or after it
    before = t - torch.cummax(torch.where(kept, t, torch.full_like(t, -(10**12))), 0).values
    after = torch.cummin(torch.where(kept, t, torch.full_like(t, 10**12)).flip(0), 0).values.flip(0) - t
    distance = torch.minimum(before, after).clamp(min=0).double()
    return (0.5 * (1 + torch.cos(torch.pi * (distance / fade).clamp(max=1.0)))).float()


def splice_kept(generated: torch.Tensor, reference: torch.Tensor, kept: torch.Tensor, fade: int) -> torch.Tensor:
    """Put the user's own samples back where they were kept: the VAE's re-decode of them
    matches in sound but not in waveform, and the user asked to keep their audio.
    ``generated`` (B, C, T), ``reference`` (1 or B, C, T_ref), ``kept`` (T,) bool per sample
    (False past the reference's end)."""
    total = generated.shape[-1]
    have = min(reference.shape[-1], total)
    w = keep_weights(kept[:total] & (torch.arange(total) < have), fade).to(generated)
    ref = torch.nn.functional.pad(reference[..., :have].to(generated), (0, total - have))
    return w * ref + (1 - w) * generated
