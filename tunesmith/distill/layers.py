"""Presto-L's measurements: hidden-state statistics per block, and the gains that keep them.

:mod:`tunesmith.diffusion.layerskip` replaces a skipped block by h -> g * h.  Here g is set
from the teacher: over noisy inputs at the noise levels of each budget level, the ratio of
the block's output to input standard deviation, so that the student's residual stream has
the teacher's scale after every block, skipped or not (Presto-L's fix over plain dropping,
which keeps g = 1).  Training then refines g with the rest of the weights.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.layerskip import LayerSkip


@contextlib.contextmanager
def block_io(dit: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record (input, output) hidden states of every block of ``dit`` during forwards inside the ``with``
    (blocks that a layer budget skips are not called, so they record nothing)."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [block.register_forward_hook(lambda _m, args, out: records.append((args[0].detach(), out.detach())))
               for block in dit.blocks]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _stream_std(h: torch.Tensor) -> float:
    return float(h[:, 1:].float().std())  # frames only: the global token is one of hundreds


@torch.no_grad()
def hidden_stds(dit: nn.Module, x: torch.Tensor, sigma: float, **cond: Any) -> list[float]:
    """Standard deviation of the residual stream after each block (skipped blocks included)
    for the noisy latents ``x`` at noise level ``sigma``: what Presto-L keeps equal to the teacher's."""
    den = Denoiser(dit, dit.config.parameterization, dit.config.sigma_data)
    # with a budget every block's step goes through the layer skip (run or stood in for): read it there
    skip: LayerSkip | None = getattr(dit, "layer_skip", None)
    sources = [skip] if skip is not None else list(dit.blocks)
    stream: list[float] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: stream.append(_stream_std(out))) for m in sources]
    try:
        den(x, sigma, **cond)
    finally:
        for handle in handles:
            handle.remove()
    return stream


@torch.no_grad()
def calibrate_gains(student: nn.Module, teacher: nn.Module, x0: torch.Tensor, *, draws: int = 4,
                    generator: torch.Generator | None = None, **cond: Any) -> torch.Tensor:
    """Set ``student.layer_skip.gains`` to the teacher's std(out) / std(in) of each block, measured on
    clean latents ``x0`` noised at ``draws`` noise levels inside each budget level; returns the gains."""
    skip: LayerSkip | None = getattr(student, "layer_skip", None)
    if skip is None:
        raise ValueError("the student has no layer budget (skip_sigmas / skip_blocks in its DiTConfig)")
    den = Denoiser(teacher, teacher.config.parameterization, teacher.config.sigma_data)
    thresholds = [float(s) for s in skip.thresholds]
    gains = torch.ones_like(skip.gains)
    for level, low in enumerate(thresholds):
        high = thresholds[level + 1] if level + 1 < len(thresholds) else max(80.0, 4 * low)
        ratios = torch.zeros(skip.depth)
        for i in range(draws):  # noise levels spread evenly in log sigma across the level
            sigma = math.exp(math.log(low) + (i + 0.5) / draws * (math.log(high) - math.log(low)))
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            with block_io(teacher) as records:
                den(x0 + sigma * noise, sigma, **cond)
            ratios += torch.tensor([_stream_std(out) / max(_stream_std(inp), 1e-8) for inp, out in records])
        gains[level] = ratios / draws
    skip.gains.data.copy_(gains.to(skip.gains.device))
    return gains
