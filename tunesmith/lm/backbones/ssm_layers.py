"""Layers shared by the state-space backbones (Mamba-2 and Mamba-1).

A state-space backbone is a stack of residual blocks, each

    x = x + mixer(RMSNorm(x))        # the selective SSM (Mamba-2 or Mamba-1 mixer)
    x = x + MLP(RMSNorm(x))          # the MLP after each mixer (skipped if mlp_hidden == 0)

with, in the hybrid variant, a cross-attention layer to the conditioning after every
N blocks, and a final RMSNorm.  This module holds everything except the mixers:
the causal depthwise convolution with its decoding state, the gated RMSNorm, the
MLP, cross-attention, and :class:`SSMBackbone`, which implements the
:class:`~tunesmith.lm.backbones.base.Backbone` interface once for both mixers.

A mixer is an ``nn.Module`` with ``forward(x) -> y`` (whole sequence),
``allocate_state(batch_size, device, dtype) -> MixerState`` and
``step(x, state) -> y`` (t new positions, state updated in place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tunesmith.lm.backbones.base import Backbone

# ---------------------------------------------------------------------------
# CUDA kernels of mamba-ssm, used when installed and the tensors are on a GPU


def mamba_ssm_kernel(name: str) -> Any | None:
    """The named function of the mamba-ssm package, or None when it is not installed.

    ``"ssd"`` -> ``mamba_chunk_scan_combined`` (Mamba-2), ``"selective_scan"`` ->
    ``selective_scan_fn`` (Mamba-1).  Imported lazily so that a CPU install never
    touches the package.
    """
    try:
        if name == "ssd":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            return mamba_chunk_scan_combined
        if name == "selective_scan":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            return selective_scan_fn
    except Exception:  # not installed, or installed without working CUDA/Triton
        return None
    raise ValueError(f"unknown kernel {name!r}")


def use_kernel(mode: str, x: Tensor, name: str) -> Any | None:
    """The kernel to use for ``x`` under option ``mode`` ("auto" or "off"), or None for pure PyTorch."""
    if mode == "off" or not x.is_cuda:
        return None
    return mamba_ssm_kernel(name)


# ---------------------------------------------------------------------------
# decoding state


@dataclass
class MixerState:
    """Constant-size decoding state of one mixer.

    conv: the last (kernel - 1) inputs of the causal convolution, (B, kernel - 1, channels);
    ssm:  the recurrent state, (B, heads, head_dim, d_state) for Mamba-2 or (B, d_inner, d_state) for Mamba-1.
    """

    conv: Tensor
    ssm: Tensor


@dataclass
class SSMState:
    """Decoding state of an :class:`SSMBackbone`: one :class:`MixerState` per block.

    Its size does not depend on how many positions have been decoded.  ``cross_kv``
    caches the keys/values the hybrid's cross-attention layers derive from the
    conditioning on the first call (their size depends on the conditioning, not on
    the decoded length).
    """

    layers: list[MixerState]
    cross_kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        """Every tensor the state holds (to measure its size)."""
        out = [t for s in self.layers for t in (s.conv, s.ssm)]
        return out + [t for kv in self.cross_kv.values() for t in kv]


# ---------------------------------------------------------------------------
# small layers


class CausalConv1d(nn.Module):
    """Depthwise causal 1-D convolution over time on (B, T, C), with a decoding form.

    Output t sees inputs t-k+1 .. t.  In decoding, the last k-1 inputs are the state.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)  # for its default init
        self.weight = nn.Parameter(conv.weight.detach().squeeze(1))  # (C, k)
        self.bias = nn.Parameter(conv.bias.detach())
        self.kernel_size = kernel_size

    def _convolve(self, window: Tensor) -> Tensor:
        """(B, k-1+t, C) -> (B, t, C): out[s] = bias + sum_i weight[:, i] * window[s + i].

        A sum of k shifted products: on CPU this is much faster than a depthwise
        ``conv1d`` (whose backward is slow there) and it is the same in decoding.
        """
        t = window.shape[1] - self.kernel_size + 1
        out = self.bias + window[:, :t] * self.weight[:, 0]
        for i in range(1, self.kernel_size):
            out = out + window[:, i : i + t] * self.weight[:, i]
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self._convolve(F.pad(x, (0, 0, self.kernel_size - 1, 0)))

    def step(self, x: Tensor, conv_state: Tensor) -> Tensor:
        """Convolve t new inputs (B, t, C) continuing from ``conv_state`` (B, k-1, C), updated in place."""
        window = torch.cat([conv_state, x], dim=1)  # (B, k-1+t, C)
        conv_state.copy_(window[:, -(self.kernel_size - 1) :])
        return self._convolve(window)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)): Mamba-2's extra normalization before the output projection (sec. 7.1)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MLP(nn.Module):
    """Linear -> GELU -> Linear, as in the Transformer's feed-forward layers."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention to the conditioning, with a residual (the hybrid's layer)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} cross-attention heads")
        self.heads = heads
        self.norm = nn.RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def keys_values(self, cross: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, D) -> keys and values, each (B, heads, S, D/heads)."""
        k, v = self.kv(cross).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        return split(k), split(v)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], cross_mask: Tensor | None) -> Tensor:
        q = self.q(self.norm(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        mask = None if cross_mask is None else cross_mask[:, None, None, :]
        if mask is not None:
            # a sequence with no real conditioning position attends to nothing: output 0
            empty = ~cross_mask.any(dim=1)
            mask = mask | empty[:, None, None, None]
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        out = self.out(attended.transpose(1, 2).flatten(2))
        if mask is not None:
            out = out * (~empty)[:, None, None].to(out.dtype)
        return x + out


class ResidualBlock(nn.Module):
    """x + mixer(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_hidden: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(dim) if mlp_hidden else None
        self.mlp = MLP(dim, mlp_hidden) if mlp_hidden else None

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor) -> Tensor:
        return self._mlp(x + self.mixer(self.norm(x)))

    def step(self, x: Tensor, state: MixerState) -> Tensor:
        return self._mlp(x + self.mixer.step(self.norm(x), state))


# ---------------------------------------------------------------------------
# the backbone


class SSMBackbone(Backbone):
    """A stack of :class:`ResidualBlock` s around a selective-SSM mixer, plus optional cross-attention.

    Subclasses give ``make_mixer()``; with ``cross_attention=True`` (the hybrid) a
    :class:`CrossAttention` layer follows every ``cross_attention_every``-th block.
    """

    supports_cross_attention = True

    def __init__(
        self,
        dim: int,
        n_layers: int,
        mlp_hidden: int,
        make_mixer: Callable[[], nn.Module],
        cross_attention: bool = False,
        cross_attention_every: int = 4,
        cross_heads: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(ResidualBlock(dim, make_mixer(), mlp_hidden) for _ in range(n_layers))
        self.cross = nn.ModuleDict()
        if cross_attention:
            heads = cross_heads or max(1, dim // 64)
            for i in range(n_layers):
                if (i + 1) % cross_attention_every == 0:
                    self.cross[str(i)] = CrossAttention(dim, heads)
        self.supports_cross_attention = cross_attention  # this instance: built with cross layers or not
        self.norm_out = nn.RMSNorm(dim)
        self._scale_residual_outputs(n_layers)

    def _scale_residual_outputs(self, n_layers: int) -> None:
        """Scale the layers that write into the residual stream by 1/sqrt(2 n_layers) (GPT-2's init)."""
        scale = 1.0 / math.sqrt(2 * max(n_layers, 1))
        with torch.no_grad():
            for block in self.blocks:
                block.mixer.out_proj.weight.mul_(scale)
                if block.mlp is not None:
                    block.mlp.fc2.weight.mul_(scale)

    def _check(self, x: Tensor, cross: Tensor | None, cross_mask: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, T, {self.dim}), got {tuple(x.shape)}")
        self.check_cross(cross, cross_mask, x)

    def forward(  # type: ignore[override]
        self, x: Tensor, cross: Tensor | None = None, cross_mask: Tensor | None = None
    ) -> Tensor:
        self._check(x, cross, cross_mask)
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if cross is not None and str(i) in self.cross:
                layer = self.cross[str(i)]
                x = layer(x, layer.keys_values(cross), cross_mask)
        return self.norm_out(x)

    def allocate_state(self, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> SSMState:
        """Conv and SSM state per block; ``max_len`` is accepted for the interface and not needed."""
        return SSMState([block.mixer.allocate_state(batch_size, device, dtype) for block in self.blocks])

    def step(  # type: ignore[override]
        self, x: Tensor, state: SSMState, cross: Tensor | None = None, cross_mask: Tensor | None = None
    ) -> Tensor:
        self._check(x, cross, cross_mask)
        for i, (block, layer_state) in enumerate(zip(self.blocks, state.layers)):
            x = block.step(x, layer_state)
            if cross is not None and str(i) in self.cross:
                layer = self.cross[str(i)]
                if i not in state.cross_kv:
                    state.cross_kv[i] = layer.keys_values(cross)
                x = layer(x, state.cross_kv[i], cross_mask)
        return self.norm_out(x)

