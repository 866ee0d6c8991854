"""Harmonise a melody: one diatonic chord per span, chosen by dynamic programming.

Folk tunes arrive as a single line; an accompaniment needs chords.  Each span (a bar or
half bar) scores every diatonic triad by how much of the melody's sounding time it
covers, and a Viterbi pass adds the pull of common progressions (V -> I, IV -> V, ...)
and a tonic at both ends.
"""

from __future__ import annotations

from dataclasses import dataclass

# (degree label, root offset from tonic, triad intervals above the root, prior)
MAJOR_CHORDS = [("I", 0, (0, 4, 7), 1.0), ("ii", 2, (0, 3, 7), 0.3), ("iii", 4, (0, 3, 7), 0.0),
                ("IV", 5, (0, 4, 7), 0.7), ("V", 7, (0, 4, 7), 0.8), ("vi", 9, (0, 3, 7), 0.4)]
MINOR_CHORDS = [("i", 0, (0, 3, 7), 1.0), ("III", 3, (0, 4, 7), 0.3), ("iv", 5, (0, 3, 7), 0.6),
                ("V", 7, (0, 4, 7), 0.8), ("VI", 8, (0, 4, 7), 0.4), ("VII", 10, (0, 4, 7), 0.3)]
GOOD_MOVES = {("V", "I"): 0.6, ("V", "i"): 0.6, ("IV", "V"): 0.3, ("iv", "V"): 0.3, ("ii", "V"): 0.4,
              ("I", "IV"): 0.2, ("I", "V"): 0.2, ("i", "iv"): 0.2, ("i", "V"): 0.2, ("vi", "ii"): 0.2,
              ("VI", "VII"): 0.2, ("VII", "III"): 0.2, ("III", "VI"): 0.1, ("vi", "IV"): 0.2}


@dataclass(frozen=True)
class Chord:
    start: float  # ql
    end: float
    label: str
    root_pc: int
    pcs: tuple[int, ...]  # pitch classes, root first


def spans(measure_starts: list[float], bar_lengths: list[float], beat_ql: float) -> list[tuple[float, float]]:
    """Harmonic rhythm: half bars for long duple bars (4/4, 2/2, 12/8), else whole bars."""
    out = []
    for i in range(len(measure_starts) - 1):
        a, b = measure_starts[i], measure_starts[i + 1]
        full = abs((b - a) - bar_lengths[i]) < 1e-6
        beats = bar_lengths[i] / beat_ql
        if full and beats >= 4 and round(beats) % 2 == 0:
            mid = a + (b - a) / 2
            out += [(a, mid), (mid, b)]
        else:
            out.append((a, b))
    return out


def harmonize(melody: list[list[float]], span_list: list[tuple[float, float]], tonic_pc: int, mode: str) -> list[Chord]:
    """One chord per span for ``melody`` ([onset, duration, pitch] notes) in the given key."""
    table = MAJOR_CHORDS if mode == "major" else MINOR_CHORDS
    chords = [(label, (tonic_pc + root) % 12, tuple((tonic_pc + root + i) % 12 for i in ivs), prior)
              for label, root, ivs, prior in table]
    fits = [[_fit(melody, a, b, pcs) + 0.3 * prior for _, _, pcs, prior in chords] for a, b in span_list]
    if not fits:
        return []
    fits[0][0] += 1.0  # start and end on the tonic
    fits[-1][0] += 2.0
    best = _viterbi(fits, [c[0] for c in chords])
    return [Chord(a, b, chords[k][0], chords[k][1], chords[k][2]) for (a, b), k in zip(span_list, best)]


def _fit(melody: list[list[float]], a: float, b: float, pcs: tuple[int, ...]) -> float:
    """Melody time inside chord tones minus time outside, notes on the span's start counting double."""
    score = 0.0
    for onset, dur, pitch in melody:
        overlap = min(b, onset + dur) - max(a, onset)
        if overlap <= 0:
            continue
        weight = overlap * (2.0 if abs(onset - a) < 1e-6 else 1.0)
        score += weight if int(pitch) % 12 in pcs else -0.7 * weight
    return score


def _viterbi(fits: list[list[float]], labels: list[str]) -> list[int]:
    n = len(labels)
    score = list(fits[0])
    back: list[list[int]] = []
    for row in fits[1:]:
        new, ptr = [], []
        for j in range(n):
            cands = [score[i] + GOOD_MOVES.get((labels[i], labels[j]), 0.0) for i in range(n)]
            i_best = max(range(n), key=lambda i: cands[i])
            new.append(cands[i_best] + row[j])
            ptr.append(i_best)
        score, back = new, back + [ptr]
    k = max(range(n), key=lambda j: score[j])
    path = [k]
    for ptr in reversed(back):
        k = ptr[k]
        path.append(k)
    return path[::-1]
