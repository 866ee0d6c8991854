"""The Transformer decoder backbone: pre-norm blocks of causal self-attention, optional
cross-attention to the conditioning, and a GELU feed-forward (MusicGen sec. 2.3).

Positions are rotary (applied to queries and keys), so the model has no position
table and no hard length limit.  Attention is ``F.scaled_dot_product_attention``,
which picks a fused kernel where one exists.

Decoding keeps a preallocated KV cache (:class:`KVCache`): one tensor per layer for
keys and values of shape (B, H, max_len, head_dim), written in place, so a decoding
step allocates nothing but its activations.  The cross-attention keys and values
depend only on the conditioning, so they are computed once at the first step and
reused by every later step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.lm.backbones.base import Backbone, register_backbone


@dataclass
class TransformerConfig:
    num_layers: int = 8
    num_heads: int = 8
    ffn_dim: int = 0  # 0: 4 x dim, as in MusicGen
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError("num_layers and num_heads must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


# ---------------------------------------------------------------------------
# rotary positions (pure functions)


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Unit complex numbers (T, head_dim / 2): the rotation of each position at each frequency."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., 2i], x[..., 2i+1]) of x (B, T, ..., hd) by its position's angle.

    Pairs are read as complex numbers, so the rotation is one complex product; q and k
    can be rotated together (x = (B, T, 2, H, hd)), which keeps a decoding step's op
    count low.  ``rotations`` is (T, hd / 2) from :func:`rotary_tables`.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rot = rotations.view(1, rotations.shape[0], *([1] * (x.dim() - 3)), rotations.shape[1])
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


# ---------------------------------------------------------------------------
# the decoding state


@dataclass
class KVCache:
    """Keys and values of every layer for up to ``max_len`` positions, and how many are used."""

    keys: list[torch.Tensor]  # per layer (B, H, max_len, hd)
    values: list[torch.Tensor]
    max_len: int
    length: int = 0
    cross: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer (k, v)
    cross_mask: torch.Tensor | None = None  # (B, 1, 1, S) bool, broadcast over heads and queries
    # Static mode: the write position lives in a device tensor and every step has the same
    # shapes (attention over the whole cache, masked), so CUDA graphs or torch.compile can
    # capture a decoding step and replay it without Python or launch overhead per kernel.
    position: torch.Tensor | None = None


# ---------------------------------------------------------------------------
# modules


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def _heads(self, x: torch.Tensor, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (rotated) and v, each (B, H, T, hd)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        q, k = apply_rotary(qkv[:, :, :2], rotations).permute(2, 0, 3, 1, 4)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * hd))

    def forward(self, x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x, rotations)
        drop = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True))

    def step(
        self,
        x: torch.Tensor,
        rotations: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from t new positions to the cache plus themselves; write them into the cache.

        With ``index`` (the t cache positions as a device tensor) the step has static
        shapes: an indexed write and attention over the whole cache under a mask.
        """
        q, k, v = self._heads(x, rotations)
        t = x.shape[1]
        if index is not None:
            keys.index_copy_(2, index, k)
            values.index_copy_(2, index, v)
            visible = torch.arange(keys.shape[2], device=x.device)[None, :] <= index[:, None]  # (t, max_len)
            return self._merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=visible))
        end = start + t
        keys[:, :, start:end] = k  # in place: the cache is preallocated
        values[:, :, start:end] = v
        mask = None
        if t > 1:  # a prefill chunk: causal among the new positions, all of the past visible
            mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask)
        return self._merge(y)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def keys_values(self, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = cross.shape
        k, v = self.kv(cross).view(B, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, cond); x + FFN(LN x)."""

    def __init__(self, dim: int, config: TransformerConfig, cross_attention: bool) -> None:
        super().__init__()
        ffn = config.ffn_dim or 4 * dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = SelfAttention(dim, config.num_heads, config.dropout)
        self.norm_cross = nn.LayerNorm(dim, eps=config.norm_eps) if cross_attention else None
        self.cross = CrossAttention(dim, config.num_heads, config.dropout) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn, bias=False), nn.GELU(), nn.Linear(ffn, dim, bias=False))
        self.drop = nn.Dropout(config.dropout)

    def _cross_and_ffn(self, x: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None) -> torch.Tensor:
        if self.cross is not None and cross_kv is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), *cross_kv, mask))
        return x + self.drop(self.ffn(self.norm2(x)))

    def forward(self, x, rotations, cross_kv, mask):
        x = x + self.drop(self.attn(self.norm1(x), rotations))
        return self._cross_and_ffn(x, cross_kv, mask)

    def step(self, x, rotations, keys, values, start, cross_kv, mask, index=None):
        x = x + self.attn.step(self.norm1(x), rotations, keys, values, start, index)
        return self._cross_and_ffn(x, cross_kv, mask)


def _attention_mask(cross_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) True-is-real -> (B, 1, 1, S), broadcast over heads and queries by SDPA."""
    return None if cross_mask is None else cross_mask[:, None, None, :]


@register_backbone("transformer", TransformerConfig)
class TransformerBackbone(Backbone):
    """A stack of pre-norm decoder blocks with rotary positions and a final LayerNorm."""

    supports_cross_attention = True

    def __init__(self, dim: int, config: TransformerConfig, *, cross_attention: bool = False) -> None:
        super().__init__()
        if (dim // config.num_heads) % 2:
            raise ValueError(f"head dim {dim // config.num_heads} must be even for rotary positions")
        self.dim, self.config = dim, config
        self.supports_cross_attention = cross_attention  # this instance: built with cross layers or not
        self.head_dim = dim // config.num_heads
        self.blocks = nn.ModuleList(Block(dim, config, cross_attention) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self._rotary = torch.empty(0, dtype=torch.complex64)
        init_weights(self, config.num_layers)

    def _rotations(self, start: int, end: int, device: torch.device) -> torch.Tensor:
        """Rotary table rows for positions start..end-1, from a table grown by doubling."""
        table = self._rotary
        if table.shape[0] < end or table.device != device:
            size = max(end, 2 * table.shape[0], 256)
            table = self._rotary = rotary_tables(torch.arange(size, device=device), self.head_dim, self.config.rope_base)
        return table[start:end]

    def forward(self, x, cross=None, cross_mask=None):
        self.check_cross(cross, cross_mask, x)
        rotations = self._rotations(0, x.shape[1], x.device)
        mask = _attention_mask(cross_mask)
        for block in self.blocks:
            cross_kv = block.cross.keys_values(cross) if (cross is not None and block.cross is not None) else None
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, rotations, cross_kv, mask, use_reentrant=False)
            else:
                x = block(x, rotations, cross_kv, mask)
        return self.norm(x)

    def allocate_state(self, batch_size, max_len, device, dtype, *, static: bool | None = None) -> KVCache:
        """A zeroed KV cache; ``static`` (default: on CUDA) selects fixed-shape steps."""
        device = torch.device(device)
        shape = (batch_size, self.config.num_heads, max_len, self.head_dim)
        n = len(self.blocks)
        static = device.type == "cuda" if static is None else static
        if static:
            self._rotations(0, max_len, device)  # the rotary table must cover the cache before capture
        return KVCache(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            max_len=max_len,
            position=torch.zeros((), dtype=torch.long, device=device) if static else None,
        )

    def step(self, x, state: KVCache, cross=None, cross_mask=None):
        self.check_cross(cross, cross_mask, x)
        start, t = state.length, x.shape[1]
        if start + t > state.max_len:
            raise ValueError(f"decoding state holds {state.max_len} positions; {start + t} requested")
        if cross is not None and not state.cross:  # first call: derive cross keys/values once
            state.cross = [block.cross.keys_values(cross) for block in self.blocks]
            state.cross_mask = _attention_mask(cross_mask)
        index = None
        if state.position is not None:  # static shapes: positions from the device-side counter
            index = state.position + torch.arange(t, device=x.device)
            rotations = self._rotary.index_select(0, index)
            state.position.add_(t)
        else:
            rotations = self._rotations(start, start + t, x.device)
        for i, block in enumerate(self.blocks):
            cross_kv = state.cross[i] if state.cross else None
            x = block.step(x, rotations, state.keys[i], state.values[i], start, cross_kv, state.cross_mask, index)
        state.length = start + t
        return self.norm(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def init_weights(module: nn.Module, num_layers: int) -> None:
    """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 L)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            residual_out = name.endswith(("out.weight", "ffn.2.weight"))  # writes into the residual stream
            std = 0.02 / math.sqrt(2 * num_layers) if residual_out else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
