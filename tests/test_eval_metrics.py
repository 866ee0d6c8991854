"""Model-free metrics behave as their definitions say (issue 8 acceptance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunesmith.eval import metrics as M
from tunesmith.eval import probes as P
from tunesmith.music import parse_key_name

SR = 24000


# -- FAD ---------------------------------------------------------------------


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    # For commuting (here diagonal) covariances the trace term is sum (sqrt(v1) - sqrt(v2))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = M.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_closed_form_for_rotated_gaussians():
    # Same spectrum, rotated: W2^2 = Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2), checked in 2-D
    # against the formula for 2x2 matrices: Tr(sqrt(M)) = sqrt(Tr(M) + 2 sqrt(det(M))).
    s1 = np.array([[2.0, 0.3], [0.3, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 0.5]])
    root = M._psd_sqrt(s1)
    m = root @ s2 @ root
    trace_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = 1.0**2 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    got = M.frechet_distance(np.array([1.0, 0.0]), s1, np.zeros(2), s2)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fad_on_samples_converges_to_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20000, 4))
    b = rng.normal(0.5, 2.0, size=(20000, 4))
    expected = 4 * 0.5**2 + 4 * (1.0 - 2.0) ** 2  # 5.0
    assert M.frechet_audio_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fad_from_samples_equals_fad_from_statistics_for_small_sets():
    # Fewer samples than dimensions takes the nuclear-norm route; it must agree with the
    # closed form on the fitted Gaussians.
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 96)), rng.normal(0.2, 1.3, size=(70, 96))
    direct = M.frechet_distance(*M.gaussian_statistics(a), *M.gaussian_statistics(b))
    assert M.frechet_audio_distance(a, b) == pytest.approx(direct, rel=1e-6)


def test_fad_of_a_set_with_itself_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(2)
    clips = [P.synthesize(P.tune_notes(M.Key(int(k), "major"), 110, bars=3, seed=i), SR, 6.0, seed=i)
             for i, k in enumerate(rng.integers(0, 12, 6))]
    clean = np.concatenate([M.mel_statistics_embedding(c, SR) for c in clips])
    assert M.frechet_audio_distance(clean, clean) == pytest.approx(0.0, abs=1e-6)
    fads = []
    for snr_db in (30, 20, 10, 0):
        noisy = []
        for i, c in enumerate(clips):
            noise = np.random.default_rng(100 + i).normal(size=c.shape).astype(np.float32)
            scale = np.sqrt(np.mean(c**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
            noisy.append(M.mel_statistics_embedding(c + scale * noise, SR))
        fads.append(M.frechet_audio_distance(clean, np.concatenate(noisy)))
    assert all(x < y for x, y in zip(fads, fads[1:])), fads
    assert fads[0] > 0


def test_fad_bootstrap_interval_contains_the_truth():
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, size=(400, 3))
    b = rng.normal(1.0, 1.0, size=(4000, 3))
    est = M.fad_with_uncertainty(a, b, rounds=100, seed=0)
    assert est.ci_low <= est.fad <= est.ci_high
    assert est.ci_low < 3.0 < est.ci_high  # the true value is 3
    assert est.to_dict()["n_a"] == 400


def test_fad_infinity_removes_the_small_sample_bias():
    # Same distribution in 32-D: the true FAD is 0, but 300 samples give a clearly positive
    # FAD (the O(1/N) bias); the extrapolation to N = infinity removes most of it.
    rng = np.random.default_rng(4)
    gen = rng.normal(size=(300, 32))
    ref = rng.normal(size=(6000, 32))
    fad = M.frechet_audio_distance(gen, ref)
    fad_inf = M.fad_infinity(gen, ref, seed=0)
    assert fad > 1.0
    assert abs(fad_inf) < fad / 4, (fad, fad_inf)


def test_fad_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        M.frechet_audio_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_audio_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.frechet_audio_distance(np.full((4, 2), np.nan), np.zeros((4, 2)))


# -- KL, CLAP score, nearest neighbours --------------------------------------


def test_kl_divergence_definition():
    p = np.array([0.5, 0.5])
    q = np.array([0.9, 0.1])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert M.kl_divergence(p, q, eps=0) == pytest.approx(expected)
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert M.paired_kl(np.stack([p, q]), np.stack([p, q])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        M.kl_divergence(np.array([-0.1, 1.1]), q)


def test_clap_score_and_nearest_neighbours():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(M.clap_score(a, t), [1.0, 0.0], atol=1e-12)
    best, index = M.nearest_neighbours(np.array([[0.0, 1.0], [1.0, 0.1]]), np.array([[1.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_array_equal(index, [1, 0])
    assert best[0] == pytest.approx(1.0)


def test_chroma_fingerprint_flags_a_copy_but_not_another_tune_in_the_same_key():
    key = M.Key(0, "major")
    original = P.synthesize(P.tune_notes(key, 110, bars=6, seed=0), SR, 12.0)
    other = P.synthesize(P.tune_notes(key, 110, bars=6, seed=1), SR, 12.0)
    noisy_copy = original + 0.02 * np.random.default_rng(0).normal(size=original.shape).astype(np.float32)
    train = M.chroma_fingerprints(original, SR)
    copy_sim, _ = M.nearest_neighbours(M.chroma_fingerprints(noisy_copy, SR), train)
    other_sim, _ = M.nearest_neighbours(M.chroma_fingerprints(other, SR), train)
    assert copy_sim.max() > 0.95
    assert other_sim.max() < 0.8


# -- melody, tempo, key ------------------------------------------------------


def test_chroma_cosine_is_one_for_identical_audio_and_lower_for_another_melody():
    a = P.synthesize(P.tune_notes(M.Key(2, "minor"), 100, bars=4, seed=0), SR, 8.0)
    b = P.synthesize(P.tune_notes(M.Key(7, "major"), 100, bars=4, seed=5), SR, 8.0)
    assert M.chroma_cosine_similarity(a, a, SR) == pytest.approx(1.0, abs=1e-6)
    assert M.chroma_cosine_similarity(torch.from_numpy(a)[None], a, SR) == pytest.approx(1.0, abs=1e-6)
    assert M.chroma_cosine_similarity(a, b, SR) < 0.8


@pytest.mark.parametrize("bpm", [66, 84, 97, 120, 143])
def test_tempo_of_click_tracks_within_two_percent(bpm):
    estimate = M.estimate_tempo(P.click_track(bpm, SR, 10.0), SR)
    assert M.tempo_relative_error(estimate, bpm) < 0.02, estimate


@pytest.mark.parametrize("bpm", [160, 176])
def test_fast_click_tracks_within_two_percent_up_to_the_metrical_level(bpm):
    # Accented fast clicks are heard in half time as often as not: within 2% of the tempo
    # or of half/double it (Gouyon's Acc2).
    estimate = M.estimate_tempo(P.click_track(bpm, SR, 10.0), SR)
    assert M.tempo_match(estimate, bpm, 0.02, octave=True), estimate


@pytest.mark.parametrize("bpm,program", [(92, 0), (113, 48), (138, 24)])
def test_tempo_of_rendered_tunes_within_two_percent(bpm, program):
    if P.find_soundfont() is None:
        pytest.skip("no General MIDI SoundFont installed")
    notes = P.tune_notes(M.Key(5, "major"), bpm, bars=6, seed=bpm)
    wav = P.render_with_soundfont(notes, SR, 6 * 4 * 60 / bpm, program=program)
    estimate = M.estimate_tempo(wav, SR)
    assert M.tempo_relative_error(estimate, bpm) < 0.02, estimate


def test_tempo_match_accuracy1_and_accuracy2():
    assert M.tempo_match(121, 120)
    assert not M.tempo_match(60, 120)
    assert M.tempo_match(60, 120, octave=True)
    assert not M.tempo_match(90, 120, octave=True)
    with pytest.raises(ValueError, match="silent"):
        M.estimate_tempo(np.zeros(SR * 2), SR)


@pytest.mark.parametrize("name", ["C major", "Eb major", "A major", "F# minor", "Bb minor", "G minor"])
def test_key_of_scales_and_cadences(name):
    key = parse_key_name(name)
    for notes in (P.scale_notes(key), P.cadence_notes(key)):
        end = max(n[0] + n[1] for n in notes) + 0.2
        wav = P.synthesize(notes, SR, end)
        assert M.estimate_key(wav, SR) == key
        assert M.estimate_key(wav, SR, profile="krumhansl") == key


def test_key_of_soundfont_cadence():
    if P.find_soundfont() is None:
        pytest.skip("no General MIDI SoundFont installed")
    key = M.Key(4, "minor")
    wav = P.render_with_soundfont(P.cadence_notes(key), SR, 6.0, program=19)  # church organ
    assert M.estimate_key(wav, SR) == key


def test_parse_key_and_relations():
    assert parse_key_name("B-flat major") == M.Key(10, "major")
    assert parse_key_name("f# minor") == M.Key(6, "minor")
    assert parse_key_name("E♭", mode="minor") == M.Key(3, "minor")
    assert parse_key_name("Am") == M.Key(9, "minor")
    with pytest.raises(ValueError, match="cannot read key"):
        parse_key_name("H major")
    c, a_minor = M.Key(0, "major"), M.Key(9, "minor")
    assert M.key_relation(a_minor, c) == "relative"
    assert M.mirex_key_score(M.Key(7, "major"), c) == 0.5
    assert M.mirex_key_score(M.Key(0, "minor"), c) == 0.2
    assert M.mirex_key_score(M.Key(1, "major"), c) == 0.0


def test_real_time_factor_and_summary():
    assert M.real_time_factor(5.0, 10.0) == 0.5
    with pytest.raises(ValueError):
        M.real_time_factor(1.0, 0.0)
    s = M.summarize([1.0, 2.0, 3.0, None])
    assert s["mean"] == 2.0 and s["count"] == 3


def test_key_of_bright_minor_tunes_with_overtones():
    # Eight harmonics put a major third above every note; the default (Temperley) profile
    # must still read these minor-key tunes as minor.
    for i, tonic in enumerate((2, 7, 11)):
        key = M.Key(tonic, "minor")
        notes = [(s, d, p + 12, v) for s, d, p, v in P.tune_notes(key, 110, bars=4, seed=i)]
        wav = P.synthesize(notes, SR, 8.5, partials=8, seed=i)
        assert M.estimate_key(wav, SR) == key


def test_wilson_interval():
    from tunesmith.eval.metrics import wilson_interval

    low, high = wilson_interval(12, 24)
    assert abs(low - 0.3142) < 1e-3 and abs(high - 0.6858) < 1e-3  # the textbook value for 12 of 24
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert 0 < wilson_interval(0, 10)[1] < 0.35  # never a zero-width interval at the edges
    narrow = wilson_interval(120, 240)
    assert narrow[1] - narrow[0] < (high - low) / 2.5  # ten times the draws: about 1/sqrt(10) of the width
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)
