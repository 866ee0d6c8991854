"""The pure scan functions of the SSM backbones: parallel forms equal the naive recurrences."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tunesmith.lm.backbones.selective_scan import (
    scan_doubling,
    selective_scan_chunked,
    selective_scan_recurrent,
    selective_scan_step,
)
from tunesmith.lm.backbones.ssd import ssd_chunked, ssd_quadratic, ssd_recurrent, ssd_step, segsum
from tunesmith.lm.backbones.ssm_layers import mamba_ssm_kernel

F64 = torch.float64


def ssd_inputs(b=2, T=37, h=4, P=3, g=2, N=5, dtype=F64, seed=0, decay_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, h, P, generator=gen, dtype=dtype)
    log_a = -decay_scale * torch.rand(b, T, h, generator=gen, dtype=dtype)
    B = torch.randn(b, T, g, N, generator=gen, dtype=dtype)
    C = torch.randn(b, T, g, N, generator=gen, dtype=dtype)
    h0 = torch.randn(b, h, P, N, generator=gen, dtype=dtype)
    return x, log_a, B, C, h0


def test_segsum_is_the_decay_matrix():
    log_a = -torch.rand(7, dtype=F64)
    L = segsum(log_a).exp()
    a = log_a.exp()
    for i in range(7):
        for j in range(7):
            expected = torch.prod(a[j + 1 : i + 1]) if i >= j else torch.tensor(0.0, dtype=F64)
            assert torch.allclose(L[i, j], expected), (i, j)


@pytest.mark.parametrize("T,chunk", [(37, 8), (32, 8), (5, 16), (1, 4), (64, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_equals_sequential_reference(T, chunk, with_state):
    x, log_a, B, C, h0 = ssd_inputs(T=T)
    init = h0 if with_state else None
    y_ref, s_ref = ssd_recurrent(x, log_a, B, C, init)
    y, s = ssd_chunked(x, log_a, B, C, chunk, init)
    assert y.shape == x.shape and s.shape == h0.shape
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-10)


def test_ssd_quadratic_equals_sequential_reference():
    x, log_a, B, C, _ = ssd_inputs(T=20, g=1)
    torch.testing.assert_close(ssd_quadratic(x, log_a, B, C), ssd_recurrent(x, log_a, B, C)[0], atol=1e-10, rtol=1e-10)


def test_ssd_chunked_float32_and_strong_decays():
    """Strong decays over long sequences must neither overflow nor lose the recent inputs."""
    x, log_a, B, C, h0 = ssd_inputs(T=300, decay_scale=30.0, dtype=torch.float32)
    y_ref, s_ref = ssd_recurrent(x.double(), log_a.double(), B.double(), C.double(), h0.double())
    y, s = ssd_chunked(x, log_a, B, C, 64, h0)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)


def test_ssd_chunk_size_does_not_change_the_result():
    x, log_a, B, C, h0 = ssd_inputs(T=50)
    y8, s8 = ssd_chunked(x, log_a, B, C, 8, h0)
    y13, s13 = ssd_chunked(x, log_a, B, C, 13, h0)
    torch.testing.assert_close(y8, y13)
    torch.testing.assert_close(s8, s13)


def test_ssd_chunked_gradients_match_finite_differences():
    x, log_a, B, C, h0 = ssd_inputs(b=1, T=9, h=2, P=2, g=1, N=3)
    args = [t.requires_grad_() for t in (x, log_a, B, C, h0)]
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked(*a[:4], 4, a[4]), args)


def test_ssd_step_continues_the_chunked_scan():
    """Prefill with the chunked form, then one recurrent step: equal to the scan over T+1."""
    x, log_a, B, C, h0 = ssd_inputs(T=21)
    y_all, s_all = ssd_chunked(x, log_a, B, C, 8, h0)
    _, s_prefix = ssd_chunked(x[:, :-1], log_a[:, :-1], B[:, :-1], C[:, :-1], 8, h0)
    y_last, s_last = ssd_step(x[:, -1], log_a[:, -1], B[:, -1], C[:, -1], s_prefix)
    torch.testing.assert_close(y_last, y_all[:, -1])
    torch.testing.assert_close(s_last, s_all)


def selective_inputs(b=2, T=37, d=6, N=4, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, T, d, generator=gen, dtype=dtype)
    dt = 0.5 * torch.rand(b, T, d, generator=gen, dtype=dtype)
    A = -4 * torch.rand(d, N, generator=gen, dtype=dtype)
    B = torch.randn(b, T, N, generator=gen, dtype=dtype)
    C = torch.randn(b, T, N, generator=gen, dtype=dtype)
    h0 = torch.randn(b, d, N, generator=gen, dtype=dtype)
    return u, dt, A, B, C, h0


def test_scan_doubling_equals_a_loop():
    gen = torch.Generator().manual_seed(1)
    log_a = -torch.rand(3, 13, 2, generator=gen, dtype=F64)
    inputs = torch.randn(3, 13, 2, generator=gen, dtype=F64)
    h, cum = scan_doubling(log_a, inputs, dim=1)
    state = torch.zeros(3, 2, dtype=F64)
    for t in range(13):
        state = log_a[:, t].exp() * state + inputs[:, t]
        torch.testing.assert_close(h[:, t], state)
    torch.testing.assert_close(cum, log_a.cumsum(1))


@pytest.mark.parametrize("T,chunk", [(37, 8), (16, 16), (3, 8)])
@pytest.mark.parametrize("with_state", [False, True])
def test_selective_scan_chunked_equals_sequential_reference(T, chunk, with_state):
    u, dt, A, B, C, h0 = selective_inputs(T=T)
    init = h0 if with_state else None
    y_ref, s_ref = selective_scan_recurrent(u, dt, A, B, C, init)
    y, s = selective_scan_chunked(u, dt, A, B, C, chunk, init)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-10)


def test_selective_scan_matches_mambapy_peer():
    """Our scan against mambapy's parallel scan (an independent pure-PyTorch implementation)."""
    pscan = pytest.importorskip("mambapy.pscan").pscan
    u, dt, A, B, C, _ = selective_inputs(T=32, dtype=torch.float32)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)
    BX = (dt * u).unsqueeze(-1) * B.unsqueeze(2)
    hs = pscan(deltaA, BX)
    y_peer = (hs @ C.unsqueeze(-1)).squeeze(-1)
    y, _ = selective_scan_chunked(u, dt, A, B, C, 8)
    torch.testing.assert_close(y, y_peer, atol=1e-4, rtol=1e-4)


def test_selective_scan_step_continues_the_chunked_scan():
    u, dt, A, B, C, h0 = selective_inputs(T=12)
    y_all, s_all = selective_scan_chunked(u, dt, A, B, C, 8, h0)
    _, s_prefix = selective_scan_chunked(u[:, :-1], dt[:, :-1], A, B[:, :-1], C[:, :-1], 8, h0)
    y_last, s_last = selective_scan_step(u[:, -1], dt[:, -1], A, B[:, -1], C[:, -1], s_prefix)
    torch.testing.assert_close(y_last, y_all[:, -1])
    torch.testing.assert_close(s_last, s_all)


def test_mamba_ssm_kernels_are_optional():
    if importlib.util.find_spec("mamba_ssm") is None:
        assert mamba_ssm_kernel("ssd") is None and mamba_ssm_kernel("selective_scan") is None
    with pytest.raises(ValueError):
        mamba_ssm_kernel("no-such-kernel")


def _saved_for_backward_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` builds its graph."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("scan", ["ssd", "selective"])
def test_training_memory_grows_linearly_with_length(scan):
    """What training keeps for the backward at 4T is 4x what it keeps at T (the quadratic form would be 16x)."""

    def forward(T: int) -> None:
        if scan == "ssd":
            x, log_a, B, C, _ = ssd_inputs(b=1, T=T, h=4, P=8, g=1, N=8, dtype=torch.float32)
            args = [t.requires_grad_() for t in (x, log_a, B, C)]
            ssd_chunked(*args, chunk_size=16)
        else:
            u, dt, A, B, C, _ = selective_inputs(b=1, T=T, d=8, N=4, dtype=torch.float32)
            args = [t.requires_grad_() for t in (u, dt, A, B, C)]
            selective_scan_chunked(*args, chunk_size=16)

    short, long = _saved_for_backward_bytes(lambda: forward(256)), _saved_for_backward_bytes(lambda: forward(1024))
    assert short > 0
    assert 3.5 < long / short < 4.5, (short, long)
    quadratic = _saved_for_backward_bytes(
        lambda: ssd_quadratic(*[t.requires_grad_() for t in ssd_inputs(b=1, T=256, h=4, P=8, g=1, N=8, dtype=torch.float32)[:4]])
    )
    if scan == "ssd":  # the check itself can tell: the unchunked quadratic form keeps far more
        assert quadratic > 2 * short
