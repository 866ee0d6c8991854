"""Metric functions against closed forms and hand-computed values (key parsing is tested elsewhere)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunesmith.eval import metrics as M


def test_gaussian_statistics_by_hand():
    mu, cov = M.gaussian_statistics(np.array([[1.0, 2.0], [3.0, 6.0], [2.0, 1.0]]))
    assert mu.tolist() == pytest.approx([2.0, 3.0])
    # unbiased: sum of outer products of deviations / (N - 1)
    dev = np.array([[-1.0, -1.0], [1.0, 3.0], [0.0, -2.0]])
    np.testing.assert_allclose(cov, dev.T @ dev / 2, rtol=1e-12)
    np.testing.assert_allclose(cov, [[1.0, 2.0], [2.0, 7.0]], rtol=1e-12)


def test_frechet_distance_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert M.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]])) == pytest.approx(9.0 + 1.5**2)
    assert M.frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_non_commuting_2d_by_hand():
    # Tr((S1 S2)^(1/2)) = sqrt(Tr(S1 S2) + 2 sqrt(det S1 det S2)) for 2x2 covariances.
    s1 = np.array([[2.0, 1.0], [1.0, 2.0]])  # det 3
    s2 = np.array([[1.0, 0.0], [0.0, 4.0]])  # det 4; S1 S2 = [[2, 4], [1, 8]], trace 10
    trace_cross = math.sqrt(10 + 2 * math.sqrt(12))
    expected = (1.0**2 + 2.0**2) + 4.0 + 5.0 - 2 * trace_cross
    got = M.frechet_distance(np.array([1.0, 2.0]), s1, np.array([0.0, 0.0]), s2)
    assert got == pytest.approx(expected, rel=1e-10)
    # symmetric in its two arguments
    assert M.frechet_distance(np.zeros(2), s2, np.array([1.0, 2.0]), s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_singular_covariance():
    # rank-1 covariances along orthogonal axes: Tr cross term is 0
    s1, s2 = np.diag([4.0, 0.0]), np.diag([0.0, 9.0])
    assert M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(13.0, rel=1e-10)


def _fad_by_hand_1d(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2


@pytest.mark.parametrize("n_a, n_b", [(2, 2), (3, 4), (10, 12)])
def test_fad_on_one_dimensional_sets_by_hand(n_a, n_b):
    """Both routes (the nuclear-norm one for small sets, the covariance one for large) against the
    1-D closed form on the fitted (unbiased) Gaussians."""
    rng = np.random.default_rng(n_a)
    a, b = rng.normal(0, 1, n_a), rng.normal(1, 3, n_b)
    got = M.frechet_audio_distance(a[:, None], b[:, None])
    assert got == pytest.approx(_fad_by_hand_1d(a, b), rel=1e-9)
    assert M.frechet_audio_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])) == pytest.approx(1.0)


def test_fad_both_routes_agree_in_several_dimensions():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 3)), rng.normal(0.5, 1.0, size=(25, 3))
    by_stats = M.frechet_distance(*M.gaussian_statistics(a), *M.gaussian_statistics(b))
    assert M.frechet_audio_distance(a, b) == pytest.approx(by_stats, rel=1e-9)  # 750 > 36: covariance route
    a5, b5 = a[:5], b[:4]  # 20 <= 36: nuclear-norm route
    by_stats = M.frechet_distance(*M.gaussian_statistics(a5), *M.gaussian_statistics(b5))
    assert M.frechet_audio_distance(a5, b5) == pytest.approx(by_stats, rel=1e-9)


def test_fad_bootstrap_is_the_percentile_interval_of_resampled_fads():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 2)), rng.normal(0.3, 1.2, size=(10, 2))
    low, high = M.fad_bootstrap(a, b, rounds=50, level=0.8, seed=7)
    r = np.random.default_rng(7)
    values = []
    for _ in range(50):
        ia, ib = r.integers(0, 12, 12), r.integers(0, 10, 10)
        values.append(M.frechet_audio_distance(a[ia], b[ib]))
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [10, 90])), rel=1e-12)
    assert low < high


def test_fad_infinity_recovers_an_exact_a_plus_b_over_n():
    """Draw subsets exactly as the function does, then check the intercept of the least-squares
    line through (1/N, FAD_N)."""
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(40, 2)), rng.normal(0.5, 1.0, size=(200, 2))
    got = M.fad_infinity(gen, ref, points=4, min_size=8, draws=2, seed=3)
    r = np.random.default_rng(3)
    sizes = np.unique(np.linspace(8, 40, 4).astype(int))
    mu_r, s_r = M.gaussian_statistics(ref)
    xs, ys = [], []
    for size in sizes:
        for _ in range(2 if size < 40 else 1):
            sub = gen[r.choice(40, size, replace=False)]
            xs.append(1.0 / size)
            ys.append(M.frechet_distance(*M.gaussian_statistics(sub), mu_r, s_r))
    xs, ys = np.array(xs), np.array(ys)
    slope = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
    assert got == pytest.approx(ys.mean() - slope * xs.mean(), rel=1e-9)


def test_kl_divergence_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    assert M.kl_divergence(p, q, eps=0) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-12)
    assert M.kl_divergence(q, p, eps=0) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    # unnormalised inputs are renormalised
    assert M.kl_divergence(2 * p, 4 * q, eps=0) == pytest.approx(M.kl_divergence(p, q, eps=0), rel=1e-12)
    # a zero in q is a large but finite penalty set by eps
    big = M.kl_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0]), eps=1e-8)
    assert math.isfinite(big) and big == pytest.approx(math.log(1 / 1e-8), rel=0.01)
    refs, gens = np.array([p, q, [0.1, 0.9]]), np.array([q, p, [0.1, 0.9]])
    expected = (M.kl_divergence(p, q) + M.kl_divergence(q, p) + 0.0) / 3
    assert M.paired_kl(refs, gens) == pytest.approx(expected, rel=1e-12)


def test_clap_score_and_nearest_neighbours_by_hand():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    t = np.array([[4.0, 3.0], [-1.0, 1.0], [0.0, 5.0]])
    np.testing.assert_allclose(M.clap_score(a, t), [24 / 25, -1 / math.sqrt(2), -1.0], rtol=1e-12)
    refs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]])
    queries = np.array([[0.9, 1.0], [-3.0, 0.0], [0.0, 2.0]])
    for chunk in (1, 2, 4096):  # the index must count from the start of every chunk
        best, index = M.nearest_neighbours(queries, refs, chunk=chunk)
        assert index.tolist() == [2, 3, 1]
        np.testing.assert_allclose(best, [(0.9 + 1.0) / (math.hypot(0.9, 1.0) * math.sqrt(2)), 1 / math.hypot(1, 0.2), 1.0], rtol=1e-12)


def test_tempo_error_and_accuracy_by_hand():
    assert M.tempo_relative_error(126.0, 120.0) == pytest.approx(0.05)
    assert M.tempo_relative_error(114.0, 120.0) == pytest.approx(0.05)
    assert M.tempo_match(124.0, 120.0) and not M.tempo_match(125.0, 120.0)  # 3.3 % vs 4.2 % at 4 %
    assert M.tempo_match(125.0, 120.0, 0.05)
    assert not M.tempo_match(240.0, 120.0) and M.tempo_match(240.0, 120.0, octave=True)
    for est in (60.0, 360.0, 40.0, 247.0):  # 1/2, 3, 1/3, 2 (+2.9 %) times the target
        assert M.tempo_match(est, 120.0, octave=True), est
    for est in (180.0, 80.0, 90.0):  # 3/2, 2/3, 3/4 are other metrical levels: not accepted
        assert not M.tempo_match(est, 120.0, octave=True), est


def test_key_relations_and_mirex_scores():
    C, Cm, G, F, Am, Em, Gm, D = (M.Key(0, "major"), M.Key(0, "minor"), M.Key(7, "major"), M.Key(5, "major"),
                                  M.Key(9, "minor"), M.Key(4, "minor"), M.Key(7, "minor"), M.Key(2, "major"))
    cases = [
        (C, C, "same", 1.0), (G, C, "fifth", 0.5), (F, C, "fifth", 0.5), (Gm, Cm, "fifth", 0.5),
        (Am, C, "relative", 0.3), (C, Am, "relative", 0.3), (Cm, C, "parallel", 0.2), (C, Cm, "parallel", 0.2),
        (D, C, "other", 0.0), (Em, C, "other", 0.0), (G, Cm, "other", 0.0), (Gm, C, "other", 0.0),
    ]
    for est, target, relation, score in cases:
        assert M.key_relation(est, target) == relation, (est, target)
        assert M.mirex_key_score(est, target) == score


def test_key_profile_scores_are_pearson_correlations_with_rotated_profiles():
    major, minor = (np.array(p) for p in M.KEY_PROFILES["temperley"])
    v = np.roll(minor, 9) + 0.1 * np.arange(12) / 12  # A minor-ish, slightly tilted
    scores = M.key_profile_scores(v)
    assert np.unravel_index(scores.argmax(), scores.shape) == (1, 9)
    for row, prof in enumerate((major, minor)):
        for tonic in (0, 3, 9):
            r = np.roll(prof, tonic)
            expected = ((v - v.mean()) * (r - r.mean())).sum() / math.sqrt(((v - v.mean()) ** 2).sum() * ((r - r.mean()) ** 2).sum())
            assert scores[row, tonic] == pytest.approx(expected, rel=1e-12)
    kk = M.key_profile_scores(np.roll(np.array(M.KEY_PROFILES["krumhansl"][0]), 2), "krumhansl")
    assert kk[0, 2] == pytest.approx(1.0) and np.unravel_index(kk.argmax(), kk.shape) == (0, 2)


def test_wilson_interval_and_rates_by_hand():
    low, high = M.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = M.wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(1.96**2 / 20 / (1 + 1.96**2 / 20), rel=1e-9)
    p, n, z = 0.8, 25, 1.0
    lo, hi = M.wilson_interval(20, 25, z=1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), rel=1e-12)
    assert M.real_time_factor(3.0, 12.0) == 0.25
    s = M.summarize([1.0, 2.0, 6.0, None])
    assert s == {"mean": 3.0, "median": 2.0, "min": 1.0, "max": 6.0, "count": 3}
