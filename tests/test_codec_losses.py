"""Spectral distances, SI-SDR and GAN terms behave as their definitions say."""

import numpy as np
import pytest
import torch

from tunesmith.codec.discriminators import Discriminator, DiscriminatorConfig
from tunesmith.codec.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_distance,
    si_sdr,
    stft_distance,
)
from tunesmith.codec.synthetic import render_clip


@pytest.fixture
def wav():
    return render_clip(np.random.default_rng(0), 24000, 24000)[None]


def test_distances_are_zero_on_identity_and_grow_with_noise(wav):
    assert float(mel_distance(wav, wav, 24000)) == 0.0
    assert float(stft_distance(wav, wav)) == 0.0
    torch.manual_seed(0)
    small = wav + 0.003 * torch.randn_like(wav)
    large = wav + 0.03 * torch.randn_like(wav)
    assert 0 < float(mel_distance(small, wav, 24000)) < float(mel_distance(large, wav, 24000))
    assert 0 < float(stft_distance(small, wav)) < float(stft_distance(large, wav))


def test_si_sdr(wav):
    assert float(si_sdr(wav, wav)) > 80
    assert float(si_sdr(0.3 * wav, wav)) > 80  # scale-invariant
    torch.manual_seed(0)
    noise = torch.randn_like(wav)
    noisy = wav + noise * wav.norm() / noise.norm()  # equal energies: 0 dB
    assert float(si_sdr(noisy, wav)) == pytest.approx(0.0, abs=0.3)


def test_hinge_losses():
    real, fake = [torch.full((4,), 2.0)], [torch.full((4,), -2.0)]
    assert float(discriminator_loss(real, fake)) == 0.0  # both beyond the margin
    assert float(discriminator_loss(fake, real)) == pytest.approx(6.0)
    assert float(generator_adversarial_loss([torch.full((4,), 1.5)])) == 0.0
    assert float(generator_adversarial_loss([torch.zeros(4)])) == 1.0


def test_feature_matching_is_relative_l1():
    real = [[torch.full((3,), 2.0), torch.full((3,), 10.0)]]
    fake = [[torch.full((3,), 1.0), torch.full((3,), 10.0)]]
    assert float(feature_matching_loss(real, fake)) == pytest.approx(0.25)  # (1/2 + 0) / 2 layers


def test_discriminator_outputs(wav):
    disc = Discriminator(DiscriminatorConfig(stft_resolutions=((512, 128),), stft_channels=4, periods=(2, 3),
                                             period_channels=(4, 8)))
    outs = disc(wav.repeat(2, 1, 1))
    assert len(outs) == 3
    for logits, features in outs:
        assert logits.shape[0] == 2 and len(features) >= 3 and torch.isfinite(logits).all()


def test_chroma_similarity_sees_pitch(wav):
    import math

    from tunesmith.codec.evaluate import chroma_similarity

    t = torch.arange(48000) / 24000
    a = torch.sin(2 * math.pi * 440 * t)[None, None]
    b = torch.sin(2 * math.pi * 440 * 2 ** (3 / 12) * t)[None, None]  # a minor third up
    assert chroma_similarity(a, a, 24000) == pytest.approx(1.0, abs=1e-5)
    assert chroma_similarity(b, a, 24000) < 0.3
    assert chroma_similarity(0.5 * a, a, 24000) == pytest.approx(1.0, abs=1e-5)  # level does not matter


def test_phase_derivative_loss_ignores_absolute_phase_but_sees_frequency():
    import math

    from tunesmith.codec.losses import phase_derivative_loss
    from tunesmith.spectral import stft_same

    t = torch.arange(24000) / 24000
    a = stft_same(torch.sin(2 * math.pi * 440 * t)[None], 960, 240)
    shifted = a * torch.polar(torch.ones(()), torch.tensor(1.3))  # same signal, rotated phase
    frequency, delay = phase_derivative_loss(shifted, a)
    assert float(frequency) < 1e-3 and float(delay) < 1e-3
    b = stft_same(torch.sin(2 * math.pi * 452 * t)[None], 960, 240)  # half a bin higher
    frequency, _ = phase_derivative_loss(b, a)
    assert float(frequency) > 0.1


def test_harmonic_distance_weighs_a_wrong_note_above_a_volume_change():
    """A semitone off must cost more, relative to halving the loudness, than the mel loss says."""
    from tunesmith.codec.losses import harmonic_distance

    sr = 24000
    t = torch.arange(sr) / sr

    def tone(f: float) -> torch.Tensor:
        return sum(torch.sin(2 * torch.pi * f * h * t) / h for h in range(1, 6))[None, None]

    a, sharp = tone(220.0), tone(220.0 * 2 ** (1 / 12))
    assert harmonic_distance(a, a, sr) == 0
    harmonic_ratio = harmonic_distance(sharp, a, sr) / harmonic_distance(0.5 * a, a, sr)
    mel_ratio = mel_distance(sharp, a, sr) / mel_distance(0.5 * a, a, sr)
    assert harmonic_ratio > 1.8 and harmonic_ratio > 1.2 * mel_ratio
