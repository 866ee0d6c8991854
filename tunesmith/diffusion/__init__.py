"""Latent diffusion (Stable Audio 2 style): a DiT over VAE latents, objectives, samplers, guidance.

The parts are kept apart so each can be read (and reused by distillation and
noise-optimization control) on its own:

- ``dit``: the network (weights live here and nowhere else);
- ``objectives``: schedules, preconditioning, losses, training noise levels (pure functions);
- ``denoiser``: D(x, sigma, **cond) over either parameterization (v or EDM);
- ``samplers``: Euler, Heun, DDIM, DPM-Solver++ 2M / 3M-SDE and sigma schedules, as functions;
- ``guidance``: classifier-free guidance with rescale and interval;
- ``inpaint``: mask-conditioned inpainting, RePaint fallback, audio-to-audio strength;
- ``train``: the ``tunesmith train diffusion`` plug-in;
- ``generator``: the ``latent-diffusion`` generator, a :class:`tunesmith.generator.Generator`.
"""

from tunesmith.diffusion.denoiser import CountingDenoiser, Denoiser
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.samplers import SAMPLERS, SCHEDULES, get_sigmas, sample

__all__ = ["CountingDenoiser", "Denoiser", "SAMPLERS", "SCHEDULES", "cfg_denoiser", "get_sigmas", "sample"]
