"""RVQ math: nearest codes, losses, usage statistics, dead-code restart, quantizer dropout."""

import math

import torch

from tunesmith.codec.gaussian import gaussian_kl, sample_gaussian, split_gaussian
from tunesmith.codec.rvq import (
    FactorizedVQ,
    ResidualVQ,
    code_usage,
    codebook_losses,
    dropout_num_codebooks,
    nearest_code,
    perplexity,
)


def test_nearest_code_matches_brute_force_cosine():
    torch.manual_seed(0)
    z, codebook = torch.randn(50, 8), torch.randn(16, 8)
    idx = nearest_code(z, codebook)
    for i in range(50):
        sims = [torch.cosine_similarity(z[i], c, dim=0) for c in codebook]
        assert idx[i] == int(torch.stack(sims).argmax())
    # scale invariance: cosine lookup ignores the length of the input
    assert torch.equal(nearest_code(3.0 * z, codebook), idx)


def test_codebook_losses_gradients_go_to_the_right_side():
    z_e = torch.randn(2, 5, 4, requires_grad=True)
    z_q = torch.randn(2, 5, 4, requires_grad=True)
    commit, book = codebook_losses(z_e, z_q)
    assert torch.allclose(commit, book) and commit.shape == (2,)
    commit.sum().backward()
    assert z_q.grad is None and z_e.grad is not None


def test_usage_and_perplexity():
    assert perplexity(code_usage(torch.arange(64), 64)) == pytest_approx(64.0)
    assert perplexity(code_usage(torch.zeros(100, dtype=torch.long), 64)) == pytest_approx(1.0)
    counts = code_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert counts.tolist() == [2, 2, 0, 0] and perplexity(counts) == pytest_approx(2.0)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-4)


def test_dead_codes_are_restarted_on_data():
    torch.manual_seed(0)
    vq = FactorizedVQ(dim=8, codebook_size=16, codebook_dim=4)
    z_e = torch.randn(1, 30, 4)
    only_zero = torch.zeros(1, 30, dtype=torch.long)
    before = vq.codebook.weight.detach().clone()
    for _ in range(2):
        assert vq.restart_dead_codes(z_e, only_zero, after=3) == 0
    restarted = vq.restart_dead_codes(z_e, only_zero, after=3)
    assert restarted == 15  # every code but the used one
    after = vq.codebook.weight.detach()
    assert torch.equal(after[0], before[0])
    rows = z_e.reshape(-1, 4)
    for code in after[1:]:  # each restarted code now sits on an encoder output
        assert torch.isclose(rows, code).all(dim=1).any()


def test_dropout_num_codebooks_range_and_rate():
    torch.manual_seed(0)
    n = dropout_num_codebooks(10_000, 6, 0.5, torch.device("cpu"))
    assert n.min() == 1 and n.max() == 6
    # P(n < 6) = 0.5 * 5/6
    assert abs((n < 6).float().mean().item() - 0.5 * 5 / 6) < 0.02
    assert (dropout_num_codebooks(100, 6, 0.0, torch.device("cpu")) == 6).all()


def test_more_codebooks_reconstruct_the_latent_better_after_fitting():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=8, num_codebooks=4, codebook_size=32, codebook_dim=8, quantizer_dropout=0.0, restart_after=2)
    z = torch.randn(4, 8, 64)
    opt = torch.optim.Adam(rvq.parameters(), lr=1e-2)
    for _ in range(150):
        out, _, stats = rvq(z)
        loss = (out - z).square().mean() + stats["commitment"] * 0.25 + stats["codebook"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    rvq.eval()
    with torch.no_grad():
        errors = [float((rvq.decode(rvq.encode(z, k)) - z).square().mean()) for k in range(1, 5)]
    assert errors[-1] < errors[0] and errors[-1] < 0.5 * float(z.square().mean())


def test_gaussian_bottleneck():
    h = torch.zeros(2, 6, 5)
    mean, std = split_gaussian(h)
    assert mean.shape == (2, 3, 5) and torch.allclose(std, torch.full_like(std, math.log(2) + 1e-4))
    # KL of N(0, 1) against itself is 0; it grows with the mean
    assert abs(float(gaussian_kl(torch.zeros(1, 4, 3), torch.ones(1, 4, 3)))) < 1e-6
    assert float(gaussian_kl(torch.ones(1, 4, 3), torch.ones(1, 4, 3))) == pytest_approx(2.0)
    g = torch.Generator().manual_seed(0)
    s = sample_gaussian(torch.zeros(1, 1, 20000), torch.full((1, 1, 20000), 2.0), g)
    assert abs(float(s.std()) - 2.0) < 0.05
