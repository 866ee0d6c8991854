"""Coarse tokens: what stage 1 plans and stage 2 reads, and how their frames line up.

The coarse tokens are the first ``K`` codebooks (default 1) of codec-24k at 50 frames/s: the
first residual level carries the coarse content (what the later levels refine), it is already
what the bundled token LM predicts first, and it needs no new model.  Stage 2 (the DPD) reads
them at their own rate, ``r`` = 50 / 25 = 2 token frames per VAE latent frame.

Stage 1 plans them with the token LM over *stacked* frames: ``s`` consecutive frames of the K
codebooks become one LM step of K * s parallel streams (pattern ``parallel``), so the LM runs
one forward pass per s frames.  That is where the two-stage split saves LM passes: a 4-codebook
delay-pattern LM takes F + 3 passes for F frames, the stacked coarse LM F / s (s = 5: about
5x fewer); the cells of one step are sampled independently given the past, the price of it.
"""

from __future__ import annotations

import torch


def stack_frames(tokens: torch.Tensor, stack: int) -> torch.Tensor:
    """(B, K, F) -> (B, K * stack, F / stack): step j holds frames j*stack .. j*stack+stack-1,
    stream i = (frame offset i // K, codebook i % K).  F must be a multiple of ``stack``."""
    b, k, f = tokens.shape
    if stack < 1 or f % stack:
        raise ValueError(f"cannot stack {f} frames by {stack}")
    return tokens.view(b, k, f // stack, stack).permute(0, 3, 1, 2).reshape(b, stack * k, f // stack)


def unstack_frames(steps: torch.Tensor, codebooks: int) -> torch.Tensor:
    """The inverse of :func:`stack_frames`: (B, K * s, S) -> (B, K, S * s)."""
    b, ks, n = steps.shape
    if ks % codebooks:
        raise ValueError(f"{ks} streams are not a multiple of {codebooks} codebooks")
    s = ks // codebooks
    return steps.view(b, s, codebooks, n).permute(0, 2, 3, 1).reshape(b, codebooks, n * s)


def tokens_per_frame(token_rate: float, latent_rate: float) -> int:
    """Token frames per latent frame (an integer >= 1, or an error naming both rates)."""
    ratio = token_rate / latent_rate
    r = round(ratio)
    if r < 1 or abs(ratio - r) > 1e-6:
        raise ValueError(f"coarse tokens at {token_rate:g}/s do not align with latents at {latent_rate:g}/s "
                         "(need a whole number of token frames per latent frame)")
    return r


def lm_forward_passes(frames: int, codebooks: int, pattern: str, stack: int = 1) -> int:
    """Decoding steps (one LM forward pass each, CFG rows batched) for ``frames`` codec frames."""
    steps = -(-frames // stack)
    if pattern == "parallel":
        return steps
    if pattern == "delay":
        return steps + codebooks - 1
    if pattern == "flattening":
        return steps * codebooks
    raise ValueError(f"no pass count for pattern {pattern!r}")
