"""MeLoDy's angle-parameterised diffusion (Lam et al. 2023, sec. 3.2) as small pure functions.

A noisy latent is a rotation of data and noise by an angle phi in [0, pi/2]:

    z = cos(phi) x0 + sin(phi) eps,         v = dz/dphi = cos(phi) eps - sin(phi) x0,

and the network predicts the velocity v.  Both are recovered from (z, v) by the inverse
rotation, x0 = cos(phi) z - sin(phi) v and eps = sin(phi) z + cos(phi) v, so one sampling step
from phi to phi - delta is the rotation z' = cos(delta) z - sin(delta) v (no division anywhere:
the step is defined even at phi = pi/2, pure noise).

Time t in [0, 1] maps to phi = pi t / 2, so the network reads the same noise-level number as the
cosine v-objective of tunesmith.diffusion.objectives (there phi = pi t / 2 too: the two
coordinate systems coincide, sigma = tan(phi)), and a model trained here runs with the
existing samplers as well.  What the angle form adds is per-frame angles: phi may differ along
the sequence, which is how MeLoDy's multi-chunk training gives every segment its own noise
level, and how a known prefix (phi = 0) sits beside frames still being denoised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

T_MAX = 1.0 - 1e-4  # the first sampling angle, just below pi/2

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (B, D, T), t (B, T)) -> v (B, D, T)


def angle(t: torch.Tensor) -> torch.Tensor:
    """phi = pi t / 2 (sec. 3.2: the angle grows from 0, data, to pi/2, noise)."""
    return t * (math.pi / 2)


def _frames(phi: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Angles (B,) or (B, T) broadcast against latents (B, D, T)."""
    return phi.view(-1, 1, 1) if phi.dim() == 1 else phi[:, None, :]


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z = cos(phi) x0 + sin(phi) eps, with t (B,) or per frame (B, T)."""
    phi = _frames(angle(t), x0)
    return torch.cos(phi) * x0 + torch.sin(phi) * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The target v = cos(phi) eps - sin(phi) x0."""
    phi = _frames(angle(t), x0)
    return torch.cos(phi) * noise - torch.sin(phi) * x0


def predicted_x0(z: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = cos(phi) z - sin(phi) v (the inverse rotation)."""
    phi = _frames(angle(t), z)
    return torch.cos(phi) * z - torch.sin(phi) * v


def velocity_from_x0(z: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity that makes :func:`predicted_x0` return ``x0``: v = (cos(phi) z - x0) / sin(phi)."""
    phi = _frames(angle(t), z)
    return (torch.cos(phi) * z - x0) / torch.sin(phi).clamp_min(1e-6)


def loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error; ``weight`` (B, 1 or D, T) selects frames (0 for known ones)."""
    err = (prediction.float() - velocity(x0, noise, t).float()).pow(2)
    if weight is None:
        return err.mean()
    weight = weight.float().expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def multi_chunk_times(batch: int, frames: int, segment: int, generator: torch.Generator | None = None,
                      *, ordered: bool = True) -> torch.Tensor:
    """Per-frame training times (B, frames): one time per segment of ``segment`` frames.

    MeLoDy's multi-chunk velocity (sec. 3.2, as we read it): the segments of one example are
    noised to different levels.  ``ordered`` draws segment m of N from [m/N, (m+1)/N) in a
    random order per example, so every example spans the whole range of angles (a stratified
    draw); otherwise each segment's time is uniform on (0, 1) independently.
    """
    if segment < 1 or frames < 1:
        raise ValueError(f"need segment >= 1 and frames >= 1, got {segment}, {frames}")
    n = math.ceil(frames / segment)
    u = torch.rand(batch, n, generator=generator)
    if ordered:
        order = torch.argsort(torch.rand(batch, n, generator=generator), dim=1).float()
        u = (order + u) / n
    t = u.clamp(1e-4, T_MAX)
    return t.repeat_interleave(segment, dim=1)[:, :frames]


def times(steps: int, t_max: float = T_MAX) -> torch.Tensor:
    """Sampling times, ``steps`` + 1 of them, uniform in angle from ``t_max`` down to 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max must be in (0, 1], got {t_max}")
    return torch.linspace(t_max, 0.0, steps + 1)


@torch.no_grad()
def sample(
    net: Velocity,
    noise: torch.Tensor,
    schedule: torch.Tensor,
    *,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """MeLoDy's sampler: rotate by the angle of each step, z' = cos(delta) z - sin(delta) v.

    ``net(z, t)`` predicts v with per-frame times t (B, T).  ``known`` (B, D, T) with ``keep``
    (B, 1, T) = 1 marks frames that are given (outpainting): they sit at t = 0, z = known, and
    only the others move.  With no known frames and a schedule uniform in angle this is DDIM
    (eta = 0) written as a rotation.  NFE = len(schedule) - 1.
    """
    if schedule.dim() != 1 or len(schedule) < 2 or bool((schedule[1:] > schedule[:-1]).any()):
        raise ValueError("schedule must be a non-increasing 1-D tensor of at least two times")
    b, _, frames = noise.shape
    free = torch.ones(b, 1, frames, device=noise.device) if keep is None else 1 - keep.to(noise.device, noise.dtype)
    z = noise  # phi_0 is (almost) pi/2: z is the noise itself
    if known is not None:
        z = free * noise + (1 - free) * known
    total = len(schedule) - 1
    for i in tqdm(range(total), desc="angle", disable=not progress, leave=False):
        t_now, t_next = float(schedule[i]), float(schedule[i + 1])
        t_frames = free[:, 0] * t_now  # known frames are at t = 0
        v = net(z, t_frames)
        delta = angle(torch.tensor(t_now - t_next))
        z_next = torch.cos(delta) * z - torch.sin(delta) * v
        z = free * z_next + (1 - free) * (z if known is None else known)
        if callback is not None:
            callback(i + 1, total)
    return z
