"""Zero-shot tagging with the CLAP, flat and hierarchical (CHiLS).

Flat zero-shot classification (CLIP, Radford et al. 2021): embed one text per label
("music played by a brass section") and pick the label whose text is most similar to
the audio.

CHiLS (Novack et al. 2023, "Zero-shot image classification with hierarchical label
sets"): when the parent classes are broad ("brass"), score their subclasses instead
("trumpet", "trombone", "tuba", ...), which the contrastive model has seen named in
captions far more often, and map the best subclass back to its parent.  CHiLS also
reconciles the two levels: a subclass's score is its own probability times its parent's
probability from the parent prompts, so a subclass only wins when its parent agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_TEMPLATE = "music played by {}"

# Instrument families of the corpus and the instruments that make them up (from the
# corpus's General MIDI table, tunesmith.data.instruments, when it is importable).
_FALLBACK_FAMILIES: dict[str, tuple[str, ...]] = {
    "piano": ("piano", "electric piano", "harpsichord"),
    "strings": ("violin", "viola", "cello", "string ensemble", "pizzicato strings"),
    "brass": ("trumpet", "trombone", "tuba", "french horn", "brass section"),
    "woodwinds": ("flute", "clarinet", "oboe", "bassoon", "alto sax"),
    "guitar": ("nylon guitar", "steel guitar", "electric guitar"),
    "organ": ("church organ", "drawbar organ", "accordion"),
    "mallets": ("marimba", "vibraphone", "xylophone", "glockenspiel"),
    "plucked": ("harp", "banjo", "sitar", "koto"),
    "bass": ("upright bass", "electric bass", "synth bass"),
    "choir": ("choir",),
    "synth": ("square lead", "sawtooth lead", "warm pad"),
    "drums": ("drum kit",),
}


def instrument_hierarchy() -> dict[str, tuple[str, ...]]:
    """Family -> instrument names, as the corpus defines them."""
    try:
        from tunesmith.data.instruments import BY_NAME, DRUM_KIT
    except ImportError:
        return dict(_FALLBACK_FAMILIES)
    families: dict[str, list[str]] = {}
    for inst in [*BY_NAME.values(), DRUM_KIT]:
        families.setdefault(inst.family, []).append(inst.name)
    return {family: tuple(names) for family, names in sorted(families.items())}


@dataclass
class HierarchicalPrediction:
    """CHiLS output for a batch: parent labels and probabilities, best subclasses."""

    parents: list[str]  # predicted parent label per item
    parent_probs: np.ndarray  # (B, P) reconciled probability per parent
    children: list[str]  # best subclass per item
    parent_names: list[str]


def label_probabilities(audio_emb: torch.Tensor, label_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax over labels of the scaled audio-label cosine similarities: (B, L)."""
    return torch.softmax(logit_scale * audio_emb @ label_emb.T, dim=-1)


def flat_zero_shot(model, audio_emb: torch.Tensor, labels: list[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """(B, L) label probabilities from one prompt per label."""
    if not labels:
        raise ValueError("no labels to classify into")
    label_emb = model.embed_text([template.format(label) for label in labels])
    return label_probabilities(audio_emb, label_emb, float(model.logit_scale.detach().exp().clamp(max=100.0)))


def chils_combine(
    child_probs: torch.Tensor, owner: list[int], parent_probs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CHiLS decision from subclass probabilities (B, C) whose column c belongs to parent
    ``owner[c]``.  With ``parent_probs`` (B, P) each child's score is multiplied by its
    parent's probability (the reweighting of Novack et al. 2023).

    Returns (B,) index of the best child and (B, P) parent probabilities (normalised sums of
    their children's scores).
    """
    owner_t = torch.as_tensor(owner, dtype=torch.long)
    if child_probs.dim() != 2 or child_probs.shape[1] != len(owner):
        raise ValueError(f"child_probs must be (B, {len(owner)}), got {tuple(child_probs.shape)}")
    scores = child_probs if parent_probs is None else child_probs * parent_probs[:, owner_t]
    n_parents = int(owner_t.max()) + 1 if parent_probs is None else parent_probs.shape[1]
    per_parent = torch.zeros(child_probs.shape[0], n_parents, dtype=scores.dtype).index_add_(1, owner_t, scores)
    per_parent = per_parent / per_parent.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return scores.argmax(dim=1), per_parent


def chils(
    model,
    audio_emb: torch.Tensor,
    hierarchy: dict[str, tuple[str, ...] | list[str]],
    template: str = DEFAULT_TEMPLATE,
    *,
    reweight: bool = True,
) -> HierarchicalPrediction:
    """CHiLS (Novack et al. 2023): classify into parents by scoring their subclasses.

    p(child) is the softmax over all subclass prompts; with ``reweight`` each child's score
    is multiplied by the probability of its parent from the parent prompts.  The prediction
    is the parent of the best child (:func:`chils_combine`).
    """
    parents = list(hierarchy)
    if not parents or any(not hierarchy[p] for p in parents):
        raise ValueError("every parent label needs at least one subclass")
    children, owner = [], []
    for i, parent in enumerate(parents):
        for child in hierarchy[parent]:
            children.append(child)
            owner.append(i)
    child_probs = flat_zero_shot(model, audio_emb, children, template)
    parent_probs = flat_zero_shot(model, audio_emb, parents, template) if reweight else None
    best, per_parent = chils_combine(child_probs, owner, parent_probs)
    return HierarchicalPrediction(
        parents=[parents[owner[int(b)]] for b in best],
        parent_probs=per_parent.numpy(),
        children=[children[int(b)] for b in best],
        parent_names=parents,
    )
