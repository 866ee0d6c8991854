"""The adversarial half of Presto-S: a least-squares GAN head on the fake score model's features.

DMD2 (Yin et al. 2024, sec. 4.3) and Presto-S (Novack et al. 2025, sec. 3.1) put a small
discriminator on the *fake* denoiser's intermediate activations, given noised latents:
noised real latents (from the latent cache) should score 1, noised student samples 0.  The
fake model already has to understand the student's distribution at every noise level, so
its features are a strong, cheap discriminator; the generator is pushed towards real data
directly, not only towards the teacher (which is where its quality ceiling would be).

The losses are the least-squares GAN's (Mao et al. 2017): smooth, and bounded gradients
for confident scores, which keeps the two-player game calm at small batch sizes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


class FeatureCritic(nn.Module):
    """Scores hidden states of chosen DiT blocks: per block, per frame a small MLP, averaged
    over frames and blocks (a patch discriminator along time)."""

    def __init__(self, width: int, blocks: Sequence[int], hidden: int = 0) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("the critic needs at least one block's features")
        self.blocks = [int(b) for b in blocks]
        hidden = hidden or max(32, width // 2)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1)) for _ in self.blocks
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Block outputs (B, L, W), in ``blocks`` order -> one score per example (B,)."""
        scores = [head(h.float()).squeeze(-1)[:, 1:].mean(1) for head, h in zip(self.heads, features)]  # skip the global token
        return torch.stack(scores, 0).mean(0)


@contextlib.contextmanager
def block_outputs(dit: nn.Module, blocks: Sequence[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``dit.blocks[i]`` for i in ``blocks`` during forward passes inside
    the ``with``; the list is filled in order and cleared by the caller between passes."""
    captured: list[torch.Tensor] = []
    handles = [dit.blocks[i].register_forward_hook(lambda _m, _i, out: captured.append(out)) for i in blocks]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def lsgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's loss: real towards 1, generated towards 0."""
    return (real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean()


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's loss: its samples towards the critic's "real"."""
    return (fake_scores - 1).pow(2).mean()
