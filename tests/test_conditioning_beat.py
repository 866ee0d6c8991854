"""The beat clock: beats where the tempo puts them, one grid across windows, zeros for none."""

import math

import pytest
import torch

from tunesmith.conditioning.beat import CLOCK_DIM, CYCLES_PER_BEAT, beat_clock, prompt_clocks


def test_the_beat_cosine_peaks_on_every_beat():
    clock = beat_clock(120.0, 101, 50.0)  # 120 BPM at 50 frames/s: a beat every 25 frames
    assert clock.shape == (CLOCK_DIM, 101)
    beat_cos = clock[len(CYCLES_PER_BEAT) + CYCLES_PER_BEAT.index(1.0)]
    peaks = torch.nonzero(beat_cos > 1 - 1e-6).flatten().tolist()
    assert peaks == [0, 25, 50, 75, 100]
    assert beat_cos[12].item() == pytest.approx(math.cos(2 * math.pi * 12 / 25), abs=1e-6)


def test_a_later_window_continues_the_same_grid():
    whole = beat_clock(97.0, 300, 50.0)
    torch.testing.assert_close(beat_clock(97.0, 120, 50.0, start_frame=180), whole[:, 180:])


def test_the_clock_is_never_the_zero_vector_that_means_none():
    clock = beat_clock(73.0, 500, 50.0)
    torch.testing.assert_close(clock.norm(dim=0), torch.full((500,), math.sqrt(len(CYCLES_PER_BEAT))))


def test_prompt_clocks_follow_the_named_tempo():
    clocks = prompt_clocks(["solo piano at 90 BPM", "a gentle lullaby", "brisk march, 132 beats per minute"], 40, 50.0)
    torch.testing.assert_close(clocks[0], beat_clock(90.0, 40, 50.0))
    assert clocks[1].abs().sum() == 0
    torch.testing.assert_close(clocks[2], beat_clock(132.0, 40, 50.0))


def test_bad_input():
    with pytest.raises(ValueError, match="bpm and frame_rate"):
        beat_clock(0.0, 10, 50.0)
    with pytest.raises(ValueError, match="num_frames and start_frame"):
        beat_clock(120.0, 10, 50.0, start_frame=-1)
