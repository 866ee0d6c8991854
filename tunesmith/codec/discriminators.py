"""Discriminators for the codec GAN: multi-resolution complex-STFT and multi-period.

- Multi-resolution STFT discriminator (as in DAC/EnCodec): 2-D convs over the real
  and imaginary parts of an STFT at several resolutions.  Seeing the complex
  spectrum, it also judges phase — the part of an inverse-STFT decoder that the
  magnitude losses do not constrain.
- Multi-period discriminator (HiFi-GAN, Kong et al. 2020): the waveform folded into
  (T / p, p) for a few prime periods p, so periodic structure is judged directly.

Both are kept narrow: on a CPU the discriminator must not cost more than the codec.
Each returns a list of (logits, features) — one entry per sub-discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DiscriminatorConfig:
    stft_resolutions: tuple[tuple[int, int], ...] = ((2048, 512), (1024, 256), (512, 128))
    stft_channels: int = 32
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (16, 64, 128)

    def __post_init__(self) -> None:
        if not self.stft_resolutions and not self.periods:
            raise ValueError("a discriminator needs at least one STFT resolution or one period")


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


class STFTDiscriminator(nn.Module):
    """2-D convs over the complex spectrogram of one resolution; strides shrink the frequency axis."""

    def __init__(self, channels_in: int, n_fft: int, hop: int, width: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = width
        # The first conv already strides 4x along frequency: full-resolution 2-D convs over
        # 1025 bins would cost several times the codec itself on a CPU.
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(2 * channels_in, c, (3, 9), stride=(1, 4), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = wav.shape
        spec = torch.stft(wav.reshape(b * c, t).float(), self.n_fft, self.hop, window=self.window,
                          center=True, return_complex=True)
        x = torch.view_as_real(spec)  # (B*C, freq, frames, 2)
        x = x.reshape(b, c, *x.shape[1:]).permute(0, 1, 4, 3, 2).reshape(b, 2 * c, spec.shape[2], spec.shape[1])
        features = []
        for conv in self.convs:  # x: (B, 2C, time, freq)
            x = _leaky(conv(x))
            features.append(x)
        return self.out(x), features


class PeriodDiscriminator(nn.Module):
    """Convs over the waveform folded to (T / period, period) (HiFi-GAN)."""

    def __init__(self, channels_in: int, period: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.period = period
        layers, c_prev = [], channels_in
        for width in widths:
            layers.append(weight_norm(nn.Conv2d(c_prev, width, (5, 1), stride=(3, 1), padding=(2, 0))))
            c_prev = width
        layers.append(weight_norm(nn.Conv2d(c_prev, c_prev, (5, 1), padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(c_prev, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = wav.shape
        pad = -t % self.period
        x = F.pad(wav, (0, pad), mode="reflect") if pad else wav
        x = x.reshape(b, c, -1, self.period)
        features = []
        for conv in self.convs:
            x = _leaky(conv(x))
            features.append(x)
        return self.out(x), features


class Discriminator(nn.Module):
    """All sub-discriminators; ``forward`` returns their (logits, features) in a list."""

    def __init__(self, config: DiscriminatorConfig, channels: int = 1) -> None:
        super().__init__()
        self.config = config
        self.stft = nn.ModuleList(
            STFTDiscriminator(channels, n, h, config.stft_channels) for n, h in config.stft_resolutions
        )
        self.period = nn.ModuleList(PeriodDiscriminator(channels, p, config.period_channels) for p in config.periods)

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in [*self.stft, *self.period]]
