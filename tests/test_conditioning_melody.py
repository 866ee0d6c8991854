"""Melody conditioning: the dominant pitch class of each frame, at the token frame rate."""

import math

import pytest
import torch

from tunesmith.conditioning.melody import dominant_chroma

SR, RATE = 16000, 50.0


def tone(freq: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_follows_a_melody_at_the_frame_rate():
    # A4 (pitch class 9) for 1 s, then C5 (pitch class 0) for 1 s, then 0.5 s of silence
    wav = torch.cat([tone(440.0, 1.0), tone(523.25, 1.0), torch.zeros(SR // 2)])[None]
    onehot = dominant_chroma(wav, SR, RATE)
    assert onehot.shape == (1, 12, 125)
    assert torch.all(onehot.sum(1) <= 1)
    bins = onehot[0].argmax(0)
    assert (bins[5:45] == 9).all() and (bins[55:95] == 0).all()
    assert onehot[0, :, 110:].sum() == 0  # silence is "no melody"


def test_frame_count_and_batch():
    wav = torch.stack([tone(440.0, 0.5), tone(392.0, 0.5)])[:, None]  # (2, 1, T): A and G
    onehot = dominant_chroma(wav, SR, RATE, num_frames=40)
    assert onehot.shape == (2, 12, 40)
    assert onehot[0, 9, 5:20].all() and onehot[1, 7, 5:20].all()
    assert onehot[:, :, 26:].sum() == 0  # beyond the audio: zero columns


def test_bad_audio():
    with pytest.raises(ValueError):
        dominant_chroma(torch.zeros(1, 1, 0), SR, RATE)
    with pytest.raises(ValueError):
        dominant_chroma(torch.full((1, 100), float("nan")), SR, RATE)
