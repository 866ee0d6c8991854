"""Residual VQ numerics: straight-through gradients, loss values and residual stages by hand."""

from __future__ import annotations

import math

import pytest
import torch

import tunesmith.codec.rvq as rvq_module
from tunesmith.codec.rvq import (
    FactorizedVQ,
    ResidualVQ,
    code_usage,
    codebook_losses,
    dropout_num_codebooks,
    nearest_code,
    perplexity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rvq(dim=3, k=2, size=5, cdim=2, seed=0):
    torch.manual_seed(seed)
    m = ResidualVQ(dim=dim, num_codebooks=k, codebook_size=size, codebook_dim=cdim, quantizer_dropout=0.0, restart_after=0)
    return m.double()


def test_straight_through_gradient_reaches_the_input_through_every_stage():
    """With z_q = z_e + sg(code - z_e) the quantizer is the identity for gradients, so the output is
    affine in z (codes held fixed):  out = P1 E1 z + P2 E2 (z - P1 E1 z) + const  (E = in_proj, P = out_proj).
    d loss / d z must be exactly G^T of that Jacobian."""
    m = _rvq()
    z = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out, _, _ = m(z)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    e1, p1 = m.stages[0].in_proj.weight, m.stages[0].out_proj.weight
    e2, p2 = m.stages[1].in_proj.weight, m.stages[1].out_proj.weight
    eye = torch.eye(3, dtype=torch.float64)
    jac = (p1 @ e1 + p2 @ e2 @ (eye - p1 @ e1)).detach()  # d out_frame / d z_frame
    expected = torch.einsum("ij,bif->bjf", jac, g)
    assert z.grad is not None and torch.allclose(z.grad, expected, rtol=1e-10, atol=1e-12)


def test_straight_through_single_stage_gradient_equals_the_output_gradient():
    """One stage with identity projections: d loss / d z = d loss / d z_q (the STE definition)."""
    m = _rvq(dim=2, k=1, size=4, cdim=2)
    with torch.no_grad():
        st = m.stages[0]
        st.in_proj.weight.copy_(torch.eye(2)), st.in_proj.bias.zero_()
        st.out_proj.weight.copy_(torch.eye(2)), st.out_proj.bias.zero_()
    z = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    out, idx, _ = m(z)
    # the forward value is the code, not the input
    assert torch.allclose(out, st.codebook.weight[idx[:, 0]].permute(0, 2, 1))
    g = torch.randn_like(out)
    (out * g).sum().backward()
    assert torch.allclose(z.grad, g, rtol=0, atol=0)
    # and the output carries no gradient to the codebook (only the codebook loss does)
    assert st.codebook.weight.grad is None or float(st.codebook.weight.grad.abs().max()) == 0.0


def test_gradients_of_the_vq_losses_go_to_their_own_side():
    m = _rvq()
    z = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    _, _, stats = m(z)
    grads = torch.autograd.grad(stats["codebook"], [z, m.stages[0].codebook.weight, m.stages[0].in_proj.weight], allow_unused=True)
    assert grads[0] is None or float(grads[0].abs().max()) == 0.0  # codebook loss: no gradient to the encoder
    assert float(grads[1].abs().max()) > 0
    grads = torch.autograd.grad(stats["commitment"], [z, m.stages[0].codebook.weight], allow_unused=True)
    assert float(grads[0].abs().max()) > 0
    assert grads[1] is None or float(grads[1].abs().max()) == 0.0


def test_codebook_losses_values_and_gradients_by_hand():
    z_e = torch.tensor([[[1.0, 2.0], [0.0, -1.0]], [[3.0, 3.0], [1.0, 1.0]]], dtype=torch.float64, requires_grad=True)
    z_q = torch.tensor([[[0.0, 2.0], [1.0, 1.0]], [[3.0, 1.0], [1.0, 1.0]]], dtype=torch.float64, requires_grad=True)
    commitment, codebook = codebook_losses(z_e, z_q)
    # item 0: (1 + 0 + 1 + 4) / 4 = 1.5; item 1: (0 + 4 + 0 + 0) / 4 = 1
    assert commitment.tolist() == pytest.approx([1.5, 1.0])
    assert codebook.tolist() == pytest.approx([1.5, 1.0])
    (ge,) = torch.autograd.grad(commitment.sum(), [z_e])
    assert torch.allclose(ge, 2 * (z_e - z_q).detach() / 4)
    (gq,) = torch.autograd.grad(codebook.sum(), [z_q])
    assert torch.allclose(gq, 2 * (z_q - z_e).detach() / 4)


def _hand_rvq():
    """dim = codebook_dim = 2, identity projections, two stages with hand-chosen codebooks."""
    m = ResidualVQ(dim=2, num_codebooks=2, codebook_size=3, codebook_dim=2, quantizer_dropout=0.0, restart_after=0).double()
    with torch.no_grad():
        for st in m.stages:
            st.in_proj.weight.copy_(torch.eye(2)), st.in_proj.bias.zero_()
            st.out_proj.weight.copy_(torch.eye(2)), st.out_proj.bias.zero_()
        m.stages[0].codebook.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]]))
        m.stages[1].codebook.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5], [-0.5, 0.5]]))
    return m


def test_residual_stages_quantize_residuals_by_hand():
    m = _hand_rvq()
    # one item, two frames: z = (2.5, 0.4) and (-1.0, 1.5)
    z = torch.tensor([[[2.5, -1.0], [0.4, 1.5]]], dtype=torch.float64)
    # frame 0: stage 1 cosine-nearest of (2.5, .4) is (2, 0) -> residual (0.5, 0.4) -> stage 2 picks (0.5, 0)
    #          (cos with (.5,0) = .781 beats (0,.5) = .625); out = (2.5, 0); residual left (0, 0.4)
    # frame 1: stage 1: (-1, 1.5) -> (0, 2) (cos .832 vs (-2,-2) -.196) -> residual (-1, -0.5)
    #          stage 2: cos with (.5,0) -.894, (0,.5) -.447, (-.5,.5) .316 -> code 2; out = (-0.5, 2.5)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        out, idx, stats = m(z)
        assert idx.tolist() == [[[0, 1], [0, 2]]]
        assert out[0].t().tolist() == [[2.5, 0.0], [-0.5, 2.5]]
        # commitment per stage: mean over frames and dims of (z_e - code)^2
        c1 = ((0.5**2 + 0.4**2) + (1.0**2 + 0.5**2)) / 4
        c2 = ((0.0**2 + 0.4**2) + (0.5**2 + 1.0**2)) / 4
        assert stats["commitment"].item() == pytest.approx((c1 + c2) / 2, rel=1e-12)
        assert stats["codebook"].item() == pytest.approx((c1 + c2) / 2, rel=1e-12)
        assert stats["usage"].tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert m.encode(z).tolist() == idx.tolist()
    assert m.encode(z, 1).tolist() == [[[0, 1]]]
    assert m.decode(idx)[0].t().tolist() == [[2.5, 0.0], [-0.5, 2.5]]
    assert m.decode(idx[:, :1])[0].t().tolist() == [[2.0, 0.0], [0.0, 2.0]]


def test_quantizer_dropout_uses_only_the_first_stages(monkeypatch):
    m = _hand_rvq().train()
    z = torch.tensor([[[2.5, -1.0], [0.4, 1.5]]], dtype=torch.float64).expand(2, 2, 2).contiguous()
    monkeypatch.setattr(rvq_module, "dropout_num_codebooks", lambda b, k, p, device: torch.tensor([1, 2], device=device))
    out, idx, stats = m(z)
    assert out[0].t().tolist() == [[2.0, 0.0], [0.0, 2.0]]  # stage 1 only
    assert out[1].t().tolist() == [[2.5, 0.0], [-0.5, 2.5]]
    assert idx[0].tolist() == idx[1].tolist() == [[0, 1], [0, 2]]  # every stage is still looked up
    c1 = ((0.5**2 + 0.4**2) + (1.0**2 + 0.5**2)) / 4
    c2 = ((0.0**2 + 0.4**2) + (0.5**2 + 1.0**2)) / 4
    # mean over items of (sum over the stages each item used) / (number used)
    assert stats["commitment"].item() == pytest.approx((c1 + (c1 + c2) / 2) / 2, rel=1e-12)
    assert stats["codebook"].item() == pytest.approx((c1 + (c1 + c2) / 2) / 2, rel=1e-12)


def test_eval_forward_equals_encode_then_decode():
    m = _rvq(dim=4, k=3, size=8, cdim=2, seed=3).eval()
    z = torch.randn(2, 4, 6, dtype=torch.float64)
    out, idx, _ = m(z)
    assert torch.equal(idx, m.encode(z))
    assert torch.allclose(out, m.decode(idx), rtol=1e-12, atol=1e-12)


def test_nearest_code_is_cosine_not_euclidean():
    codebook = torch.tensor([[10.0, 0.0], [0.7, 0.7]])
    z = torch.tensor([[1.0, 0.1], [1.0, 0.9], [9.0, 1.0]])
    # Euclidean nearest of (1, 0.1) would be (0.7, 0.7); by angle it is (10, 0)
    assert nearest_code(z, codebook).tolist() == [0, 1, 0]


def test_usage_and_perplexity_by_hand():
    counts = code_usage(torch.tensor([[0, 2], [2, 1]]), 4)
    assert counts.tolist() == [1.0, 1.0, 2.0, 0.0]
    # p = (1/4, 1/4, 1/2): entropy 1.5 bits -> perplexity 2^1.5
    assert perplexity(counts) == pytest.approx(2**1.5, rel=1e-6)


def test_dropout_num_codebooks_distribution():
    torch.manual_seed(0)
    n = dropout_num_codebooks(60000, 4, 0.6, torch.device("cpu"))
    freq = torch.bincount(n, minlength=5)[1:].double() / n.numel()
    expected = torch.tensor([0.15, 0.15, 0.15, 0.15 + 0.4], dtype=torch.float64)
    assert torch.allclose(freq, expected, atol=0.01)
    assert torch.equal(dropout_num_codebooks(5, 4, 1.0, torch.device("cpu")) >= 1, torch.ones(5, dtype=torch.bool))


def test_dead_code_restart_counts_idle_forwards_exactly():
    torch.manual_seed(0)
    vq = FactorizedVQ(dim=4, codebook_size=4, codebook_dim=2)
    z_e = torch.randn(1, 6, 2)
    before = vq.codebook.weight.detach().clone()
    # code 0 used every time, code 1 only on the first call
    assert vq.restart_dead_codes(z_e, torch.tensor([[0, 1]]), after=3) == 0
    assert vq.idle_steps.tolist() == [0, 0, 1, 1]
    assert vq.restart_dead_codes(z_e, torch.tensor([[0, 0]]), after=3) == 0
    assert vq.idle_steps.tolist() == [0, 1, 2, 2]
    assert vq.restart_dead_codes(z_e, torch.tensor([[0, 0]]), after=3) == 2  # codes 2, 3 reach 3
    assert vq.idle_steps.tolist() == [0, 2, 0, 0]
    after = vq.codebook.weight.detach()
    assert torch.equal(after[:2], before[:2])
    rows = z_e.reshape(-1, 2)
    for code in after[2:]:
        assert torch.isclose(rows, code).all(dim=1).any()


def test_training_forward_restarts_and_reports():
    m = ResidualVQ(dim=2, num_codebooks=1, codebook_size=3, codebook_dim=2, quantizer_dropout=0.0, restart_after=1).double()
    with torch.no_grad():
        st = m.stages[0]
        st.in_proj.weight.copy_(torch.eye(2)), st.in_proj.bias.zero_()
        st.codebook.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    z = torch.tensor([[[1.0, 2.0], [0.1, 0.2]]], dtype=torch.float64)  # both frames pick code 0
    _, _, stats = m.train()(z)
    assert stats["restarted"].item() == 2.0  # codes 1 and 2 idle for 1 forward
    m.eval()(z)
    assert m.stages[0].idle_steps.tolist() == [0, 0, 0]  # no restart bookkeeping in eval
    assert math.isfinite(stats["commitment"].item())
