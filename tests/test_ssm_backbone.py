"""Mamba-2 / Mamba-1 backbones: decoding equals the parallel forward, gradients, constant state."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import ConfigError
from tunesmith.lm.backbones import backbone_names, build_backbone
from tunesmith.lm.backbones.ssm_layers import SSMState

DIM = 32
TINY = {
    "mamba2": {"n_layers": 4, "d_state": 8, "head_dim": 16, "chunk_size": 8, "cross_attention_every": 2},
    "mamba1": {"n_layers": 4, "d_state": 8, "chunk_size": 8, "cross_attention_every": 2},
}
BACKBONES = sorted(TINY)


def build(name: str, cross_attention: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, DIM, {**TINY[name], **overrides}, cross_attention=cross_attention).eval()


def conditioning(batch: int = 2, S: int = 5):
    gen = torch.Generator().manual_seed(3)
    cross = torch.randn(batch, S, DIM, generator=gen)
    mask = torch.ones(batch, S, dtype=torch.bool)
    mask[0, 3:] = False  # padded conditioning in the first sequence
    return cross, mask


def decode(model, x, prefix: int, cross=None, cross_mask=None):
    """Prefill ``prefix`` positions at once (if > 0), then one position per step."""
    state = model.allocate_state(x.shape[0], x.shape[1], x.device, x.dtype)
    outs = [model.step(x[:, :prefix], state, cross, cross_mask)] if prefix else []
    for t in range(prefix, x.shape[1]):
        outs.append(model.step(x[:, t : t + 1], state, cross, cross_mask))
    return torch.cat(outs, dim=1)


def test_backbones_are_registered():
    assert {"mamba1", "mamba2"} <= set(backbone_names())
    with pytest.raises(ConfigError):
        build_backbone("mamba2", DIM, {"no_such_option": 1})
    with pytest.raises(ConfigError):
        build_backbone("mamba2", DIM, {"chunk_size": 0})


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("prefix", [0, 11])
def test_step_by_step_equals_parallel_forward(name, prefix):
    model = build(name)
    x = torch.randn(2, 29, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)
        stepped = decode(model, x, prefix)
    assert full.abs().mean() > 0.1  # a real signal, not a degenerate zero output
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", BACKBONES)
def test_hybrid_cross_attention_decoding_equals_forward(name):
    model = build(name, cross_attention=True)
    assert len(model.cross) == 2  # after blocks 2 and 4
    x = torch.randn(2, 19, DIM, generator=torch.Generator().manual_seed(2))
    cross, mask = conditioning()
    with torch.no_grad():
        full = model(x, cross, mask)
        stepped = decode(model, x, 7, cross, mask)
        unconditioned = model(x)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=0)
    assert (full - unconditioned).abs().max() > 1e-3  # the conditioning is actually used


def test_cross_attention_ignores_masked_positions():
    model = build("mamba2", cross_attention=True)
    x = torch.randn(2, 9, DIM)
    cross, mask = conditioning()
    changed = cross.clone()
    changed[0, 3:] += 5.0  # only padded positions of sequence 0
    with torch.no_grad():
        torch.testing.assert_close(model(x, cross, mask), model(x, changed, mask))
        empty = torch.zeros_like(mask)  # no conditioning at all: finite, equal to no cross layer input
        assert torch.isfinite(model(x, cross, empty)).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_is_causal(name):
    model = build(name)
    x = torch.randn(1, 20, DIM)
    y = x.clone()
    y[:, 12] += 1.0
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-6, rtol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_every_parameter(name):
    model = build(name, cross_attention=True).train()
    x = torch.randn(2, 21, DIM, requires_grad=True)
    cross, mask = conditioning()
    model(x, cross, mask).pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, pname
    assert x.grad.abs().max() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    model = build("mamba2").train()
    x = torch.randn(2, 17, DIM)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x).sum().backward()
    for g, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("name", BACKBONES)
def test_decoding_state_does_not_grow(name):
    model = build(name)
    short = model.allocate_state(2, 16, "cpu", torch.float32)
    long = model.allocate_state(2, 100_000, "cpu", torch.float32)
    assert isinstance(long, SSMState)
    size = lambda s: sum(t.numel() for t in s.tensors())  # noqa: E731
    assert size(short) == size(long) > 0
    pointers = [t.data_ptr() for t in long.tensors()]
    with torch.no_grad():
        for _ in range(40):
            model.step(torch.randn(2, 1, DIM), long)
    assert size(long) == size(short)
    assert [t.data_ptr() for t in long.tensors()] == pointers  # updated in place, nothing reallocated
    assert any(t.abs().sum() > 0 for t in long.tensors())  # and it did record the inputs


def test_chunk_size_does_not_change_the_model():
    a = build("mamba2", chunk_size=4)
    b = build("mamba2", chunk_size=64)
    x = torch.randn(2, 23, DIM)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=0)


def test_backbone_without_cross_attention_refuses_conditioning():
    model = build("mamba2")
    cross, mask = conditioning()
    with pytest.raises(ValueError, match="prefix"):
        model(torch.randn(2, 5, DIM), cross, mask)
