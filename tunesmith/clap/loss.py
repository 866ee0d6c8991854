"""Contrastive objectives for the CLAP towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) audio-text logit matrix whose diagonal holds the pairs.

    The CLIP objective (Radford et al. 2021, also CLAP, Elizalde et al. 2023): the mean of
    the cross-entropy of picking the right caption for each audio (rows) and the right
    audio for each caption (columns).  Its value for random embeddings is log(B).
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"expected a square (B, B) logit matrix, got shape {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def duplicate_aware_targets(captions: list[str]) -> torch.Tensor:
    """(B, B) target distribution: uniform over the items that share the row's caption.

    Two clips of the same render can carry the same caption; treating the other as a
    negative would push apart what the text cannot tell apart.
    """
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def soft_contrastive_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets (rows sum to 1); equals
    :func:`symmetric_contrastive_loss` when ``targets`` is the identity."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    targets = targets.to(logits.device, logits.dtype)
    rows = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    cols_t = targets.T / targets.T.sum(dim=1, keepdim=True)
    cols = -(cols_t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (rows + cols)


def window_to_text_loss(window_logits: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each audio window (rows of (N, B) logits) picking its piece's caption.

    Used beside the fused loss so that every single window of a long piece also matches the
    piece's caption (CoLLAP trains clip-level and piece-level agreement together).
    """
    return F.cross_entropy(window_logits, owner.to(window_logits.device))
