"""The dual-path diffusion network (DPD; MeLoDy, Lam et al. 2023, sec. 3.2) over VAE latents.

The latent sequence (B, D, T) is cut into segments of ``segment`` frames.  Blocks come in
pairs:

- the *fine path* attends among the frames inside each segment (cost T * segment, not T^2),
  and cross-attends to the coarse tokens of that segment at their own rate (``tokens_per_frame``
  token frames per latent frame: the tokens are time-aligned, a segment reads only its own);
  every other pair shifts the segment boundaries by half a segment, so no boundary is fixed;
- the *coarse path* mean-pools each segment to one vector, attends across the segments (and
  to the segment-pooled tokens), and adds its update back to every frame of the segment.

The coarse tokens also enter the input: each latent frame adds a projection of its own
token frames.  A token id equal to ``codebook_size`` means "no token": it pads, and a row whose
tokens are all that id is the unconditional branch of classifier-free guidance.  The noise
level is given per frame (B, T) or per item (B,) and modulates every block (adaLN-zero, Peebles
& Xie 2023), so segments may sit at different noise levels (multi-chunk training, and a clean
known prefix beside frames being denoised).  Inpainting channels (a keep mask and the known
latents) let stage 2 continue from the tail of the previous window (outpainting).

Two limits reduce to plain models (the tests check both): with ``segment`` = T the fine path is
full self-attention over the sequence and the coarse path sees one vector; with ``segment`` = 1
the fine path is frame-wise and the coarse path is full self-attention over the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.checkpoint import register_model
from tunesmith.diffusion.dit import FourierFeatures, apply_rotary, rotary_frequencies

OBJECTIVES = ("angle", "v", "edm")


@dataclass
class DPDConfig:
    """Shape of the DPD, its token input, and the objective its weights were trained for."""

    latent_dim: int = 32  # D: channels of the VAE latent
    width: int = 256
    depth: int = 4  # fine/coarse pairs
    heads: int = 4
    ffn_mult: float = 2.0
    segment: int = 25  # latent frames per segment (1 s at 25 frames/s)
    shift: bool = True  # shift the fine path's segments by half a segment in every other pair
    num_codebooks: int = 1  # K coarse codebooks
    codebook_size: int = 1024
    tokens_per_frame: int = 2  # token frames per latent frame (codec-24k 50/s over the VAE's 25/s)
    fourier_dim: int = 64
    inpainting: bool = True  # extra input channels: keep mask (1) + known latents (D)
    objective: str = "angle"  # "angle" (MeLoDy), "v" (cosine v-objective) or "edm"
    sigma_data: float = 1.0
    rope_base: float = 10000.0
    frame_rate: float = 25.0  # latent frames per second
    token_rate: float = 50.0  # coarse token frames per second

    def __post_init__(self) -> None:
        for name in ("latent_dim", "width", "depth", "heads", "segment", "num_codebooks", "tokens_per_frame", "fourier_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size")
        if self.fourier_dim % 2 or self.ffn_mult <= 0 or self.sigma_data <= 0:
            raise ValueError("fourier_dim must be even, ffn_mult and sigma_data > 0")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if abs(self.token_rate - self.tokens_per_frame * self.frame_rate) > 1e-6:
            raise ValueError(f"token_rate {self.token_rate:g} must be tokens_per_frame ({self.tokens_per_frame}) "
                             f"x frame_rate ({self.frame_rate:g})")

    @property
    def ffn_hidden(self) -> int:
        return max(16, round(self.ffn_mult * self.width / 16) * 16)


def segment_layout(frames: int, segment: int, offset: int = 0) -> tuple[int, int, int]:
    """(front padding, back padding, number of segments) that cut ``frames`` into segments whose
    first boundary sits ``offset`` frames in (0: at the start)."""
    front = (segment - offset) % segment if offset else 0
    n = math.ceil((frames + front) / segment)
    return front, n * segment - frames - front, n


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean over ``dim`` of x counting only ``valid`` (bool, x's shape without the last) entries."""
    if valid is None:
        return x.mean(dim)
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(dim) / w.sum(dim).clamp_min(1.0)


class PathLayer(nn.Module):
    """Pre-norm layer of either path: self-attention (rotary), cross-attention to tokens, SwiGLU;
    the noise level modulates the self-attention and feed-forward (shift, scale, gate: adaLN-zero)."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out1 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.q2 = nn.Linear(width, width, bias=False)
        self.kv2 = nn.Linear(width, 2 * width, bias=False)
        self.out2 = nn.Linear(width, width)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        self.ff_in = nn.Linear(width, 2 * hidden)
        self.ff_out = nn.Linear(hidden, width)
        self.mod = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.mod.weight)  # adaLN-zero: every gate starts at 0, the layer at the identity
        nn.init.zeros_(self.mod.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, -1)

    def delta(self, h: torch.Tensor, cond: torch.Tensor, rope: torch.Tensor, keys: torch.Tensor,
              key_mask: torch.Tensor | None = None, self_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's update of h (B', L, W): its output minus h.  ``cond`` (B', L, W) is the noise
        embedding, ``keys`` (B', S, W) the token features, masks bool (B', L) / (B', S), True = real."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(F.silu(cond)).chunk(6, dim=-1)
        x = h
        a = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self._heads(self.qkv(a)).chunk(3, dim=-1)
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        mask = None if self_mask is None else self_mask[:, None, None, :]
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        x = x + gate1 * self.out1(att.transpose(1, 2).flatten(2))
        q2 = self._heads(self.q2(self.norm2(x))).transpose(1, 2)
        k2, v2 = (t.transpose(1, 2) for t in self._heads(self.kv2(keys)).chunk(2, dim=-1))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        x = x + self.out2(F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask).transpose(1, 2).flatten(2))
        f = self.norm3(x) * (1 + scale2) + shift2
        value, g = self.ff_in(f).chunk(2, dim=-1)
        x = x + gate2 * self.ff_out(value * F.silu(g))
        return x - h


@register_model("dpd", DPDConfig)
class DualPathDiffusion(nn.Module):
    """Dual-path diffusion over latents (B, D, T) conditioned on time-aligned coarse tokens (B, K, T * r)."""

    def __init__(self, config: DPDConfig) -> None:
        super().__init__()
        self.config = c = config
        w = c.width
        self.gradient_checkpointing = False
        self.proj_in = nn.Linear(c.latent_dim + (c.latent_dim + 1 if c.inpainting else 0), w)
        # one table of K blocks of N + 1 rows (row N of a block: "no token"), summed over K
        self.embed = nn.Embedding(c.num_codebooks * (c.codebook_size + 1), w)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.register_buffer("embed_offsets", torch.arange(c.num_codebooks).mul(c.codebook_size + 1)[None, :, None],
                             persistent=False)
        self.token_in = nn.Linear(c.tokens_per_frame * w, w)  # a latent frame's own token frames -> its input
        self.noise_embed = FourierFeatures(c.fourier_dim, w)
        self.fine = nn.ModuleList(PathLayer(w, c.heads, c.ffn_hidden) for _ in range(c.depth))
        self.coarse = nn.ModuleList(PathLayer(w, c.heads, c.ffn_hidden) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, c.latent_dim)
        nn.init.zeros_(self.proj_out.weight)  # the untrained net predicts 0
        nn.init.zeros_(self.proj_out.bias)

    @property
    def null_token(self) -> int:
        return self.config.codebook_size

    def null_tokens(self, batch: int, frames: int, device: torch.device | str | None = None) -> torch.Tensor:
        """All "no token": the unconditional input (B, K, frames * r)."""
        c = self.config
        return torch.full((batch, c.num_codebooks, frames * c.tokens_per_frame), self.null_token, dtype=torch.long,
                          device=device or self.embed.weight.device)

    def token_features(self, tokens: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor:
        """(B, T * r, W): the summed embeddings of the K codebooks per token frame."""
        c = self.config
        want = frames * c.tokens_per_frame
        if tokens is None:
            tokens = self.null_tokens(batch, frames)
        if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[1] != c.num_codebooks or tokens.shape[2] != want:
            raise ValueError(f"tokens must be (B={batch}, K={c.num_codebooks}, {want}) for {frames} latent frames, "
                             f"got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > c.codebook_size):
            raise ValueError(f"token ids must be in [0, {c.codebook_size}] ({c.codebook_size}: no token)")
        return self.embed(tokens.long() + self.embed_offsets).sum(dim=1)

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        tokens: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_latents: torch.Tensor | None = None,
        segment: int | None = None,
    ) -> torch.Tensor:
        """x (B, D, T), noise_level (B,) or (B, T), tokens (B, K, T * r) -> (B, D, T).

        ``segment`` overrides the configured segment length (the model is the same network at
        any segment length; the tests use 1 and T).  ``inpaint_mask`` (B, 1, T) is 1 where
        ``inpaint_latents`` are known."""
        c = self.config
        b, d, t = x.shape
        if d != c.latent_dim:
            raise ValueError(f"latents have {d} channels, the model expects {c.latent_dim}")
        m = min(segment or c.segment, t)
        if m < 1:
            raise ValueError(f"segment must be >= 1, got {m}")
        dev, w, r = x.device, c.width, c.tokens_per_frame
        h = x.transpose(1, 2)
        if c.inpainting:
            keep = torch.zeros(b, 1, t, device=dev, dtype=x.dtype) if inpaint_mask is None else inpaint_mask.to(x.dtype).expand(b, 1, t)
            known = torch.zeros_like(x) if inpaint_latents is None else inpaint_latents * keep
            h = torch.cat([h, keep.transpose(1, 2), known.transpose(1, 2)], dim=-1)
        level = noise_level.to(dev).float()
        level = level[:, None].expand(b, t) if level.dim() <= 1 else level
        if level.shape != (b, t):
            raise ValueError(f"noise_level must be (B,) or (B={b}, T={t}), got {tuple(noise_level.shape)}")
        cond = self.noise_embed(level.reshape(-1)).view(b, t, w)
        tok = self.token_features(tokens, b, t)  # (B, T r, W)
        h = self.proj_in(h) + self.token_in(tok.reshape(b, t, r * w))
        for i, (fine, coarse) in enumerate(zip(self.fine, self.coarse)):
            offset = m // 2 if c.shift and i % 2 and t > m else 0
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(self._pair, fine, coarse, h, cond, tok, m, offset, use_reentrant=False)
            else:
                h = self._pair(fine, coarse, h, cond, tok, m, offset)
        return self.proj_out(self.norm_out(h)).transpose(1, 2)

    def _pair(self, fine: PathLayer, coarse: PathLayer, h: torch.Tensor, cond: torch.Tensor, tok: torch.Tensor,
              m: int, offset: int) -> torch.Tensor:
        b, t, w = h.shape
        r, dev = self.config.tokens_per_frame, h.device
        head_dim, base = w // self.config.heads, self.config.rope_base
        # fine path: inside segments (boundaries shifted by `offset`)
        front, back, n = segment_layout(t, m, offset)
        valid = None
        if front or back:
            valid = F.pad(torch.ones(b, t, dtype=torch.bool, device=dev), (front, back), value=False)
        pad = lambda z: F.pad(z, (0, 0, front * z.shape[1] // t, back * z.shape[1] // t))
        hs, cs, ks = pad(h).reshape(b * n, m, w), pad(cond).reshape(b * n, m, w), pad(tok).reshape(b * n, m * r, w)
        self_mask = None if valid is None else valid.reshape(b * n, m)
        key_mask = None if valid is None else valid.repeat_interleave(r, dim=1).reshape(b * n, m * r)
        update = fine.delta(hs, cs, rotary_frequencies(m, head_dim, base, dev), ks, key_mask, self_mask)
        h = h + update.reshape(b, n * m, w)[:, front : front + t]
        # coarse path: across segments (unshifted), one pooled vector per segment
        _, back, n = segment_layout(t, m)
        valid = None if not back else F.pad(torch.ones(b, t, dtype=torch.bool, device=dev), (0, back), value=False).view(b, n, m)
        seg = lambda z, k=1: F.pad(z, (0, 0, 0, back * k)).view(b, n, m * k, w)
        pooled = masked_mean(seg(h), valid, 2)
        pooled_cond = masked_mean(seg(cond), valid, 2)
        pooled_tok = masked_mean(seg(tok, r), None if valid is None else valid.repeat_interleave(r, dim=2), 2)
        update = coarse.delta(pooled, pooled_cond, rotary_frequencies(n, head_dim, base, dev), pooled_tok)
        return h + update.repeat_interleave(m, dim=1)[:, :t]
