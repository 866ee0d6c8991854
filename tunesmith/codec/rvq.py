"""Residual vector quantization with factorized, L2-normalised codes and dead-code restart.

Each of the K stages quantizes what the previous ones left over (SoundStream,
Zeghidour et al. 2021).  Following the improved RVQGAN (DAC, Kumar et al. 2023),
every stage projects its input to a low-dimensional space (e.g. 8) and looks codes
up by cosine similarity there: low-dimensional normalised codes keep nearly every
entry in use without EMA updates or k-means.  Entries that still go unused for a
while are restarted on random encoder outputs from the current batch (as in
Jukebox / EnCodec).  Quantizer dropout trains the first k stages alone for random
k so one model decodes at every bitrate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# pure functions


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar codebook row for each row of ``z``: (N, d), (M, d) -> (N,)."""
    return (F.normalize(z, dim=-1) @ F.normalize(codebook, dim=-1).t()).argmax(dim=-1)


def codebook_losses(z_e: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item (commitment, codebook) losses of VQ-VAE (van den Oord et al. 2017), (B, F, d) -> (B,).

    Commitment pulls the encoder towards its code; the codebook loss pulls the code
    towards the encoder output.  Each side sees the other as a constant.
    """
    commitment = (z_e - z_q.detach()).square().mean(dim=(1, 2))
    codebook = (z_q - z_e.detach()).square().mean(dim=(1, 2))
    return commitment, codebook


def code_usage(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each entry was chosen: any-shape int tensor -> (codebook_size,) counts."""
    return torch.bincount(indices.reshape(-1), minlength=codebook_size).float()


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a usage histogram: the effective number of codes in use."""
    p = counts / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def dropout_num_codebooks(batch: int, num_codebooks: int, probability: float, device: torch.device) -> torch.Tensor:
    """Codebooks to use per item: all of them, or with ``probability`` a uniform 1..K (SoundStream)."""
    n = torch.full((batch,), num_codebooks, device=device)
    if probability > 0:
        drop = torch.rand(batch, device=device) < probability
        n = torch.where(drop, torch.randint(1, num_codebooks + 1, (batch,), device=device), n)
    return n


# ---------------------------------------------------------------------------
# modules


class FactorizedVQ(nn.Module):
    """One RVQ stage: project to ``codebook_dim``, pick the nearest code, project back."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.in_proj = nn.Linear(dim, codebook_dim)
        self.out_proj = nn.Linear(codebook_dim, dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        # Training forwards since each code was last chosen; drives dead-code restart.
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))

    def lookup(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, dim) -> low-dim encoder output z_e (B, F, d) and code indices (B, F)."""
        z_e = self.in_proj(residual)
        indices = nearest_code(z_e.reshape(-1, z_e.shape[-1]), self.codebook.weight).reshape(z_e.shape[:-1])
        return z_e, indices

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, F) indices -> (B, F, dim) contribution to the latent."""
        return self.out_proj(self.codebook(indices))

    @torch.no_grad()
    def restart_dead_codes(self, z_e: torch.Tensor, indices: torch.Tensor, after: int) -> int:
        """Move codes idle for ``after`` training forwards onto random current encoder outputs."""
        used = code_usage(indices, self.codebook_size) > 0
        self.idle_steps.add_(1).masked_fill_(used, 0)
        dead = torch.nonzero(self.idle_steps >= after).flatten()
        if dead.numel() == 0:
            return 0
        candidates = z_e.reshape(-1, z_e.shape[-1]).float()
        pick = torch.randint(0, candidates.shape[0], (dead.numel(),), device=z_e.device)
        self.codebook.weight.data[dead] = candidates[pick].to(self.codebook.weight.dtype)
        self.idle_steps[dead] = 0
        return int(dead.numel())


class ResidualVQ(nn.Module):
    """K factorized VQ stages applied to successive residuals."""

    def __init__(
        self,
        dim: int,
        num_codebooks: int,
        codebook_size: int,
        codebook_dim: int,
        quantizer_dropout: float,
        restart_after: int,
    ) -> None:
        super().__init__()
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.quantizer_dropout, self.restart_after = quantizer_dropout, restart_after
        self.stages = nn.ModuleList(FactorizedVQ(dim, codebook_size, codebook_dim) for _ in range(num_codebooks))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantize (B, dim, F) latents for training.

        Returns the quantized latents (straight-through gradients), the indices
        (B, K, F), and losses/statistics: ``commitment`` and ``codebook`` (means over
        the stages each item used), ``usage`` (K, N) counts, ``restarted`` codes.
        """
        b = z.shape[0]
        n_used = (
            dropout_num_codebooks(b, self.num_codebooks, self.quantizer_dropout, z.device)
            if self.training
            else torch.full((b,), self.num_codebooks, device=z.device)
        )
        residual = z.transpose(1, 2)
        out = torch.zeros_like(residual)
        commitment = torch.zeros(b, device=z.device)
        codebook = torch.zeros(b, device=z.device)
        all_indices, usage, restarted = [], [], 0
        for k, stage in enumerate(self.stages):
            z_e, indices = stage.lookup(residual)
            z_q = stage.codebook(indices)
            commit_k, codebook_k = codebook_losses(z_e, z_q)
            active = (k < n_used).float()
            commitment = commitment + commit_k * active
            codebook = codebook + codebook_k * active
            z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
            contribution = stage.out_proj(z_q)
            out = out + contribution * active[:, None, None]
            residual = residual - contribution
            all_indices.append(indices)
            usage.append(code_usage(indices, self.codebook_size))
            if self.training and self.restart_after > 0:
                restarted += stage.restart_dead_codes(z_e, indices, self.restart_after)
        stats = {
            "commitment": (commitment / n_used).mean(),
            "codebook": (codebook / n_used).mean(),
            "usage": torch.stack(usage),
            "restarted": torch.tensor(float(restarted)),
        }
        return out.transpose(1, 2), torch.stack(all_indices, dim=1), stats

    def encode(self, z: torch.Tensor, num_codebooks: int | None = None) -> torch.Tensor:
        """(B, dim, F) latents -> (B, k, F) int64 codes of the first ``k`` stages."""
        k = self._check_k(num_codebooks)
        residual = z.transpose(1, 2)
        codes = []
        for stage in self.stages[:k]:
            _, indices = stage.lookup(residual)
            residual = residual - stage.decode(indices)
            codes.append(indices)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, k, F) codes (k <= K: any prefix of the stages) -> (B, dim, F) latents."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, codebooks, frames), got shape {tuple(codes.shape)}")
        k = self._check_k(codes.shape[1])
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        out = sum(stage.decode(codes[:, i]) for i, stage in enumerate(self.stages[:k]))
        return out.transpose(1, 2)  # type: ignore[union-attr]

    def _check_k(self, k: int | None) -> int:
        if k is None:
            return self.num_codebooks
        if not 1 <= k <= self.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{self.num_codebooks}, got {k}")
        return k
