"""Skipping DiT blocks at some noise levels, with the hidden state's scale kept (Presto-L).

Layer dropping (ASE, Moon et al. 2024) runs fewer transformer blocks where the network has
less to do, by noise level.  Through the residual stream, a dropped block leaves its input
unchanged, but every block adds variance: the blocks after a drop, and the output
projection, then read hidden states smaller than they were trained on, and quality falls
by more than the dropped computation explains.  Presto-L (Novack et al. 2025, sec. 3.2)
keeps the hidden-state statistics instead; here each skipped block is replaced by a gain,
h -> g * h, one scalar per (budget level, block), set to the teacher's measured ratio
std(block(h)) / std(h) (:func:`tunesmith.distill.layers.calibrate_gains`) and then trained
with the rest of the student.

A budget is a list of noise levels with the number of blocks skipped at and above each:
``sigmas = (1.0, 10.0), blocks = (2, 4)`` skips 2 blocks for 1 <= sigma < 10 and 4 from 10
up.  The skipped blocks are the ones just before the last (first and last always run):
early blocks read the input, the last one writes the output.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn


def noise_level_to_sigma(noise_level: torch.Tensor, parameterization: str) -> torch.Tensor:
    """What the DiT receives as ``noise_level`` (cosine time t for "v", c_noise = ln(sigma) / 4
    for "edm"; see tunesmith.diffusion.denoiser) back to sigma."""
    if parameterization == "v":
        return torch.tan(noise_level.float() * (math.pi / 2))
    return (4 * noise_level.float()).exp()


def skipped_blocks(depth: int, count: int) -> list[int]:
    """The ``count`` blocks a budget skips: those just before the last one."""
    if not 0 <= count <= depth - 2:
        raise ValueError(f"can skip 0 to {depth - 2} of {depth} blocks (first and last always run), got {count}")
    return list(range(depth - 1 - count, depth - 1))


class LayerSkip(nn.Module):
    """Which blocks run at a noise level, and the gains that stand in for the others."""

    def __init__(self, depth: int, sigmas: Sequence[float], blocks: Sequence[int], parameterization: str = "v") -> None:
        super().__init__()
        if len(sigmas) != len(blocks) or not sigmas:
            raise ValueError(f"a layer budget needs as many noise levels as block counts, got {list(sigmas)} and {list(blocks)}")
        if any(b <= a for a, b in zip(sigmas, sigmas[1:])) or sigmas[0] <= 0:
            raise ValueError(f"budget noise levels must be positive and increasing, got {list(sigmas)}")
        for count in blocks:
            skipped_blocks(depth, count)  # checks the range
        self.depth, self.parameterization = depth, parameterization
        self.register_buffer("thresholds", torch.tensor([float(s) for s in sigmas]), persistent=False)
        self.counts = [int(b) for b in blocks]
        self.gains = nn.Parameter(torch.ones(len(self.counts), depth))

    def levels(self, noise_level: torch.Tensor) -> torch.Tensor:
        """Budget level per row (B,): -1 below the lowest threshold (nothing skipped)."""
        sigma = noise_level_to_sigma(noise_level, self.parameterization)
        return torch.bucketize(sigma, self.thresholds.to(sigma.device), right=True) - 1

    def skips(self, block: int, levels: torch.Tensor) -> torch.Tensor:
        """(B,) bool: whether ``block`` is skipped for each row's level."""
        flags = [block in skipped_blocks(self.depth, c) for c in self.counts]
        table = torch.tensor([False, *flags], device=levels.device)
        return table[levels + 1]

    def forward(self, block: int, h: torch.Tensor, levels: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Block ``block`` over h (B, L, W): run where it is not skipped, g * h where it is; a
        block that every row skips is not computed at all (the saving)."""
        skip = self.skips(block, levels)
        if not bool(skip.any()):
            return run(h)
        gain = self.gains[levels.clamp(min=0), block].to(h.dtype)[:, None, None]
        if bool(skip.all()):
            return h * gain
        return torch.where(skip[:, None, None], h * gain, run(h))

    def blocks_run(self, sigma: float) -> int:
        """Blocks computed per forward pass at noise level ``sigma``."""
        level = int(torch.bucketize(torch.tensor([float(sigma)]), self.thresholds.cpu(), right=True)[0]) - 1
        return self.depth - (self.counts[level] if level >= 0 else 0)
