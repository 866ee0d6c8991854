"""The diffusion transformer (DiT) that denoises VAE latents (Stable Audio 2 style).

Input is a noisy latent sequence (B, D, T); output has the same shape and means
whatever the objective says (v or the EDM network output F).  The network itself
knows nothing about noise schedules: it receives one number per item,
``noise_level`` (``c_noise``), and the objective decides what that number is.

Conditioning:
- text tokens (B, S, text_dim) + mask through cross-attention in every block;
  a learned "null" key is always present, so an item whose text is dropped
  (all-False mask, the unconditional branch of CFG) still attends to something;
- timing (seconds_start, seconds_total) and the noise level form one global token
  prepended to the sequence (optionally also adaLN modulation of every block);
- inpainting: a mask channel plus the known latents as extra input channels.

Attention runs through ``F.scaled_dot_product_attention`` (on CPU this is a
fused, tiled kernel whose memory grows linearly with length); ``attn_chunk``
additionally splits long query sequences into blocks so that backends without a
fused kernel also stay linear in memory.  With ``local_window`` set, all but every
``global_every``-th layer attend within windows of that many frames (shifted by
half a window in every other such layer), so long-form compute grows linearly in
those layers while the global layers keep whole-piece structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.checkpoint import register_model
from tunesmith.conditioning.beat import CLOCK_DIM
from tunesmith.conditioning.key import KEY_DIM


@dataclass
class DiTConfig:
    """Shape of the DiT.  ``parameterization`` is the objective the weights were trained for."""

    latent_dim: int = 64  # D: channels of the VAE latent
    width: int = 512
    depth: int = 8
    heads: int = 8
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult * width (rounded to 64): same params as a 4x MLP
    text_dim: int = 384  # width of the text encoder's tokens (MiniLM: 384)
    fourier_dim: int = 256  # Fourier features of noise level and timing
    max_seconds: float = 190.0  # timing inputs are scaled by this; also the trained maximum duration
    inpainting: bool = True  # extra input channels: mask (1) + known latents (D)
    adaln: bool = False  # also modulate every block by the global conditioning vector
    rope_base: float = 10000.0
    attn_chunk: int = 0  # split self-attention queries into blocks of this many frames (0: never)
    local_window: int = 0  # window (frames) of windowed self-attention; 0: every layer attends globally
    global_every: int = 2  # with local_window: every global_every-th layer attends globally, the rest in windows
    parameterization: str = "v"  # "v" (cosine schedule) or "edm"
    sigma_data: float = 1.0  # EDM's data standard deviation (latents are ~unit variance)
    beat_clock: bool = False  # add the prompted tempo's beat clock (conditioning/beat.py) to every frame
    key_input: bool = False  # add the prompted key's vector (conditioning/key.py) to every frame

    def __post_init__(self) -> None:
        for name in ("latent_dim", "width", "depth", "heads", "text_dim", "fourier_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size")
        if self.fourier_dim % 2:
            raise ValueError(f"fourier_dim must be even, got {self.fourier_dim}")
        if self.parameterization not in ("v", "edm"):
            raise ValueError(f"parameterization must be 'v' or 'edm', got {self.parameterization!r}")
        if self.max_seconds <= 0 or self.sigma_data <= 0 or self.attn_chunk < 0 or self.ffn_mult <= 0:
            raise ValueError("max_seconds, sigma_data, ffn_mult must be > 0 and attn_chunk >= 0")
        if self.local_window < 0 or self.global_every < 1:
            raise ValueError("local_window must be >= 0 and global_every >= 1")

    def is_global(self, layer: int) -> bool:
        """Whether self-attention of ``layer`` sees the whole sequence (else windows)."""
        return self.local_window == 0 or (layer + 1) % self.global_every == 0

    def window_offset(self, layer: int) -> int:
        """Where the windows of a windowed ``layer`` start: every other windowed layer is shifted by half."""
        windowed_before = sum(not self.is_global(i) for i in range(layer))
        return (windowed_before % 2) * (self.local_window // 2)

    @property
    def ffn_hidden(self) -> int:
        return max(64, int(round(self.ffn_mult * self.width / 64)) * 64)


# ---------------------------------------------------------------------------
# small parts


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar, then an MLP: how the net reads noise level and seconds."""

    def __init__(self, fourier_dim: int, width: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(fourier_dim // 2) * scale)
        self.mlp = nn.Sequential(nn.Linear(fourier_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * x.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))


def rotary_frequencies(length: int, head_dim: int, base: float, device: torch.device) -> torch.Tensor:
    """Unit complex numbers (length, head_dim/2) for rotary position embedding (Su et al. 2021)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, L, ..., Dh) by position: one complex multiply.

    ``freqs`` is (L, Dh/2); it broadcasts over the dimensions between L and Dh.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    shape = (freqs.shape[0],) + (1,) * (x.dim() - 3) + (freqs.shape[1],)
    return torch.view_as_real(pairs * freqs.view(shape)).flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
    """Scaled dot-product attention, optionally over query blocks of ``chunk`` so memory stays linear."""
    if chunk <= 0 or q.shape[-2] <= chunk:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return torch.cat(
        [F.scaled_dot_product_attention(q[:, :, i : i + chunk], k, v, attn_mask=mask) for i in range(0, q.shape[-2], chunk)],
        dim=-2,
    )


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offset: int = 0) -> torch.Tensor:
    """Attention within non-overlapping windows of ``window`` positions: cost and memory linear in length.

    Window boundaries sit at ``offset``, ``offset + window``, ...; alternating the
    offset between layers (shifted windows, Liu et al. 2021) lets information cross
    every boundary.  A sequence no longer than one window gets full attention (whatever
    the offset).  Works on strided views (no copies of q, k, v), one fused attention
    call per window.
    """
    n = q.shape[-2]
    if n <= window:
        return F.scaled_dot_product_attention(q, k, v)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    bounds = [0, *range(offset or window, n, window), n]
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[..., start:end, :] = F.scaled_dot_product_attention(q[..., start:end, :], k[..., start:end, :], v[..., start:end, :])
    return out


class DiTBlock(nn.Module):
    """Pre-norm block: self-attention (rotary), cross-attention to text, SwiGLU feed-forward."""

    def __init__(self, config: DiTConfig, window: int = 0, window_offset: int = 0) -> None:
        super().__init__()
        w, self.heads, self.chunk = config.width, config.heads, config.attn_chunk
        self.window, self.window_offset = window, window_offset  # window 0: global self-attention
        self.norm1 = nn.LayerNorm(w)
        self.qkv = nn.Linear(w, 3 * w, bias=False)  # one fused projection
        self.out1 = nn.Linear(w, w, bias=False)
        self.norm2 = nn.LayerNorm(w)
        self.q2 = nn.Linear(w, w, bias=False)
        self.kv2 = nn.Linear(w, 2 * w, bias=False)
        self.out2 = nn.Linear(w, w, bias=False)
        self.norm3 = nn.LayerNorm(w)
        hidden = config.ffn_hidden
        # Value and gate in one matmul.  No biases, as in the attention projections (and LLaMA's
        # SwiGLU): on CPU, broadcasting a bias into the (tokens x 2 * hidden) output costs a
        # memory pass of its own, 6% of a 10 s step at the bundled size (measured).
        self.ff_in = nn.Linear(w, 2 * hidden, bias=False)
        self.ff_out = nn.Linear(hidden, w, bias=False)
        # adaLN: shift/scale/gate for the three sub-layers, zero-initialized (starts unmodulated)
        self.modulation = nn.Linear(w, 9 * w) if config.adaln else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        text_kv: torch.Tensor,
        text_mask: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        if self.modulation is not None:
            mods = self.modulation(cond)[:, None].chunk(9, dim=-1)
        else:
            mods = None

        def pre(norm: nn.LayerNorm, i: int) -> torch.Tensor:
            h = norm(x)
            return h if mods is None else h * (1 + mods[3 * i + 1]) + mods[3 * i]

        def gate(h: torch.Tensor, i: int) -> torch.Tensor:
            return h if mods is None else h * (1 + mods[3 * i + 2])

        b, n, _ = x.shape
        qkv = self.qkv(pre(self.norm1, 0)).view(b, n, 3, self.heads, -1)
        q, k = apply_rotary(qkv[:, :, :2], rope).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, Dh) each
        v = qkv[:, :, 2].transpose(1, 2)
        if self.window:
            mixed = windowed_attention(q, k, v, self.window, self.window_offset)
        else:
            mixed = attention(q, k, v, chunk=self.chunk)
        x = x + gate(self.out1(self._merge_heads(mixed)), 0)

        q = self._split_heads(self.q2(pre(self.norm2, 1)))
        k, v = self._split_heads(self.kv2(text_kv)).chunk(2, dim=-1)
        x = x + gate(self.out2(self._merge_heads(attention(q, k, v, text_mask))), 1)

        value, g = self.ff_in(pre(self.norm3, 2)).chunk(2, dim=-1)
        return x + gate(self.ff_out(value * F.silu(g)), 2)


# ---------------------------------------------------------------------------
# the model


@register_model("dit", DiTConfig)
class DiT(nn.Module):
    """Diffusion transformer over latents (B, D, T) with text, timing and inpainting conditioning."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        w, d = config.width, config.latent_dim
        self.gradient_checkpointing = False
        in_channels = d + (d + 1 if config.inpainting else 0)
        self.proj_in = nn.Linear(in_channels, w)
        # No bias: a zero clock ("none") adds nothing; zero-initialised, so a trained DiT
        # given a clock to learn (tunesmith.checkpoint.init_from) starts out exactly as it was.
        self.beat_proj = nn.Linear(CLOCK_DIM, w, bias=False) if config.beat_clock else None
        self.key_proj = nn.Linear(KEY_DIM, w, bias=False) if config.key_input else None  # the same, for the key
        for proj in (self.beat_proj, self.key_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
        self.noise_embed = FourierFeatures(config.fourier_dim, w)
        self.start_embed = FourierFeatures(config.fourier_dim, w, scale=1.0)
        self.total_embed = FourierFeatures(config.fourier_dim, w, scale=1.0)
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.null_text = nn.Parameter(torch.randn(1, 1, w) * 0.02)  # always-visible key for dropped text
        self.blocks = nn.ModuleList(
            DiTBlock(config, 0, 0) if config.is_global(i) else DiTBlock(config, config.local_window, config.window_offset(i))
            for i in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, d)
        nn.init.zeros_(self.proj_out.weight)  # the untrained net outputs 0: a calm start for every objective
        nn.init.zeros_(self.proj_out.bias)

    def encode_text(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected text tokens with the null token prepended, and the matching SDPA mask (B, 1, 1, S+1).

        Constant across sampling steps, so samplers may compute it once and pass it to :meth:`forward`.
        """
        null = self.null_text.expand(batch, 1, -1)
        if text is None:
            tokens, mask = null, torch.ones(batch, 1, dtype=torch.bool, device=null.device)
        else:
            if text.dim() != 3 or text.shape[0] != batch or text.shape[-1] != self.config.text_dim:
                raise ValueError(f"text must be (B={batch}, S, {self.config.text_dim}), got {tuple(text.shape)}")
            if text_mask is None:
                text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            tokens = torch.cat([null, self.text_proj(text.to(null.dtype))], dim=1)
            mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=text.device), text_mask.bool()], dim=1)
        return tokens, mask[:, None, None, :]

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        seconds_start: torch.Tensor | None = None,
        seconds_total: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_latents: torch.Tensor | None = None,
        encoded_text: tuple[torch.Tensor, torch.Tensor] | None = None,
        beat: torch.Tensor | None = None,
        key: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, D, T), noise_level (B,) -> (B, D, T).

        ``inpaint_mask`` (B, 1, T) is 1 where the latents are known (kept) and
        ``inpaint_latents`` (B, D, T) holds them; both default to "nothing known".
        ``beat`` (B, CLOCK_DIM, T), for a model with a beat clock, is the clock of each
        frame; it defaults to zeros ("no clock").  ``key`` (B, KEY_DIM), for a model with a
        key input, is the key vector; it defaults to zeros ("no key").
        """
        cfg = self.config
        b, d, t = x.shape
        if d != cfg.latent_dim:
            raise ValueError(f"latents have {d} channels, the model expects {cfg.latent_dim}")
        dev = x.device
        zeros = torch.zeros(b, device=dev)  # timing not given: reads as 0 s
        seconds_start = zeros if seconds_start is None else seconds_start.to(dev).float().expand(b)
        seconds_total = zeros if seconds_total is None else seconds_total.to(dev).float().expand(b)

        h = x.transpose(1, 2)
        if cfg.inpainting:
            if inpaint_mask is None:
                inpaint_mask = torch.zeros(b, 1, t, device=dev, dtype=x.dtype)
            if inpaint_latents is None:
                inpaint_latents = torch.zeros_like(x)
            known = inpaint_latents * inpaint_mask
            h = torch.cat([h, inpaint_mask.to(x.dtype).expand(b, 1, t).transpose(1, 2), known.transpose(1, 2)], dim=-1)
        h = self.proj_in(h)
        if beat is not None:
            if self.beat_proj is None:
                raise ValueError("this model has no beat clock")
            if beat.shape[1:] != (CLOCK_DIM, t):
                raise ValueError(f"beat clock must be (B, {CLOCK_DIM}, {t}), got {tuple(beat.shape)}")
            h = h + self.beat_proj(beat.to(h.dtype).transpose(1, 2))
        if key is not None:
            if self.key_proj is None:
                raise ValueError("this model takes no key input")
            if key.shape != (b, KEY_DIM):
                raise ValueError(f"key must be (B={b}, {KEY_DIM}), got {tuple(key.shape)}")
            h = h + self.key_proj(key.to(h.dtype))[:, None]

        cond = (
            self.noise_embed(noise_level.to(dev).float().expand(b))
            + self.start_embed(seconds_start / cfg.max_seconds)
            + self.total_embed(seconds_total / cfg.max_seconds)
        )
        h = torch.cat([cond[:, None].to(h.dtype), h], dim=1)  # the global token
        rope = rotary_frequencies(t + 1, cfg.width // cfg.heads, cfg.rope_base, dev)
        text_kv, mask = encoded_text if encoded_text is not None else self.encode_text(text, text_mask, b)

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, rope, text_kv, mask, cond, use_reentrant=False)
            else:
                h = block(h, rope, text_kv, mask, cond)
        return self.proj_out(self.norm_out(h[:, 1:])).transpose(1, 2)
