"""Spectral features in torch: STFT magnitude, log-mel, chromagram. Shared by losses, CLAP,
melody conditioning and evaluation so that every part measures audio the same way.

Filterbanks come from librosa (computed once per configuration and cached); the
transforms themselves run in torch so they are differentiable and batchable.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=32)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)).float()


@lru_cache(maxsize=32)
def _chroma_basis(sample_rate: int, n_fft: int) -> torch.Tensor:
    import librosa

    return torch.from_numpy(librosa.filters.chroma(sr=sample_rate, n_fft=n_fft)).float()


@lru_cache(maxsize=8)
def _window(n_fft: int, device: str) -> torch.Tensor:
    return torch.hann_window(n_fft, device=device)


def stft_magnitude(wav: torch.Tensor, n_fft: int, hop: int, power: float = 1.0) -> torch.Tensor:
    """|STFT|**power of (..., T) audio -> (..., n_fft // 2 + 1, frames), centred frames."""
    shape = wav.shape
    flat = wav.reshape(-1, shape[-1])
    spec = torch.stft(flat, n_fft, hop, window=_window(n_fft, str(wav.device)), center=True, return_complex=True)
    mag = spec.abs()
    if power != 1.0:
        mag = mag.clamp_min(1e-12) ** power if power < 1 else mag**power
    return mag.reshape(*shape[:-1], *mag.shape[-2:])


def mel_spectrogram(
    wav: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop: int = 256,
    n_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = None,
    power: float = 1.0,
) -> torch.Tensor:
    """Mel-scaled magnitude spectrogram of (..., T) audio -> (..., n_mels, frames)."""
    mag = stft_magnitude(wav, n_fft, hop, power)
    basis = _mel_basis(sample_rate, n_fft, n_mels, fmin, fmax).to(wav.device, mag.dtype)
    return torch.matmul(basis, mag)


def log_mel(wav: torch.Tensor, sample_rate: int, eps: float = 1e-5, **kwargs) -> torch.Tensor:
    """Natural-log mel magnitude spectrogram (what losses, CLAP and metrics compare)."""
    return torch.log(mel_spectrogram(wav, sample_rate, **kwargs).clamp_min(eps))


def chromagram(wav: torch.Tensor, sample_rate: int, n_fft: int = 4096, hop: int = 1024) -> torch.Tensor:
    """12-bin chroma energy of (..., T) audio -> (..., 12, frames), each frame L-inf normalised.

    Power spectrum folded onto pitch classes (librosa's chroma filterbank), as used by
    MusicGen's melody conditioning and by chroma-similarity metrics.
    """
    power = stft_magnitude(wav, n_fft, hop, power=2.0)
    basis = _chroma_basis(sample_rate, n_fft).to(wav.device, power.dtype)
    chroma = torch.matmul(basis, power)
    return chroma / chroma.amax(dim=-2, keepdim=True).clamp_min(1e-8)
