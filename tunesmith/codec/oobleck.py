"""Stable Audio's "Oobleck" VAE, ported: 44.1 kHz stereo <-> 64 latent channels at 44100 / 2048 frames/s.

A stack of strided convolutions with Snake activations (Ziyin et al. 2020: x + sin^2(a x) / b,
per channel, a and b stored as logarithms) and dilated residual units (dilations 1, 3, 9), as in
the DAC / Stable Audio autoencoders; the decoder mirrors the encoder with transposed
convolutions.  Public weights (diffusers' ``AutoencoderOobleck``) load into it through
:mod:`tunesmith.hub.stable_audio_keys`: the module names are theirs, and their weight
normalisation (w = g v / |v|) is folded into plain weights there, since at inference it is a
constant.  Ported rather than wrapped so that a Stable Audio directory runs without diffusers.

It has what :class:`tunesmith.diffusion.generator.LatentCodec` asks of a VAE:
``sample_rate``, ``channels``, ``latent_dim``, ``frame_rate``, ``encode`` and ``decode``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.checkpoint import register_model


@dataclass
class OobleckConfig:
    sample_rate: int = 44100
    channels: int = 2
    latent_dim: int = 64
    encoder_dim: int = 128  # also the encoder's output channels: mean and scale, latent_dim each
    decoder_dim: int = 128
    strides: tuple[int, ...] = (2, 4, 4, 8, 8)  # encoder downsampling; the decoder upsamples in reverse
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)  # channel multiples of the stages

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.channels < 1 or self.latent_dim < 1:
            raise ValueError("need sample_rate >= 1000, channels >= 1 and latent_dim >= 1")
        if self.encoder_dim != 2 * self.latent_dim:
            raise ValueError(f"encoder_dim ({self.encoder_dim}) must be 2 * latent_dim ({self.latent_dim}): mean and scale")
        if len(self.strides) != len(self.multiples) or not self.strides or min(self.strides) < 1:
            raise ValueError("strides and multiples need one entry per stage, strides >= 1")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)


class Snake(nn.Module):
    """x + sin^2(a x) / b per channel, with a = exp(alpha), b = exp(beta)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, (self.beta.exp() + 1e-9).reciprocal(), torch.sin(self.alpha.exp() * x).square())


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.res_unit1 = ResidualUnit(channels_in, 1)
        self.res_unit2 = ResidualUnit(channels_in, 3)
        self.res_unit3 = ResidualUnit(channels_in, 9)
        self.snake1 = Snake(channels_in)
        self.conv1 = nn.Conv1d(channels_in, channels_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


class DecoderBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels_in)
        self.conv_t1 = nn.ConvTranspose1d(channels_in, channels_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
        self.res_unit1 = ResidualUnit(channels_out, 1)
        self.res_unit2 = ResidualUnit(channels_out, 3)
        self.res_unit3 = ResidualUnit(channels_out, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_unit3(self.res_unit2(self.res_unit1(self.conv_t1(self.snake1(x)))))


class Encoder(nn.Module):
    def __init__(self, c: OobleckConfig) -> None:
        super().__init__()
        widths = [c.encoder_dim * m for m in (1, *c.multiples)]
        self.conv1 = nn.Conv1d(c.channels, c.encoder_dim, 7, padding=3)
        self.block = nn.ModuleList(EncoderBlock(widths[i], widths[i + 1], s) for i, s in enumerate(c.strides))
        self.snake1 = Snake(widths[-1])
        self.conv2 = nn.Conv1d(widths[-1], c.encoder_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class Decoder(nn.Module):
    def __init__(self, c: OobleckConfig) -> None:
        super().__init__()
        widths = [c.decoder_dim * m for m in (1, *c.multiples)][::-1]  # widest first
        self.conv1 = nn.Conv1d(c.latent_dim, widths[0], 7, padding=3)
        self.block = nn.ModuleList(DecoderBlock(widths[i], widths[i + 1], s) for i, s in enumerate(reversed(c.strides)))
        self.snake1 = Snake(c.decoder_dim)
        self.conv2 = nn.Conv1d(c.decoder_dim, c.channels, 7, padding=3, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


@register_model("codec-oobleck", OobleckConfig)
class OobleckVAE(nn.Module):
    """Audio (B, C, T) <-> latents (B, latent_dim, T / hop): the posterior mean, and its decoder."""

    def __init__(self, config: OobleckConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def samples_per_frame(self) -> int:
        return self.config.hop

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.hop

    def posterior(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (softplus of the scale, + 1e-4) of q(z | audio), each (B, D, F)."""
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"expected audio of shape (batch, {self.channels}, samples), got {tuple(wav.shape)}")
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        extra = -wav.shape[-1] % self.config.hop  # whole frames: the strided stack needs them
        mean, scale = self.encoder(F.pad(wav, (0, extra))).chunk(2, dim=1)
        return mean, F.softplus(scale) + 1e-4

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, C, T) audio -> (B, D, ceil(T / hop)) posterior means."""
        return self.posterior(wav)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, F) latents -> (B, C, F * hop) audio."""
        if latents.dim() != 3 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (batch, {self.latent_dim}, frames), got {tuple(latents.shape)}")
        return self.decoder(latents)
