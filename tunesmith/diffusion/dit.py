"""The diffusion transformer (DiT) that denoises VAE latents (Stable Audio 2 style).

Input is a noisy latent sequence (B, D, T); output has the same shape and means
whatever the objective says (v or the EDM network output F).  The network itself
knows nothing about noise schedules: it receives one number per item,
``noise_level`` (``c_noise``), and the objective decides what that number is.

Conditioning:
- text tokens (B, S, text_dim) + mask through cross-attention in every block;
  a learned "null" key is always present, so an item whose text is dropped
  (all-False mask, the unconditional branch of CFG) still attends to something;
  a time-stamped prompt gives K sections of text and per-frame weights (``segments``):
  each frame reads its own section's text (crossfaded at boundaries), never another's;
- timing (seconds_start, seconds_total) and the noise level form one global token
  prepended to the sequence (optionally also adaLN modulation of every block);
- inpainting: a mask channel plus the known latents as extra input channels.

Public checkpoints map onto the same network (tunesmith/hub/): ``conditioning =
"stable-audio"`` is Stable Audio Open's way in (text and two number tokens for the timing in
cross-attention, the timing also projected into the global token, no null key and no mask),
and a few layout options (rotary over part of each head, grouped key/value heads in
cross-attention, biases, no final norm) cover the rest.  Their defaults are tunesmith's own DiT.

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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.checkpoint import register_model
from tunesmith.conditioning.beat import CLOCK_DIM
from tunesmith.conditioning.key import KEY_DIM
from tunesmith.diffusion.layerskip import LayerSkip


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
    # Layouts of public checkpoints (tunesmith/hub/); the defaults are tunesmith's own DiT.
    rotary_dim: int = 0  # rotary position over the first rotary_dim channels of each head (0: all of it)
    cross_dim: int = 0  # width of the tokens cross-attention reads (0: width)
    cross_kv_heads: int = 0  # key/value heads of cross-attention, each shared by a group of query heads (0: heads)
    ffn_dim: int = 0  # feed-forward hidden width (0: from ffn_mult)
    ffn_bias: bool = False  # biases in the feed-forward
    io_bias: bool = True  # biases of proj_in and proj_out
    final_norm: bool = True  # a LayerNorm before proj_out
    conditioning: str = "tunesmith"  # how text and timing enter: "tunesmith" or "stable-audio" (see DiT)
    cond_dim: int = 768  # stable-audio: width of the text and number tokens before cross_proj
    number_fourier_dim: int = 256  # stable-audio: Fourier features of each number (seconds) embedding
    timing_min: float = 0.0  # stable-audio: seconds are clamped to [timing_min, timing_max], then scaled to [0, 1]
    timing_max: float = 512.0
    # Presto-L (tunesmith.diffusion.layerskip): at noise levels >= skip_sigmas[i], skip skip_blocks[i] blocks
    skip_sigmas: tuple[float, ...] = ()
    skip_blocks: tuple[int, ...] = ()

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
        head_dim = self.width // self.heads
        if self.rotary_dim < 0 or self.rotary_dim > head_dim or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and in [0, {head_dim}], got {self.rotary_dim}")
        if self.cross_dim < 0 or self.ffn_dim < 0 or self.cond_dim < 1 or self.number_fourier_dim < 2:
            raise ValueError("cross_dim and ffn_dim must be >= 0, cond_dim >= 1 and number_fourier_dim >= 2")
        if self.cross_kv_heads < 0 or (self.cross_kv_heads and self.heads % self.cross_kv_heads):
            raise ValueError(f"cross_kv_heads ({self.cross_kv_heads}) must divide heads ({self.heads})")
        if self.conditioning not in ("tunesmith", "stable-audio"):
            raise ValueError(f"conditioning must be 'tunesmith' or 'stable-audio', got {self.conditioning!r}")
        if self.conditioning == "stable-audio" and (self.inpainting or self.adaln or self.beat_clock or self.key_input):
            raise ValueError("stable-audio conditioning takes no inpainting channels, adaLN, beat clock or key input")
        if not self.timing_min < self.timing_max:
            raise ValueError(f"need timing_min < timing_max, got {self.timing_min}, {self.timing_max}")
        if len(self.skip_sigmas) != len(self.skip_blocks):
            raise ValueError(f"skip_sigmas {self.skip_sigmas} and skip_blocks {self.skip_blocks} must have one entry per budget level")

    def is_global(self, layer: int) -> bool:
        """Whether self-attention of ``layer`` sees the whole sequence (else windows)."""
        return self.local_window == 0 or (layer + 1) % self.global_every == 0

    def window_offset(self, layer: int) -> int:
        """Where the windows of a windowed ``layer`` start: every other windowed layer is shifted by half."""
        windowed_before = sum(not self.is_global(i) for i in range(layer))
        return (windowed_before % 2) * (self.local_window // 2)

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_dim or max(64, int(round(self.ffn_mult * self.width / 64)) * 64)

    @property
    def cross_width(self) -> int:
        return self.cross_dim or self.width

    @property
    def kv_heads(self) -> int:
        return self.cross_kv_heads or self.heads


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


class NumberEmbedding(nn.Module):
    """A number in [0, 1] as [x, sin, cos] of random Fourier features, then a linear map: Stable
    Audio's embedding of seconds_start / seconds_total (one token each)."""

    def __init__(self, fourier_dim: int, width: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(fourier_dim // 2))
        self.proj = nn.Linear(fourier_dim // 2 * 2 + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()[:, None]
        angles = 2 * math.pi * x * self.freqs[None]
        return self.proj(torch.cat([x, angles.sin(), angles.cos()], dim=-1))


def rotary_frequencies(length: int, head_dim: int, base: float, device: torch.device, rotary_dim: int = 0) -> torch.Tensor:
    """Unit complex numbers (length, head_dim/2) for rotary position embedding (Su et al. 2021).

    With ``rotary_dim`` < head_dim only the first rotary_dim/2 channel pairs turn; the rest get
    angle 0, i.e. the factor 1 + 0i, which leaves them exactly as they are, so a partial rotary
    costs the same single complex multiply as a full one.
    """
    rotary_dim = rotary_dim or head_dim
    inv = base ** (-torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None]
    if rotary_dim < head_dim:
        angles = F.pad(angles, (0, (head_dim - rotary_dim) // 2))
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


def _onednn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(layer: nn.Module, x: torch.Tensor, onednn: bool = False) -> torch.Tensor:
    """``layer(x)``; with ``onednn``, a plain ``nn.Linear`` on CPU in float32 with no gradient wanted
    runs through oneDNN instead of torch's BLAS (MKL).  The same product in another summation
    order (differences ~1e-6); measured 1.4-1.8x faster on the DiT's matmuls on the AMD EPYC we
    build on, where MKL takes a slower path.  Anything else (a LoRA-wrapped layer, a GPU, autograd)
    takes the ordinary call.
    """
    if (onednn and type(layer) is nn.Linear and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.weight.dtype == torch.float32 and _onednn_ready()
            and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)


class CrossContext(NamedTuple):
    """What cross-attention reads, the same at every sampling step (so computed once per call).

    ``tokens`` (B', S, cross_width) and ``mask``, an SDPA mask (B', 1, 1, S) or None (every token
    is attended to).  ``rows``: None when every row of the batch attends; else the rows that do,
    and ``tokens`` holds only theirs.  (With Stable Audio's conditioning a row whose text is
    dropped reads a sequence of zeros through bias-free projections: keys and values are 0, so
    its cross-attention adds exactly 0 and is skipped, half of it in every CFG batch.)
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None
    rows: slice | torch.Tensor | None = None  # a slice when the rows are consecutive (cond rows first in CFG)
    # Time-stamped prompts: ``tokens`` holds K sections of equal length side by side, and
    # weights (B, K, L) says how much each position (global token first) reads each section.
    weights: torch.Tensor | None = None


class DiTBlock(nn.Module):
    """Pre-norm block: self-attention (rotary), cross-attention to text, SwiGLU feed-forward."""

    def __init__(self, config: DiTConfig, window: int = 0, window_offset: int = 0) -> None:
        super().__init__()
        w, self.heads, self.chunk = config.width, config.heads, config.attn_chunk
        self.kv_heads = config.kv_heads
        self.window, self.window_offset = window, window_offset  # window 0: global self-attention
        self.onednn = False  # matmuls through oneDNN when no gradient is wanted (see linear; DiT.use_onednn)
        self.norm1 = nn.LayerNorm(w)
        self.qkv = nn.Linear(w, 3 * w, bias=False)  # one fused projection
        self.out1 = nn.Linear(w, w, bias=False)
        self.norm2 = nn.LayerNorm(w)
        self.q2 = nn.Linear(w, w, bias=False)
        # keys and values of each key/value head side by side: [k_0 v_0 k_1 v_1 ...]
        self.kv2 = nn.Linear(config.cross_width, 2 * self.kv_heads * (w // self.heads), bias=False)
        self.out2 = nn.Linear(w, w, bias=False)
        self.norm3 = nn.LayerNorm(w)
        hidden = config.ffn_hidden
        # Value and gate in one matmul.  No biases, as in the attention projections (and LLaMA's
        # SwiGLU): on CPU, broadcasting a bias into the (tokens x 2 * hidden) output costs a
        # memory pass of its own, 6% of a 10 s step at the bundled size (measured).  (A public
        # checkpoint trained with them keeps them: ``ffn_bias``.)
        self.ff_in = nn.Linear(w, 2 * hidden, bias=config.ffn_bias)
        self.ff_out = nn.Linear(hidden, w, bias=config.ffn_bias)
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

    def cross_attention(self, h: torch.Tensor, context: CrossContext) -> torch.Tensor:
        """Normalised frames h (B', L, w) attending to the context's tokens (B', S, cross_width)."""
        q = self._split_heads(linear(self.q2, h, self.onednn))
        b, s = context.tokens.shape[:2]
        k, v = linear(self.kv2, context.tokens, self.onednn).view(b, s, self.kv_heads, -1).transpose(1, 2).chunk(2, dim=-1)
        if self.kv_heads != self.heads:  # grouped heads: query head i reads key/value head i // group
            group = self.heads // self.kv_heads
            k, v = (t[:, :, None].expand(-1, -1, group, -1, -1).reshape(b, self.heads, s, -1) for t in (k, v))
        if context.weights is None:
            return linear(self.out2, self._merge_heads(attention(q, k, v, context.mask)), self.onednn)
        # Per-section text (time-stamped prompts): each position attends to each section's
        # tokens alone, and the results are mixed by that position's section weights, so a
        # frame inside a section reads only that section's text (and a crossfade between two
        # at a boundary).  out2 is linear, so mixing before it is the same as after.
        sections = context.weights.shape[1]
        per = s // sections
        mixed = None
        for i in range(sections):
            part = slice(i * per, (i + 1) * per)
            read = attention(q, k[:, :, part], v[:, :, part], None if context.mask is None else context.mask[..., part])
            term = read * context.weights[:, i, None, :, None].to(read.dtype)
            mixed = term if mixed is None else mixed + term
        return linear(self.out2, self._merge_heads(mixed), self.onednn)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        context: CrossContext,
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
        qkv = linear(self.qkv, pre(self.norm1, 0), self.onednn).view(b, n, 3, self.heads, -1)
        q, k = apply_rotary(qkv[:, :, :2], rope).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, Dh) each
        v = qkv[:, :, 2].transpose(1, 2)
        if self.window:
            mixed = windowed_attention(q, k, v, self.window, self.window_offset)
        else:
            mixed = attention(q, k, v, chunk=self.chunk)
        x = x + gate(linear(self.out1, self._merge_heads(mixed), self.onednn), 0)

        if context.rows is None:
            x = x + gate(self.cross_attention(pre(self.norm2, 1), context), 1)
        elif context.tokens.shape[0]:  # only the rows that read something (no adaLN here: see DiTConfig)
            rows = context.rows
            out = self.cross_attention(self.norm2(x[rows]), context)
            if torch.is_grad_enabled():  # autograd keeps x (norm2's input): add out of place
                x = x.index_add(0, torch.arange(x.shape[0], device=x.device)[rows], out)
            else:  # x is this block's own intermediate: add in place, no copy of the batch
                x[rows] += out

        value, g = linear(self.ff_in, pre(self.norm3, 2), self.onednn).chunk(2, dim=-1)
        return x + gate(linear(self.ff_out, value * F.silu(g), self.onednn), 2)


# ---------------------------------------------------------------------------
# the model


@register_model("dit", DiTConfig)
class DiT(nn.Module):
    """Diffusion transformer over latents (B, D, T) with text, timing and inpainting conditioning.

    ``conditioning = "stable-audio"`` (Stable Audio Open's DiT and projection model, mapped by
    tunesmith/hub/stable_audio_keys.py): the text (projected to ``cond_dim`` when widths differ,
    padding zeroed) and one token per timing number (:class:`NumberEmbedding`) form the
    cross-attention sequence, read without a mask; the two number tokens, projected, plus the
    noise level's features form the global token; a row whose text is dropped (all-False mask)
    reads an all-zero sequence, as that model was trained for classifier-free guidance.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        w, d, cw = config.width, config.latent_dim, config.cross_width
        self.gradient_checkpointing = False
        in_channels = d + (d + 1 if config.inpainting else 0)
        self.proj_in = nn.Linear(in_channels, w, bias=config.io_bias)
        # No bias: a zero clock ("none") adds nothing; zero-initialised, so a trained DiT
        # given a clock to learn (tunesmith.checkpoint.init_from) starts out exactly as it was.
        self.beat_proj = nn.Linear(CLOCK_DIM, w, bias=False) if config.beat_clock else None
        self.key_proj = nn.Linear(KEY_DIM, w, bias=False) if config.key_input else None  # the same, for the key
        for proj in (self.beat_proj, self.key_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
        self.noise_embed = FourierFeatures(config.fourier_dim, w)
        if config.conditioning == "tunesmith":
            self.start_embed = FourierFeatures(config.fourier_dim, w, scale=1.0)
            self.total_embed = FourierFeatures(config.fourier_dim, w, scale=1.0)
            self.text_proj = nn.Sequential(nn.Linear(config.text_dim, cw), nn.SiLU(), nn.Linear(cw, cw))
            self.null_text = nn.Parameter(torch.randn(1, 1, cw) * 0.02)  # always-visible key for dropped text
        else:  # Stable Audio: its projection model (text, two numbers), then bias-free projections
            c = config.cond_dim
            self.text_in = nn.Linear(config.text_dim, c) if config.text_dim != c else None
            self.start_number = NumberEmbedding(config.number_fourier_dim, c)
            self.total_number = NumberEmbedding(config.number_fourier_dim, c)
            self.text_proj = nn.Sequential(nn.Linear(c, cw, bias=False), nn.SiLU(), nn.Linear(cw, cw, bias=False))
            self.global_proj = nn.Sequential(nn.Linear(2 * c, w, bias=False), nn.SiLU(), nn.Linear(w, w, bias=False))
        self.blocks = nn.ModuleList(
            DiTBlock(config, 0, 0) if config.is_global(i) else DiTBlock(config, config.local_window, config.window_offset(i))
            for i in range(config.depth)
        )
        self.layer_skip = (LayerSkip(config.depth, config.skip_sigmas, config.skip_blocks, config.parameterization)
                           if config.skip_sigmas or config.skip_blocks else None)
        self.norm_out = nn.LayerNorm(w) if config.final_norm else nn.Identity()
        self.proj_out = nn.Linear(w, d, bias=config.io_bias)
        nn.init.zeros_(self.proj_out.weight)  # the untrained net outputs 0: a calm start for every objective
        if self.proj_out.bias is not None:
            nn.init.zeros_(self.proj_out.bias)

    def _unit_seconds(self, seconds: torch.Tensor) -> torch.Tensor:
        """Stable Audio's number conditioning: seconds clamped to the trained range, scaled to [0, 1]."""
        lo, hi = self.config.timing_min, self.config.timing_max
        return (seconds.clamp(lo, hi) - lo) / (hi - lo)

    def timing_tokens(self, seconds_start: torch.Tensor, seconds_total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stable Audio's two number tokens (B, cond_dim) for seconds_start and seconds_total."""
        return self.start_number(self._unit_seconds(seconds_start)), self.total_number(self._unit_seconds(seconds_total))

    def encode_text(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int,
                    timing: tuple[torch.Tensor, torch.Tensor] | None = None,
                    segments: torch.Tensor | None = None) -> CrossContext:
        """What cross-attention reads: tunesmith's projected text with the null token prepended and the
        matching SDPA mask (B, 1, 1, S+1); or Stable Audio's text and ``timing`` tokens.

        ``segments`` (B, K, T), for a time-stamped prompt: ``text`` holds K sections of S tokens,
        each gets its own null token, and frame t reads section k with weight segments[:, k, t]
        (the global token with the mean weight of each section).

        Constant across sampling steps, so samplers may compute it once and pass it to :meth:`forward`.
        """
        if self.config.conditioning == "stable-audio":
            if segments is not None:
                raise ValueError("time-stamped prompts need tunesmith's own conditioning (not stable-audio)")
            if timing is None:
                raise ValueError("stable-audio conditioning needs the timing tokens (DiT.timing_tokens)")
            return self._stable_audio_context(text, text_mask, batch, timing)
        if segments is not None:
            return self._section_context(text, text_mask, batch, segments)
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
        return CrossContext(tokens, mask[:, None, None, :])

    def _section_context(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int,
                         segments: torch.Tensor) -> CrossContext:
        """K sections, each [null | its projected text], side by side, with per-position weights."""
        if text is None:
            raise ValueError("section weights (segments) need the sections' text")
        if segments.dim() != 3 or segments.shape[0] != batch:
            raise ValueError(f"segments must be (B={batch}, K, T), got {tuple(segments.shape)}")
        sections = segments.shape[1]
        if text.dim() != 3 or text.shape[0] != batch or text.shape[-1] != self.config.text_dim or text.shape[1] % sections:
            raise ValueError(f"text must be (B={batch}, K * S, {self.config.text_dim}) with K = {sections} sections, "
                             f"got {tuple(text.shape)}")
        per = text.shape[1] // sections
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        null = self.null_text.expand(batch, 1, -1)
        projected = self.text_proj(text.to(null.dtype)).view(batch, sections, per, -1)
        tokens = torch.cat([null[:, None].expand(-1, sections, -1, -1), projected], dim=2).flatten(1, 2)
        real = torch.ones(batch, sections, 1, dtype=torch.bool, device=text.device)
        mask = torch.cat([real, text_mask.bool().view(batch, sections, per)], dim=2).flatten(1)
        weights = segments.to(null.dtype)
        weights = torch.cat([weights.mean(-1, keepdim=True), weights], dim=-1)  # the global token first
        return CrossContext(tokens, mask[:, None, None, :], None, weights)

    def _stable_audio_context(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int,
                              timing: tuple[torch.Tensor, torch.Tensor]) -> CrossContext:
        numbers = torch.stack(timing, dim=1)  # (B, 2, cond_dim)
        if text is None:
            sequence, has_text = numbers, torch.zeros(batch, dtype=torch.bool, device=numbers.device)
        else:
            if text.dim() != 3 or text.shape[0] != batch or text.shape[-1] != self.config.text_dim:
                raise ValueError(f"text must be (B={batch}, S, {self.config.text_dim}), got {tuple(text.shape)}")
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None else text_mask.bool()
            text = text.to(numbers.dtype)
            if self.text_in is not None:
                text = self.text_in(text)
            # padding reads as zeros and is attended to like any token (no mask), as in training
            sequence = torch.cat([text * mask[..., None].to(text.dtype), numbers], dim=1)
            has_text = mask.any(dim=1)
        if bool(has_text.all()):
            return CrossContext(self.text_proj(sequence), None)
        index = has_text.nonzero().flatten()  # the others read all zeros: nothing to compute (CrossContext)
        rows: slice | torch.Tensor = index
        if len(index) and int(index[-1] - index[0]) == len(index) - 1:
            rows = slice(int(index[0]), int(index[-1]) + 1)
        return CrossContext(self.text_proj(sequence[rows]), None, rows)

    def use_onednn(self, enabled: bool = True) -> "DiT":
        """Run the blocks' matmuls through oneDNN at inference on CPU (see :func:`linear`)."""
        for block in self.blocks:
            block.onednn = enabled
        return self

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
        encoded_text: CrossContext | None = None,
        beat: torch.Tensor | None = None,
        key: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, D, T), noise_level (B,) -> (B, D, T).

        ``inpaint_mask`` (B, 1, T) is 1 where the latents are known (kept) and
        ``inpaint_latents`` (B, D, T) holds them; both default to "nothing known".
        ``beat`` (B, CLOCK_DIM, T), for a model with a beat clock, is the clock of each
        frame; it defaults to zeros ("no clock").  ``key`` (B, KEY_DIM), for a model with a
        key input, is the key vector, or (B, KEY_DIM, T) a key per frame (time-stamped prompts);
        it defaults to zeros ("no key").  ``segments`` (B, K, T): ``text`` holds K sections read
        frame by frame with these weights (:meth:`encode_text`).
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
            if key.dim() == 3 and key.shape == (b, KEY_DIM, t):  # a key per frame: it follows the sections
                h = h + self.key_proj(key.to(h.dtype).transpose(1, 2))
            elif key.shape != (b, KEY_DIM):
                raise ValueError(f"key must be (B={b}, {KEY_DIM}) or (B, {KEY_DIM}, {t}), got {tuple(key.shape)}")
            else:
                h = h + self.key_proj(key.to(h.dtype))[:, None]

        noise = self.noise_embed(noise_level.to(dev).float().expand(b))
        if cfg.conditioning == "stable-audio":
            if segments is not None:
                raise ValueError("time-stamped prompts need tunesmith's own conditioning (not stable-audio)")
            timing = self.timing_tokens(seconds_start, seconds_total)
            cond = self.global_proj(torch.cat(timing, dim=-1)) + noise
            context = encoded_text if encoded_text is not None else self.encode_text(text, text_mask, b, timing)
        else:
            cond = noise + self.start_embed(seconds_start / cfg.max_seconds) + self.total_embed(seconds_total / cfg.max_seconds)
            if segments is not None and segments.shape[-1] != t:
                raise ValueError(f"segments must cover the {t} frames, got {tuple(segments.shape)}")
            context = encoded_text if encoded_text is not None else self.encode_text(text, text_mask, b, segments=segments)
        h = torch.cat([cond[:, None].to(h.dtype), h], dim=1)  # the global token
        rope = rotary_frequencies(t + 1, cfg.width // cfg.heads, cfg.rope_base, dev, cfg.rotary_dim)

        levels = None if self.layer_skip is None else self.layer_skip.levels(noise_level.to(dev).expand(b))
        for i, block in enumerate(self.blocks):
            def run(h: torch.Tensor, block: DiTBlock = block) -> torch.Tensor:
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    return checkpoint(block, h, rope, context, cond, use_reentrant=False)
                return block(h, rope, context, cond)

            h = run(h) if levels is None else self.layer_skip(i, h, levels, run)  # type: ignore[misc]
        return self.proj_out(self.norm_out(h[:, 1:])).transpose(1, 2)
