"""Melody conditioning: the dominant pitch class of each frame of a reference recording.

MusicGen (sec. 2.2) conditions on the chromagram of a reference, reduced to its
strongest bin per frame: a one-hot "information bottleneck" that carries the melody
line and little else, so the model cannot copy the reference's timbre.  Frames are
aligned to the codec's token rate, so frame f of the melody sits next to token
frame f.  Silent frames get an all-zero column, the same as "no melody".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.spectral import chromagram, stft_magnitude


def dominant_chroma(
    wav: torch.Tensor,
    sample_rate: int,
    frame_rate: float,
    num_frames: int | None = None,
    *,
    n_fft: int | None = None,
    silence_db: float = -60.0,
) -> torch.Tensor:
    """(B, C, T) or (C, T) audio -> (B, 12, F) float one-hot of the dominant chroma bin per frame.

    ``F`` is ``num_frames`` (padded with zero columns or cut) or the audio's length at
    ``frame_rate``.  Frames more than ``-silence_db`` dB below the loudest frame are zero.
    """
    if wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3 or wav.shape[-1] == 0:
        raise ValueError(f"melody audio must be (B, C, T) or (C, T) and not empty, got {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError("melody audio contains NaN or infinite samples")
    mono = wav.float().mean(dim=1)  # (B, T)
    hop = max(1, round(sample_rate / frame_rate))
    n_fft = n_fft or (4096 if sample_rate >= 22050 else 2048)
    chroma = chromagram(mono, sample_rate, n_fft=n_fft, hop=hop)  # (B, 12, frames)
    energy = stft_magnitude(mono, n_fft, hop, power=2.0).sum(dim=-2)  # (B, frames)
    loudest = energy.amax(dim=-1, keepdim=True).clamp_min(1e-20)
    audible = 10 * torch.log10(energy.clamp_min(1e-20) / loudest) > silence_db
    onehot = F.one_hot(chroma.argmax(dim=1), chroma.shape[1]).transpose(1, 2).float()
    onehot = onehot * audible[:, None, :].float()
    # the STFT is centred: frame i is at sample i * hop; keep the frames that match token frames
    total = num_frames if num_frames is not None else round(mono.shape[-1] / sample_rate * frame_rate)
    times = torch.arange(total) / frame_rate
    index = torch.round(times * sample_rate / hop).long()
    inside = index < onehot.shape[-1]
    out = torch.zeros(onehot.shape[0], onehot.shape[1], total)
    out[..., inside] = onehot[..., index[inside]]
    return out
