"""The Transformer decoder backbone: pre-norm blocks of causal self-attention, optional
cross-attention to the conditioning, and a GELU feed-forward (MusicGen sec. 2.3).

Positions are rotary by default (applied to queries and keys), so the model has no
position table and no hard length limit.  ``positions="sinusoidal"`` instead adds the
fixed sine/cosine table of MusicGen's public checkpoints to the input (what
``tunesmith.hub.musicgen`` maps them onto); that table also grows on demand.
Attention is ``F.scaled_dot_product_attention``, which picks a fused kernel where one
exists.

Decoding keeps a preallocated KV cache (:class:`KVCache`): one tensor per layer for
keys and values of shape (B, H, max_len, head_dim), written in place, so a decoding
step allocates nothing but its activations.  The cross-attention keys and values
depend only on the conditioning, so they are computed once at the first step and
reused by every later step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

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
    positions: Literal["rotary", "sinusoidal"] = "rotary"  # sinusoidal: MusicGen's added table

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError("num_layers and num_heads must be >= 1")
        if self.positions not in ("rotary", "sinusoidal"):
            raise ValueError(f"positions must be 'rotary' or 'sinusoidal', got {self.positions!r}")
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


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) float32: [cos | sin] of position * 10000^(-i / (dim/2 - 1)).

    The tensor2tensor layout MusicGen's checkpoints were trained with: all cosines first,
    then all sines, the frequencies spanning 1 .. 1/10000 over dim/2 - 1 steps (not the
    interleaved, dim-normalised form of "Attention Is All You Need").  Computed in
    float32 in the same order as the reference, so the table matches it bit for bit.
    """
    half = dim // 2
    step = math.log(10000) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64).float() * -step)
    angles = torch.arange(num_positions, dtype=torch.int64).float()[:, None] * freqs[None, :]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(table, (0, dim % 2))  # an odd width gets a zero last column


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

    def _heads(self, x: torch.Tensor, rotations: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (rotated, unless ``rotations`` is None: positions already in x) and v, each (B, H, T, hd)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        if rotations is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            return q, k, v
        q, k = apply_rotary(qkv[:, :, :2], rotations).permute(2, 0, 3, 1, 4)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * hd))

    def forward(self, x: torch.Tensor, rotations: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(x, rotations)
        drop = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True))

    def step(
        self,
        x: torch.Tensor,
        rotations: torch.Tensor | None,
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
    """A stack of pre-norm decoder blocks with rotary (or added sinusoidal) positions and a final LayerNorm."""

    supports_cross_attention = True

    def __init__(self, dim: int, config: TransformerConfig, *, cross_attention: bool = False) -> None:
        super().__init__()
        if config.positions == "rotary" and (dim // config.num_heads) % 2:
            raise ValueError(f"head dim {dim // config.num_heads} must be even for rotary positions")
        self.dim, self.config = dim, config
        self.supports_cross_attention = cross_attention  # this instance: built with cross layers or not
        self.head_dim = dim // config.num_heads
        self.blocks = nn.ModuleList(Block(dim, config, cross_attention) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self._rotary = torch.empty(0, dtype=torch.complex64)
        self.sinusoidal = config.positions == "sinusoidal"
        self._sinusoids = torch.empty(0, dim)
        init_weights(self, config.num_layers)

    def _rotations(self, start: int, end: int, device: torch.device) -> torch.Tensor:
        """Rotary table rows for positions start..end-1, from a table grown by doubling."""
        table = self._rotary
        if table.shape[0] < end or table.device != device:
            size = max(end, 2 * table.shape[0], 256)
            table = self._rotary = rotary_tables(torch.arange(size, device=device), self.head_dim, self.config.rope_base)
        return table[start:end]

    def _positions(self, end: int, device: torch.device) -> torch.Tensor:
        """The sinusoidal table covering positions 0..end-1 (grown by doubling)."""
        if self._sinusoids.shape[0] < end or self._sinusoids.device != device:
            size = max(end, 2 * self._sinusoids.shape[0], 256)
            self._sinusoids = sinusoidal_table(size, self.dim).to(device)
        return self._sinusoids

    def _with_positions(self, x: torch.Tensor, start: int, index: torch.Tensor | None = None) -> torch.Tensor:
        """x plus the sinusoid of each of its positions (start.., or ``index`` on a static step)."""
        if index is not None:
            return x + self._sinusoids.index_select(0, index).to(x.dtype)
        return x + self._positions(start + x.shape[1], x.device)[start : start + x.shape[1]].to(x.dtype)

    def forward(self, x, cross=None, cross_mask=None):
        self.check_cross(cross, cross_mask, x)
        if self.sinusoidal:
            x, rotations = self._with_positions(x, 0), None
        else:
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
        if static:  # the position table must cover the cache before capture
            self._positions(max_len, device) if self.sinusoidal else self._rotations(0, max_len, device)
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
            rotations = None if self.sinusoidal else self._rotary.index_select(0, index)
            state.position.add_(t)
        else:
            rotations = None if self.sinusoidal else self._rotations(start, start + t, x.device)
        if self.sinusoidal:
            x = self._with_positions(x, start, index)
        # a mask given with this step replaces the cached one for this step (time-stamped prompts
        # switch sections between steps; the same mask on every call gives the same result)
        cross_mask_now = state.cross_mask if cross_mask is None else _attention_mask(cross_mask)
        for i, block in enumerate(self.blocks):
            cross_kv = state.cross[i] if state.cross else None
            x = block.step(x, rotations, state.keys[i], state.values[i], start, cross_kv, cross_mask_now, index)
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
