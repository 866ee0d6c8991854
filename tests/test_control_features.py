"""DITTO's differentiable features, each against a value worked out by hand on synthetic audio."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.control.features import (
    intensity_loss,
    intensity_target,
    fold_loop,
    loop_seam_loss,
    loudness_curve,
    masked_reconstruction_loss,
    melody_loss,
    parse_level,
    pitch_class_accuracy,
    pitch_class_distribution,
    loop_seam_ratio,
    seam_jump_ratio,
    self_similarity,
    structure_correlation,
    structure_loss,
    structure_target,
)

SR = 16000


def tone(hz: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return amplitude * torch.sin(2 * math.pi * hz * t)


def midi_hz(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def test_loudness_of_a_known_ramp():
    """Four 0.5 s steps of a 1 kHz sine at amplitudes 0.1, 0.2, 0.4, 0.8: each frame reads
    20 log10(A / sqrt 2) exactly (frames hold whole numbers of periods)."""
    amplitudes = (0.1, 0.2, 0.4, 0.8)
    wav = torch.cat([tone(1000, 0.5, a) for a in amplitudes])
    curve = loudness_curve(wav, SR, frame_rate=20)[0]
    assert curve.shape == (40,)
    expected = torch.tensor([20 * math.log10(a / math.sqrt(2)) for a in amplitudes]).repeat_interleave(10)
    torch.testing.assert_close(curve, expected.float(), atol=1e-3, rtol=0)
    smooth = loudness_curve(wav, SR, frame_rate=20, smooth_seconds=0.5)[0]
    # a 10-frame moving average: frame i averages frames i-4 .. i+5
    assert abs(float(smooth[4]) - float(expected[4])) < 1e-3  # all inside the first step
    assert abs(float(smooth[5]) - float(expected[1:11].mean())) < 1e-3  # one frame of the next step
    assert float(expected[9]) < float(smooth[10]) < float(expected[10])  # across the edge it eases
    x = wav.clone().requires_grad_(True)
    intensity_loss(loudness_curve(x, SR), torch.full((40,), -10.0)).backward()
    assert torch.isfinite(x.grad).all() and (x.grad * wav).sum() < 0  # louder lowers the loss


def test_intensity_targets_as_written():
    target = intensity_target("0:-30, 5:-10, 10:soft", num_frames=100, frame_rate=10)
    assert float(target[0]) == pytest.approx(-30 + 20 * 0.05 / 5)  # the first frame centre is 0.05 s
    assert float(target[49]) == pytest.approx(-30 + 20 * 4.95 / 5)
    assert float(target[74]) == pytest.approx(-10 - 20 * 2.45 / 5)
    assert float(intensity_target("3:loud", 4, 1)[0]) == parse_level("loud") == -12.0
    for bad in ("0:-30,5", "x:-3", "0:+20", "0:shouting", ""):
        with pytest.raises(ValueError):
            intensity_target(bad, 10, 10)


def test_pitch_classes_of_a_known_melody():
    """C4, E4, G4, A4, half a second each: the distribution's peak follows the notes."""
    notes = (60, 64, 67, 69)
    wav = torch.cat([tone(midi_hz(n), 0.5) for n in notes])
    dist = pitch_class_distribution(wav, SR, frame_rate=20)
    assert dist.shape == (1, 12, 40)
    torch.testing.assert_close(dist.sum(dim=1), torch.ones(1, 40))
    target = torch.zeros(1, 12, 40)
    for i, n in enumerate(notes):
        target[0, n % 12, i * 10 : (i + 1) * 10] = 1
    inner = torch.zeros(1, 12, 40)  # away from the note changes, where the STFT window straddles two notes
    for i in range(4):
        inner[..., i * 10 + 2 : i * 10 + 8] = target[..., i * 10 + 2 : i * 10 + 8]
    assert pitch_class_accuracy(dist, inner) == 1.0
    wrong = torch.roll(target, 1, dims=1)
    assert melody_loss(dist, target) < 0.5 < melody_loss(dist, wrong)
    x = wav.clone().requires_grad_(True)
    melody_loss(pitch_class_distribution(x, SR), wrong).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no notes"):
        melody_loss(dist, torch.zeros(1, 12, 40))


def test_structure_of_an_aba_sequence():
    """A chord, another chord, the first again: the chroma self-similarity has the ABA blocks."""
    def chord(notes):
        return sum(tone(midi_hz(n), 1.0, 0.2) for n in notes)

    wav = torch.cat([chord((60, 64, 67)), chord((62, 65, 69)), chord((60, 64, 67))])
    features = pitch_class_distribution(wav, SR, frame_rate=10)
    ssm = self_similarity(features)[0]
    target = structure_target("ABA", 30, 10)
    expected = torch.zeros(30, 30)
    for a in (range(0, 10), range(20, 30)):
        for b in (range(0, 10), range(20, 30)):
            expected[a.start : a.stop, b.start : b.stop] = 1
    expected[10:20, 10:20] = 1
    assert torch.equal(target, expected)
    assert structure_correlation(ssm, target) > 0.9
    assert structure_loss(self_similarity(features), target) < structure_loss(self_similarity(features),
                                                                              structure_target("AB", 30, 10))
    timed = structure_target("A:1,B:2", 30, 10)
    assert timed[0, 9] == 1 and timed[0, 10] == 0 and timed[10, 29] == 1
    for bad in ("A", "A:0,B:1", "A-B", "1,2"):
        with pytest.raises(ValueError):
            structure_target(bad, 30, 10)


def test_loop_seam_and_masked_reconstruction():
    ramp = torch.linspace(0, 1, 20)[None, None]  # (1, 1, 20): the end is far from the start
    periodic = torch.sin(torch.arange(20) * 2 * math.pi / 5)[None, None]  # period 5 frames: end flows into start
    assert loop_seam_loss(periodic, overlap=5) < 1e-10 < loop_seam_loss(ramp, overlap=5)
    x, ref = torch.zeros(1, 4, 10), torch.ones(1, 4, 10)
    keep = torch.zeros(1, 1, 10)
    keep[..., :3] = 1
    assert float(masked_reconstruction_loss(x, ref, keep)) == 1.0
    assert float(masked_reconstruction_loss(ref, ref, keep)) == 0.0
    with pytest.raises(ValueError, match="keeps nothing"):
        masked_reconstruction_loss(x, ref, torch.zeros(1, 1, 10))


def test_folded_loop_flows_from_its_end_into_its_start():
    """The fold's seam is the rendering's own step (y[0] = x[L]); past the fade the head is
    untouched; identical head and tail give linear fades (the loop is x[:L] exactly); unrelated
    ones equal power (the level holds)."""
    rate, length, overlap = 1000, 700, 200
    t = torch.arange(length + overlap, dtype=torch.float64) / rate
    x = torch.sin(2 * math.pi * 13.7 * t)[None, None]  # 13.7 Hz: x[:L] alone would jump at its seam
    y = fold_loop(x, overlap)
    assert y.shape[-1] == length
    assert float(y[..., 0]) == pytest.approx(float(x[..., length]), abs=1e-12)  # continues x[L - 1] -> x[L]
    assert torch.equal(y[..., overlap:], x[..., overlap:length])
    periodic = torch.sin(2 * math.pi * 10 * t)[None, None]  # period 100 samples: head == tail
    assert torch.allclose(fold_loop(periodic, overlap), periodic[..., :length], atol=1e-9)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 200_000 + 100_000, generator=g, dtype=torch.float64)
    folded = fold_loop(noise, 100_000)[..., :100_000]  # the faded part of two unrelated signals
    assert float(folded.pow(2).mean()) == pytest.approx(1.0, abs=0.02)
    linear = torch.linspace(0, 1, 100_000, dtype=torch.float64)  # what plain linear fades would give: -1.8 dB
    assert float((linear * noise[..., :100_000] + (1 - linear) * noise[..., 200_000:]).pow(2).mean()) < 0.7
    with pytest.raises(ValueError, match="needs at least"):
        fold_loop(x[..., :300], 200)


def test_seam_ratios_compare_a_seam_with_the_clips_own_moments():
    """Stationary noise looped: the wrap is like any other moment (ratio near 1); a clip that
    drops by 20 dB half-way: the wrap jumps back up, and reads like the drop itself."""
    rate = 8000
    noise = 0.1 * torch.randn(1, 4 * rate, generator=torch.Generator().manual_seed(0))
    assert 0.6 < loop_seam_ratio(noise, rate) < 1.5
    drop = noise.clone()
    drop[:, 2 * rate :] *= 0.1
    wrap = loop_seam_ratio(drop, rate)
    assert wrap > 3 and seam_jump_ratio(drop, rate, [2.0]) == pytest.approx(wrap, rel=0.25)
    assert seam_jump_ratio(drop, rate, [1.0]) < 1.5
    with pytest.raises(ValueError, match="too short"):
        seam_jump_ratio(noise[:, :400], rate, [0.02])
