"""Key finding (Krumhansl-Schmuckler) on exact notes, so every clip is tagged with its own key.

A work's global key (what music21 reports) can differ from the key of a 20-second window in a
modulating movement; clips are tagged with the key their own notes imply, nudged towards the
work's key when the two are nearly tied.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tunesmith.music import KRUMHANSL_MAJOR, KRUMHANSL_MINOR

MAJOR_PROFILE = np.array(KRUMHANSL_MAJOR)
MINOR_PROFILE = np.array(KRUMHANSL_MINOR)


def pitch_class_weights(notes: Iterable[tuple[float, float, int]]) -> np.ndarray:
    """Total sounding time per pitch class from (start, end, midi pitch) notes."""
    weights = np.zeros(12)
    for start, end, pitch in notes:
        weights[int(pitch) % 12] += max(0.0, end - start)
    return weights


def key_scores(weights: np.ndarray) -> dict[tuple[int, str], float]:
    """Correlation of the pitch-class weights with each of the 24 rotated key profiles."""
    if weights.sum() <= 0 or np.allclose(weights, weights[0]):
        return {}
    out = {}
    for tonic in range(12):
        for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            out[(tonic, mode)] = float(np.corrcoef(np.roll(profile, tonic), weights)[0, 1])
    return out


def estimate_key(weights: np.ndarray, prior: tuple[int, str] | None = None, prior_bonus: float = 0.05) -> tuple[int, str]:
    """(tonic pitch class, mode) best matching ``weights``; ``prior`` wins near-ties.

    Without usable weights (no pitched notes) the prior is returned.
    """
    scores = key_scores(weights)
    if not scores:
        if prior is None:
            raise ValueError("no pitched notes to find a key from")
        return prior
    if prior is not None:
        scores[prior] += prior_bonus
    return max(scores, key=lambda k: scores[k])
