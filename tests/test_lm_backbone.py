"""The Transformer backbone: causal, and step-by-step decoding equals the full forward."""

import pytest
import torch

from tunesmith.config import ConfigError
from tunesmith.lm.backbones import Backbone, backbone_names, build_backbone
from tunesmith.lm.backbones.transformer import apply_rotary, rotary_tables

DIM = 32



pytestmark = pytest.mark.usefixtures("one_thread")

def make(cross: bool) -> Backbone:
    torch.manual_seed(0)
    return build_backbone("transformer", DIM, {"num_layers": 2, "num_heads": 4}, cross_attention=cross).eval()


def conditioning(B: int = 2, S: int = 5):
    cross = torch.randn(B, S, DIM)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 3:] = False
    return cross, mask


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("cross_attention", [False, True])
def test_step_decoding_equals_forward(cross_attention, static):
    net = make(cross_attention)
    x = torch.randn(2, 12, DIM)
    cross, mask = conditioning() if cross_attention else (None, None)
    with torch.no_grad():
        full = net(x, cross, mask)
        state = net.allocate_state(2, 16, "cpu", torch.float32, static=static)
        parts = [net.step(x[:, :5], state, cross, mask)]  # prefill a prefix of 5
        parts += [net.step(x[:, t : t + 1], state, cross, mask) for t in range(5, 9)]
        parts.append(net.step(x[:, 9:], state, cross, mask))  # a second chunk mid-way
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_causal_and_masked_cross_positions_ignored():
    net = make(True)
    x = torch.randn(2, 10, DIM)
    cross, mask = conditioning()
    with torch.no_grad():
        a = net(x, cross, mask)
        x2 = x.clone()
        x2[:, 6:] = torch.randn(2, 4, DIM)
        cross2 = cross.clone()
        cross2[1, 3:] = 100.0  # masked positions: any value
        b = net(x2, cross2, mask)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rotary_is_relative_and_keeps_norms():
    """q.k after rotation depends on the position difference only; rotation keeps lengths."""
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)  # (B, T, H, hd)
    table = rotary_tables(torch.arange(20), 8, 10000.0)
    rot = lambda x, i: apply_rotary(x, table[i : i + 1])  # noqa: E731
    dot = lambda i, j: float((rot(q, i) * rot(k, j)).sum())  # noqa: E731
    assert dot(3, 1) == pytest.approx(dot(12, 10), abs=1e-5)
    assert dot(3, 1) != pytest.approx(dot(3, 2), abs=1e-3)
    torch.testing.assert_close(rot(q, 7).norm(), q.norm())
    torch.testing.assert_close(rot(q, 0), q)


def test_registry_and_errors():
    assert "transformer" in backbone_names()
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("lstm", DIM)
    with pytest.raises(ConfigError, match="unknown config key"):
        build_backbone("transformer", DIM, {"layers": 2})
    net = make(False)
    with pytest.raises(ValueError, match="no cross-attention"):
        net(torch.randn(1, 3, DIM), torch.randn(1, 2, DIM))
    state = net.allocate_state(1, 4, "cpu", torch.float32)
    with pytest.raises(ValueError, match="holds 4 positions"):
        net.step(torch.randn(1, 5, DIM), state)
