"""How good is a CLAP: text-to-audio retrieval and caption discrimination on a held-out split."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def recall_at_k(similarity: torch.Tensor | np.ndarray, k: int, groups: list[Any] | None = None) -> float:
    """Fraction of queries (rows) whose own item (column i for row i) ranks in the top ``k``.

    Retrieval recall as reported for CLIP/CLAP (e.g. Wu et al. 2023).  When ``groups`` is
    given, a column counts as correct if it belongs to the row's group (clips sharing the
    exact caption are indistinguishable by text, so either is a hit).
    """
    sim = torch.as_tensor(similarity, dtype=torch.float64)
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square (N, N), got {tuple(sim.shape)}")
    n = sim.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = sim.topk(min(k, n), dim=1).indices
    hits = 0
    for i in range(n):
        if groups is None:
            hits += int((top[i] == i).any())
        else:
            hits += int(any(groups[int(j)] == groups[i] for j in top[i]))
    return hits / n


def retrieval_scores(audio_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """R@1/R@5/R@10 in both directions for paired unit embeddings, plus chance levels."""
    sim = text_emb @ audio_emb.T  # text queries retrieving audio
    n = sim.shape[0]
    out = {}
    for k in (1, 5, 10):
        out[f"text_to_audio_R@{k}"] = recall_at_k(sim, k, captions)
        out[f"audio_to_text_R@{k}"] = recall_at_k(sim.T, k, captions)
        out[f"chance_R@{k}"] = min(k, n) / n
    out["items"] = float(n)
    return out


def different_family_rate(
    audio_emb: torch.Tensor, text_emb: torch.Tensor, families: list[list[str]], *, seed: int = 0, trials: int = 5
) -> float:
    """How often an audio's own caption scores above the caption of a clip whose instrument
    families share nothing with its own (``trials`` random competitors per audio)."""
    rng = np.random.default_rng(seed)
    sim = (audio_emb @ text_emb.T).numpy()
    sets = [set(f) for f in families]
    wins, total = 0, 0
    for i in range(len(sets)):
        candidates = [j for j in range(len(sets)) if sets[j] and not (sets[j] & sets[i])]
        if not sets[i] or not candidates:
            continue
        for j in rng.choice(candidates, size=min(trials, len(candidates)), replace=False):
            wins += int(sim[i, i] > sim[i, j])
            total += 1
    if total == 0:
        raise ValueError("no pair of clips with disjoint instrument families to compare")
    return wins / total


def swapped_instrument_rate(
    model, audio_emb: torch.Tensor, captions: list[str], instruments: list[list[str]], hierarchy: dict[str, tuple[str, ...]],
    *, seed: int = 0,
) -> float:
    """Minimal pairs: an audio's caption against the same caption with each named instrument
    replaced by one of another family.  The rate at which the true caption wins."""
    rng = np.random.default_rng(seed)
    family_of = {name: fam for fam, names in hierarchy.items() for name in names}
    originals, edited, rows = [], [], []
    for i, (caption, names) in enumerate(zip(captions, instruments)):
        present = [n for n in names if n in caption and n in family_of]
        if not present:
            continue
        text = caption
        for name in sorted(present, key=len, reverse=True):
            others = [n for n, f in family_of.items() if f != family_of[name] and n not in caption]
            text = text.replace(name, str(rng.choice(others)))
        if text != caption:
            originals.append(caption)
            edited.append(text)
            rows.append(i)
    if not rows:
        raise ValueError("no caption names an instrument from the hierarchy")
    own = (audio_emb[rows] * model.embed_text(originals)).sum(-1)
    swapped = (audio_emb[rows] * model.embed_text(edited)).sum(-1)
    return float((own > swapped).float().mean())
