"""Drum patterns that fit the meter and the style, as (offset in the bar, GM drum note, velocity).

Patterns are written per meter class: duple (2/4, 4/4, 2/2), triple (3/4) and compound
(6/8, 9/8, 12/8); offsets are in beats and scaled by the beat length of the bar.
"""

from __future__ import annotations

KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, TAMBOURINE, LOW_TOM, MID_TOM, HIGH_TOM = 49, 51, 54, 45, 47, 50

Hit = tuple[float, int, int]  # (beat offset within the bar, drum note, velocity)


def meter_class(meter: str) -> str:
    """'duple', 'triple', 'compound' or 'odd' for a time signature like '6/8'."""
    num, den = (int(x) for x in meter.split("/"))
    if den >= 8 and num in (6, 9, 12):
        return "compound"
    if num in (2, 4):
        return "duple"
    if num == 3:
        return "triple"
    return "odd"


def _eighths(beats: int, note: int, vel: int, accent: int = 0) -> list[Hit]:
    return [(i / 2, note, vel + (accent if i % 2 == 0 else 0)) for i in range(beats * 2)]


def _duple(style: str, beats: int) -> list[Hit]:
    backbeats = [b for b in range(1, beats, 2)]
    downs = [b for b in range(0, beats, 2)]
    if style == "rock":
        return [(b, KICK, 100) for b in downs] + [(b, SNARE, 100) for b in backbeats] + _eighths(beats, CLOSED_HAT, 70, 10)
    if style == "pop":
        return ([(b, KICK, 96) for b in downs] + [(b + 1.5, KICK, 80) for b in downs if b + 1.5 < beats]
                + [(b, SNARE, 92) for b in backbeats] + _eighths(beats, CLOSED_HAT, 64, 12))
    if style == "electronic":
        return ([(b, KICK, 104) for b in range(beats)] + [(b, CLAP, 90) for b in backbeats]
                + [(b + 0.5, OPEN_HAT, 70) for b in range(beats)])
    if style == "swing":
        swung = [(b + t, RIDE, v) for b in range(beats) for t, v in ((0.0, 74), (2 / 3, 58)) if b % 2 or t == 0.0]
        return swung + [(b, PEDAL_HAT, 70) for b in backbeats] + [(b, KICK, 56) for b in downs]
    if style == "march":
        snare = [(b + t, SNARE, 96 if t == 0 else 70) for b in range(beats) for t in (0.0, 0.5)]
        return [(b, KICK, 100) for b in range(0, beats)] + snare + ([(0.0, CRASH, 80)] if beats <= 2 else [])
    if style == "ballad":
        return [(0.0, KICK, 80)] + [(b, SIDE_STICK, 70) for b in backbeats] + [(b, CLOSED_HAT, 56) for b in range(beats)]
    if style == "folk":
        return [(b, KICK, 80) for b in downs] + [(b, TAMBOURINE, 70) for b in backbeats]
    return [(0.0, KICK, 84)] + [(b, CLOSED_HAT, 60) for b in range(beats)]


def _triple(style: str) -> list[Hit]:
    if style == "waltz":
        return [(0.0, KICK, 90), (1.0, SNARE, 56), (2.0, SNARE, 56), (0.0, CLOSED_HAT, 60), (1.0, CLOSED_HAT, 60),
                (2.0, CLOSED_HAT, 60)]
    if style == "ballad":
        return [(0.0, KICK, 80), (1.0, CLOSED_HAT, 54), (2.0, SIDE_STICK, 64)]
    return [(0.0, KICK, 90), (1.0, CLOSED_HAT, 64), (2.0, CLOSED_HAT, 64)]


def _compound(style: str, beats: int) -> list[Hit]:
    # offsets in dotted-quarter beats; the pulse is three eighths (1/3 of a beat each)
    pulse = [(b + k / 3, CLOSED_HAT, 72 if k == 0 else 54) for b in range(beats) for k in range(3)]
    if style in ("jig", "folk"):
        return [(b, KICK, 90) for b in range(beats)] + [(b + 2 / 3, TAMBOURINE, 64) for b in range(beats)]
    if style == "march":
        return [(b, KICK, 96) for b in range(beats)] + [(b + k / 3, SNARE, 88 if k == 0 else 64)
                                                         for b in range(beats) for k in (0, 2)]
    return [(b, KICK, 90) for b in range(0, beats, 2)] + [(b, SNARE, 88) for b in range(1, beats, 2)] + pulse


def bar_pattern(style: str, meter: str) -> list[Hit]:
    """Hits of one full bar of ``meter`` in ``style``; offsets are in beats of the meter."""
    num = int(meter.split("/")[0])
    kind = meter_class(meter)
    if kind == "duple":
        hits = _duple(style, num if num == 4 else 2)
    elif kind == "triple":
        hits = _triple(style)
    elif kind == "compound":
        hits = _compound(style, num // 3)
    else:
        hits = [(0.0, KICK, 84)] + [(b, CLOSED_HAT, 60) for b in range(num)]
    return sorted(hits)


def fill(beats: float) -> list[Hit]:
    """A short tom fill over the last beat of a bar that has ``beats`` beats."""
    start = beats - 1
    return [(start, HIGH_TOM, 90), (start + 0.25, HIGH_TOM, 84), (start + 0.5, MID_TOM, 88), (start + 0.75, LOW_TOM, 94)]
