"""Sampling: filters keep what they should, draws follow the distribution, seeds repeat."""

import math

import pytest
import torch

from tunesmith.lm.sampling import apply_cfg, sample, top_k_filter, top_p_filter


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, False, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_sufficient_set():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    shuffled = logits[:, [2, 0, 3, 1]]  # order of entries must not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.7)).tolist() == [[False, True, False, True]]


def test_samples_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(20000, 4)
    draws = sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, probs, atol=0.015)
    assert freq[3] == 0


def test_temperature_sharpens_and_zero_is_argmax():
    logits = torch.tensor([1.0, 0.0]).expand(20000, 2)
    g = torch.Generator().manual_seed(1)
    p1 = (sample(logits, temperature=1.0, generator=g) == 0).float().mean()
    p_half = (sample(logits, temperature=0.5, generator=g) == 0).float().mean()
    assert p1 == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)
    assert p_half == pytest.approx(1 / (1 + math.exp(-2)), abs=0.015)
    assert torch.all(sample(logits, temperature=0.0) == 0)
    with pytest.raises(ValueError):
        sample(logits, temperature=-1.0)


def test_top_k_sampling_never_leaves_the_set_and_seed_repeats():
    logits = torch.randn(64, 4, 100, generator=torch.Generator().manual_seed(2))
    a = sample(logits, top_k=5, generator=torch.Generator().manual_seed(3))
    b = sample(logits, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    top5 = logits.topk(5, -1).indices
    assert (top5 == a[..., None]).any(-1).all()


def test_cfg_formula():
    c, u = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert apply_cfg(c, u, 1.0).tolist() == c.tolist()
    assert apply_cfg(c, u, 0.0).tolist() == u.tolist()
    assert apply_cfg(c, u, 3.0).tolist() == [4.0, -2.0]
