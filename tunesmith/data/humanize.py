"""Humanised performance and a wider mix for a render: what a player and an engineer add.

An arrangement's notes start exactly on the grid at a few velocities, and its mix has one
balance per role, so every render of the corpus sounded machine-played and mixed alike; a
model trained on them learns that sound.  Here each note's onset moves by a few
milliseconds (its length kept), its velocity by a few steps, and each track's volume, pan
and effect sends by more than the arranger's own choice (:func:`tunesmith.data.arrange._mix`).

Only the render changes: the arrangement the clips' tags, captions and MIDI come from stays on
the grid, so the tags stay exact (a 10 ms shift moves no note across a beat at 200 BPM).
The draws come from their own random stream (the caller's ``rng``), so turning humanising on
or off changes nothing else of a build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tunesmith.data.arrange import Arrangement
from tunesmith.data.instruments import DRUM_CHANNEL


@dataclass(frozen=True)
class Humanize:
    """How much a render strays from the grid and the arranger's mix (standard deviations)."""

    timing_ms: float = 10.0  # onset shift; a drum part gets half (drummers keep the time)
    velocity: float = 7.0  # MIDI velocity steps
    volume: float = 8.0  # MIDI volume (CC 7) steps per track
    pan: float = 20.0  # MIDI pan (CC 10) steps per track, away from the arranger's placement
    sends: float = 12.0  # reverb and chorus send steps per track

    def __post_init__(self) -> None:
        for name in ("timing_ms", "velocity", "volume", "pan", "sends"):
            if not 0 <= getattr(self, name) < 1000:
                raise ValueError(f"humanize.{name} must be in [0, 1000), got {getattr(self, name)}")


def _clip(value: float, low: int = 0, high: int = 127) -> int:
    return int(np.clip(round(value), low, high))


def humanize(arr: Arrangement, rng: np.random.Generator, settings: Humanize = Humanize()) -> Arrangement:
    """A copy of ``arr`` with humanised notes and a widened mix; ``arr`` is unchanged."""
    ticks_per_ms = arr.ticks(1.0) / 1000.0
    tracks = []
    for t in arr.tracks:
        drums = t.channel == DRUM_CHANNEL
        spread = settings.timing_ms * ticks_per_ms * (0.5 if drums else 1.0)
        n = len(t.notes)
        shifts = rng.normal(0.0, spread, n) if n else np.zeros(0)
        velocities = rng.normal(0.0, settings.velocity, n) if n else np.zeros(0)
        notes = []
        for (start, end, pitch, velocity), shift, dv in zip(t.notes, shifts, velocities):
            moved = max(0, int(round(start + shift)))
            notes.append((moved, max(moved + 1, end + moved - start), pitch, _clip(velocity + dv, 1, 127)))
        centre = 64 if t.pan == 64 else t.pan  # central parts may now move off centre, less so
        pan = centre + rng.normal(0.0, settings.pan * (0.5 if t.pan == 64 else 1.0))
        tracks.append(dataclasses.replace(
            t, notes=notes, volume=_clip(t.volume + rng.normal(0.0, settings.volume), 40, 127), pan=_clip(pan),
            reverb=_clip(t.reverb + rng.normal(0.0, settings.sends)),
            chorus=_clip(t.chorus + abs(rng.normal(0.0, settings.sends)) if t.chorus else t.chorus)))
    return dataclasses.replace(arr, tracks=tracks)
