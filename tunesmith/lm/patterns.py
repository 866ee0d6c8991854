"""Codebook interleaving patterns: how K parallel token streams become one sequence of steps.

A codec frame holds K tokens, one per residual codebook.  The LM predicts one
*pattern step* at a time, and each step predicts a set of (frame, codebook) cells
(MusicGen sec. 2.1):

- ``parallel``:     step t predicts all K codebooks of frame t            (T steps);
- ``delay``:        codebook k is shifted right by k, so step s predicts codebook k of
                    frame s - k; every codebook is conditioned on the coarser codebooks
                    of the same frame                                      (T + K - 1 steps);
- ``flattening``:   every cell is its own step, s = t * K + k — the exact
                    autoregressive factorisation                          (K * T steps);
- ``coarse_first``: codebook 0 of every frame first, then the K - 1 finer codebooks
                    of each frame in parallel (VALL-E-like)              (2 T steps);
- ``stereo_delay``: the delay pattern over (left, right) pairs: codebook k is shifted by
                    k // 2, so codebooks 2j and 2j + 1 (codebook j of each channel,
                    interleaved as MusicGen's stereo checkpoints store them) share a
                    step                                          (T + (K - 1) // 2 steps).

All five have at most one cell per codebook per step, so a pattern is one table
``layout`` (S, K): ``layout[s, k]`` is the frame whose codebook k step s predicts,
or -1 when step s predicts nothing for codebook k.  Everything else is a gather
or scatter through that table, which makes the round trip exact by construction.
"""

from __future__ import annotations

from typing import Literal

import torch

PatternName = Literal["parallel", "delay", "flattening", "coarse_first", "stereo_delay"]
PATTERNS: tuple[str, ...] = ("parallel", "delay", "flattening", "coarse_first", "stereo_delay")


def num_steps(name: str, num_codebooks: int, num_frames: int) -> int:
    """How many pattern steps cover ``num_frames`` frames of ``num_codebooks`` codebooks."""
    K, T = num_codebooks, num_frames
    steps = {"parallel": T, "delay": T + K - 1 if T > 0 else 0, "flattening": K * T, "coarse_first": 2 * T if K > 1 else T,
             "stereo_delay": T + (K - 1) // 2 if T > 0 else 0}
    if name not in steps:
        raise ValueError(f"unknown pattern '{name}' (known: {', '.join(PATTERNS)})")
    return steps[name]


def frames_for_steps(name: str, num_codebooks: int, num_steps_: int) -> int:
    """The largest frame count whose pattern fits in ``num_steps_`` steps."""
    T = 0
    while num_steps(name, num_codebooks, T + 1) <= num_steps_:
        T += 1
    return T


def layout(name: str, num_codebooks: int, num_frames: int) -> torch.Tensor:
    """(S, K) int64: the frame each step predicts for each codebook, -1 for none."""
    K, T = num_codebooks, num_frames
    if K < 1 or T < 0:
        raise ValueError(f"need num_codebooks >= 1 and num_frames >= 0, got K={K}, T={T}")
    S = num_steps(name, K, T)
    table = torch.full((S, K), -1, dtype=torch.long)
    frames = torch.arange(T)
    if name == "parallel":
        table[:, :] = frames[:, None]
    elif name == "delay":
        for k in range(K):
            table[k : k + T, k] = frames
    elif name == "flattening":
        for k in range(K):
            table[frames * K + k, k] = frames
    elif name == "stereo_delay":
        for k in range(K):
            table[k // 2 : k // 2 + T, k] = frames
    elif name == "coarse_first":
        table[:T, 0] = frames
        if K > 1:
            table[T:, 1:] = frames[:, None]
    return table


def predicted_cells(table: torch.Tensor, step: int) -> list[tuple[int, int]]:
    """The (frame, codebook) cells that pattern step ``step`` predicts."""
    return [(int(t), k) for k, t in enumerate(table[step].tolist()) if t >= 0]


def to_sequence(tokens: torch.Tensor, table: torch.Tensor, fill: int) -> torch.Tensor:
    """Lay tokens (B, K, T) out as a pattern sequence (B, K, S); empty cells get ``fill``."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (B, K, T), got shape {tuple(tokens.shape)}")
    B, K, T = tokens.shape
    if table.shape[1] != K:
        raise ValueError(f"pattern is for {table.shape[1]} codebooks, tokens have {K}")
    if table.numel() and int(table.max()) >= T:
        raise ValueError(f"pattern covers {int(table.max()) + 1} frames, tokens have {T}")
    index = table.clamp_min(0).t().to(tokens.device)  # (K, S)
    seq = torch.gather(tokens, 2, index.unsqueeze(0).expand(B, K, -1))
    return seq.masked_fill((table.t() < 0).to(tokens.device), fill)


def from_sequence(seq: torch.Tensor, table: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Inverse of :func:`to_sequence`: the pattern sequence (B, K, S) back to tokens (B, K, T)."""
    B, K, S = seq.shape
    if table.shape != (S, K):
        raise ValueError(f"sequence is (K={K}, S={S}) but the pattern is {tuple(table.shape)} (S, K)")
    tokens = torch.empty(B, K, num_frames, dtype=seq.dtype, device=seq.device)
    for k in range(K):
        steps = torch.nonzero(table[:, k] >= 0).squeeze(1)
        frames = table[steps, k]
        if frames.numel() != num_frames or not torch.equal(frames.sort().values, torch.arange(num_frames)):
            raise ValueError(f"pattern does not cover every frame of codebook {k} exactly once")
        tokens[:, k, frames.to(seq.device)] = seq[:, k, steps.to(seq.device)]
    return tokens


def valid_mask(table: torch.Tensor) -> torch.Tensor:
    """(K, S) bool: True where a step predicts a real cell (what the training loss counts)."""
    return (table >= 0).t()


def step_frames(table: torch.Tensor) -> torch.Tensor:
    """(S,): the latest frame each step predicts (0 for a step that predicts none), so that
    per-frame signals such as a beat clock can be read at the step that generates the frame."""
    return table.max(dim=1).values.clamp_min(0)
