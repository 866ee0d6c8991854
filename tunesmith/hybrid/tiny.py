"""A tiny, untrained two-stage generator for tests and the benchmark's quick mode.

Real shapes, small widths: a 2-layer coarse LM (either backbone), a 2-pair DPD, the small test
VAE, and a text encoder that hashes words (no model to load), so a run takes seconds.
"""

from __future__ import annotations

import hashlib

import torch

from tunesmith.codec.model import VAECodec, VAEConfig
from tunesmith.hybrid.dpd import DPDConfig, DualPathDiffusion
from tunesmith.hybrid.generator import TwoStageGenerator
from tunesmith.lm.model import LMConfig, TokenLM

TEXT_DIM = 16


class HashTextEncoder:
    """Words -> fixed random vectors (seeded by the word): a text encoder with nothing to load."""

    dim = TEXT_DIM

    def _vector(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        words = [t.split()[:16] or [""] for t in texts]
        longest = max(len(w) for w in words)
        states = torch.zeros(len(texts), longest, self.dim)
        mask = torch.zeros(len(texts), longest, dtype=torch.bool)
        for i, row in enumerate(words):
            for j, word in enumerate(row):
                states[i, j], mask[i, j] = self._vector(word), True
        return states, mask

    def embed(self, texts: list[str]) -> torch.Tensor:
        states, mask = self.encode(texts)
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return torch.nn.functional.normalize(pooled, dim=-1)


def tiny_vae() -> VAECodec:
    return VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8))


def tiny_two_stage(seed: int = 0, *, backbone: str = "transformer", codebooks: int = 1, stack: int = 2,
                   codebook_size: int = 16, segment: int = 8, lm_window: int = 64, steps: int = 4,
                   chunk_seconds: float = 4.0, context_seconds: float = 1.0, dpd: DualPathDiffusion | None = None
                   ) -> TwoStageGenerator:
    """An untrained tiny generator (outputs vary with prompt and seed: the output layers get weights)."""
    torch.manual_seed(seed)
    vae = tiny_vae()
    options = ({"num_layers": 2, "num_heads": 2, "ffn_dim": 0} if backbone == "transformer" else
               {"n_layers": 2, "d_state": 16, "head_dim": 16, "chunk_size": 16, "cross_attention_every": 2,
                "cross_heads": 2})
    lm = TokenLM(LMConfig(num_codebooks=codebooks * stack, codebook_size=codebook_size, dim=32, backbone=backbone,
                          backbone_config=options, pattern="parallel",
                          text_dim=TEXT_DIM, max_text_tokens=16, frame_rate=50.0 / stack, max_frames=lm_window))
    if dpd is None:
        dpd = DualPathDiffusion(DPDConfig(latent_dim=8, width=32, depth=2, heads=2, segment=segment,
                                          num_codebooks=codebooks, codebook_size=codebook_size, fourier_dim=16))
        with torch.no_grad():
            dpd.proj_out.weight.normal_(0, 0.1)
    return TwoStageGenerator(lm.eval(), dpd.eval(), vae.eval(), HashTextEncoder(), codebooks=codebooks, stack=stack,
                             steps=steps, chunk_seconds=chunk_seconds, context_seconds=context_seconds, cfg=1.0)
