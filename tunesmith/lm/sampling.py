"""Turning logits into tokens: guidance, temperature, top-k, top-p. Pure functions.

MusicGen samples with top-k 250 at temperature 1 and classifier-free guidance of
about 3 (MusicGen sec. 4.1); temperature 0 here means greedy decoding.
"""

from __future__ import annotations

import torch


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond).

    Scale 1 gives the conditional logits; 0 the unconditional ones.
    """
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of the last axis, set the others to -inf (k <= 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of logits whose probabilities sum to at least p (nucleus sampling)."""
    if p <= 0.0 or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= p  # mass before this entry already >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Draw one id per row of logits (..., N); temperature 0 is the argmax.

    Sampling uses the exponential-race form of the categorical distribution
    (argmax of p / E with E ~ Exp(1)), which draws every row with one random tensor
    from ``generator``: the same seed gives the same tokens.  A list of generators, one
    per batch row (dim 0), gives each row its own stream.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    probs = logits.softmax(-1)
    if isinstance(generator, list):
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
        race = torch.cat([torch.empty_like(probs[i : i + 1]).exponential_(generator=g) for i, g in enumerate(generator)])
    else:
        race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(-1)
