"""Humanised renders (tunesmith.data.humanize): small, seeded departures from the grid and the mix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tunesmith.data.arrange import PPQ, Arrangement, Track
from tunesmith.data.humanize import Humanize, humanize
from tunesmith.data.instruments import BY_NAME, DRUM_CHANNEL


def _arrangement() -> Arrangement:
    piano = BY_NAME["piano"]
    notes = [(k * PPQ, k * PPQ + PPQ // 2, 60 + k % 12, 80) for k in range(400)]
    tracks = [Track("melody", piano, 0, True, list(notes), volume=112, pan=64, reverb=40),
              Track("accompaniment", piano, 1, False, list(notes), volume=96, pan=40, reverb=40, chorus=10),
              Track("drums", piano, DRUM_CHANNEL, False, list(notes), volume=96, pan=64, reverb=20)]
    # 120 BPM in quarters: 500 000 us per quarter, so one ms is PPQ / 500 ticks
    return Arrangement("w", 0, "pop", "band", 120, 1.0, 500_000, 0, 0, "major", [0, 400 * PPQ], ["4/4"],
                       tracks, [], "room", 1, "full")


def test_onsets_move_by_milliseconds_lengths_stay_and_the_original_is_untouched():
    arr = _arrangement()
    before = [list(t.notes) for t in arr.tracks]
    played = humanize(arr, np.random.default_rng(0), Humanize(timing_ms=10.0, velocity=7.0))
    assert [t.notes for t in arr.tracks] == before
    ms_per_tick = 500.0 / PPQ
    for original, track in zip(before, played.tracks):
        shifts = np.array([b[0] - a[0] for a, b in zip(original, track.notes)]) * ms_per_tick
        lengths = [(b[1] - b[0]) - (a[1] - a[0]) for a, b in zip(original, track.notes)]
        expected = 5.0 if track.channel == DRUM_CHANNEL else 10.0  # drums keep time better
        assert np.std(shifts) == pytest.approx(expected, rel=0.15) and abs(np.mean(shifts)) < 1.5
        assert max(abs(d) for d in lengths) <= 1  # rounding of a tick at most
        dv = np.array([b[3] - a[3] for a, b in zip(original, track.notes)])
        assert np.std(dv) == pytest.approx(7.0, rel=0.15) and all(1 <= b[3] <= 127 for b in track.notes)


def test_the_mix_widens_within_midi_ranges():
    arr = _arrangement()
    pans = [humanize(arr, np.random.default_rng(s)).tracks[1].pan for s in range(200)]
    assert 10 < np.std(pans) < 30 and min(pans) >= 0 and max(pans) <= 127
    central = [humanize(arr, np.random.default_rng(s)).tracks[0].pan for s in range(200)]
    assert np.std(central) < np.std(pans)  # the melody leaves the centre less
    volumes = [humanize(arr, np.random.default_rng(s)).tracks[0].volume for s in range(200)]
    assert 40 <= min(volumes) and max(volumes) <= 127 and np.std(volumes) > 4


def test_seeded_and_off_when_zero():
    arr = _arrangement()
    a, b = humanize(arr, np.random.default_rng(5)), humanize(arr, np.random.default_rng(5))
    assert a == b and a != humanize(arr, np.random.default_rng(6))
    still = humanize(arr, np.random.default_rng(5), Humanize(0.0, 0.0, 0.0, 0.0, 0.0))
    assert [t.notes for t in still.tracks] == [t.notes for t in arr.tracks]
    assert [dataclasses.replace(t, notes=[]) for t in still.tracks] == [dataclasses.replace(t, notes=[]) for t in arr.tracks]
    with pytest.raises(ValueError, match="humanize.timing_ms"):
        Humanize(timing_ms=-1.0)
