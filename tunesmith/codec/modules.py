"""Encoder and decoder that work at frame rate: ConvNeXt blocks between an STFT and an inverse STFT.

Why this shape: on 2 CPU cores a waveform-rate decoder (stacks of transposed
convolutions, as in EnCodec or DAC) spends almost all its time at 24,000 steps/s.
Here every layer runs at 100 frames/s or less and the inverse FFT does the
upsampling (Vocos, Siuzdak 2023), which is what makes training in hours and decoding
far faster than real time possible on a CPU.

    encoder: log|STFT| (hop 240) -> embed -> ConvNeXt x d0 -> /s -> ConvNeXt x d1 ... -> latent
    decoder: latent -> embed -> ConvNeXt x d0 -> *s -> ConvNeXt x d1 ... -> (log|X|, phase) -> iSTFT

Activations are kept frames-first (B, F, D) inside: see :func:`depthwise_conv`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.spectral import griffin_lim, griffin_lim_phase, integrated_phase, istft_same, stft_same

# Spectral parameters per bin that each way of getting the phase needs (see Decoder).
PHASE_OUTPUTS = {"griffin-lim": 1, "direct": 2, "integrated": 3}


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel conv over time of (B, F, D) activations, kept in that layout.

    Run as a 2-D conv on a channels-last view: on CPU this is several times faster
    (forward plus backward) than ``conv1d(groups=D)`` on (B, D, F) and needs no copies.
    """
    k = weight.shape[-1]
    y = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight, bias, padding=(0, k // 2), groups=x.shape[-1])
    return y.squeeze(2).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (time context) -> per-frame MLP, residual with layer scale (Liu et al. 2022).

    Activations are (B, F, D): frames first, so the norm and the MLP act on contiguous rows.
    """

    def __init__(self, dim: int, mlp_ratio: float, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.dw_weight = nn.Parameter(torch.randn(dim, 1, 1, kernel_size) / kernel_size**0.5)
        self.dw_bias = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(depthwise_conv(x, self.dw_weight, self.dw_bias))
        return x + self.gamma * self.fc2(F.gelu(self.fc1(h)))


class Stage(nn.Module):
    """``depth`` ConvNeXt blocks at one frame rate, optionally gradient-checkpointed."""

    def __init__(self, dim: int, depth: int, mlp_ratio: float, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, mlp_ratio, kernel_size, layer_scale) for _ in range(depth))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class Downsample(nn.Module):
    """Merge every ``stride`` frames into one (patchify): (B, F, D) -> (B, F / stride, D)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(stride * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, d = x.shape
        return self.proj(self.norm(x).reshape(b, f // self.stride, self.stride * d))


class Upsample(nn.Module):
    """Split every frame into ``stride`` frames: (B, F, D) -> (B, F * stride, D)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, stride * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, d = x.shape
        return self.proj(self.norm(x)).reshape(b, f * self.stride, d)


def _layer_scale(num_blocks: int) -> float:
    # Vocos initialises layer scale at 1 / num_layers so the deep stack starts close to identity.
    return 1.0 / max(num_blocks, 1)


class Encoder(nn.Module):
    """(B, C, T) audio -> (B, out_dim, T / (hop * prod(strides))) features."""

    def __init__(
        self,
        channels: int,
        n_fft: int,
        hop: int,
        dim: int,
        depths: tuple[int, ...],
        strides: tuple[int, ...],
        out_dim: int,
        mlp_ratio: float,
        kernel_size: int,
        linear_path: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != len(strides) + 1:
            raise ValueError(f"encoder needs one more stage than strides: depths={depths}, strides={strides}")
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        scale = _layer_scale(sum(depths))
        self.embed = nn.Linear(channels * bins, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-6)
        self.stages = nn.ModuleList(Stage(dim, d, mlp_ratio, kernel_size, scale) for d in depths)
        self.downsamples = nn.ModuleList(Downsample(dim, s) for s in strides)
        self.out_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, out_dim)
        self.frames_per_latent = math.prod(strides)
        # The linear path: each latent frame is a learned linear transform of the log spectra
        # it covers (a learned KLT), and the convolutional stack, zero at start, refines it.
        self.linear = nn.Linear(self.frames_per_latent * channels * bins, out_dim) if linear_path else None
        if self.linear is not None:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-magnitude spectrogram of every channel, stacked per frame: (B, T / hop, C * bins)."""
        b, c, t = wav.shape
        spec = stft_same(wav.reshape(b * c, t), self.n_fft, self.hop)
        logmag = torch.log(spec.abs().clamp_min(1e-5))
        return logmag.reshape(b, c * logmag.shape[1], logmag.shape[2]).transpose(1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        features = self.features(wav)
        x = self.embed_norm(self.embed(features))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            x = stage(x)
        out = self.out(self.out_norm(x))
        if self.linear is not None:
            b, f, d = features.shape
            out = out + self.linear(features.reshape(b, f // self.frames_per_latent, self.frames_per_latent * d))
        return out.transpose(1, 2)


class Decoder(nn.Module):
    """(B, in_dim, F) latents -> (B, C, F * prod(strides) * hop) audio through an inverse STFT.

    Three ways to get the phase the inverse STFT needs:

    - ``"griffin-lim"`` (default): the network predicts only the log-magnitude, and the
      phase is retrieved from it by fast Griffin-Lim (:func:`griffin_lim`).  Training is
      then a regression on magnitudes, which learns quickly; a held note keeps its exact
      pitch because the phase comes from the spectrogram's own consistency.
    - ``"direct"``: a log-magnitude and the angle of each frame, as Vocos does.  A
      convolutional decoder repeats its output wherever its input repeats, so a held note
      comes out as a comb at multiples of the frame rate (measured on our first codec).
    - ``"integrated"``: a log-magnitude, a frequency deviation from the bin centre (at most
      ``max_deviation`` bins) and a local angle; the phase is the running sum of the
      frequency (see :func:`integrated_phase`).  It can represent a held note, but trained
      poorly: it could not overfit four clips (mel distance stuck at 1.09 where the other
      forms reach 0.35).  Kept so the first shipped codecs still load.
    """

    def __init__(
        self,
        channels: int,
        n_fft: int,
        hop: int,
        dim: int,
        depths: tuple[int, ...],
        strides: tuple[int, ...],
        in_dim: int,
        mlp_ratio: float,
        kernel_size: int,
        phase: str = "griffin-lim",
        max_deviation: float = 4.0,
        griffin_lim_iters: int = 8,
        linear_path: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != len(strides) + 1:
            raise ValueError(f"decoder needs one more stage than strides: depths={depths}, strides={strides}")
        if phase not in PHASE_OUTPUTS:
            raise ValueError(f"phase must be one of {', '.join(PHASE_OUTPUTS)}, got {phase!r}")
        self.channels, self.n_fft, self.hop = channels, n_fft, hop
        self.phase, self.max_deviation, self.griffin_lim_iters = phase, max_deviation, griffin_lim_iters
        self.bins = n_fft // 2 + 1
        self.outputs = PHASE_OUTPUTS[phase]
        scale = _layer_scale(sum(depths))
        self.embed_weight = nn.Parameter(torch.randn(dim, 1, 1, kernel_size) / kernel_size**0.5)
        self.embed = nn.Linear(in_dim, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-6)
        self.stages = nn.ModuleList(Stage(dim, d, mlp_ratio, kernel_size, scale) for d in depths)
        self.upsamples = nn.ModuleList(Upsample(dim, s) for s in reversed(strides))
        self.out_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, channels * self.outputs * self.bins)
        self.frames_per_latent = math.prod(strides)
        # The linear path (see Encoder): log-magnitudes as a linear function of each latent
        # frame, refined by the convolutional stack, whose head starts at zero.
        self.linear = nn.Linear(in_dim, self.frames_per_latent * channels * self.bins) if linear_path else None
        if self.linear is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def frame_params(self, z: torch.Tensor) -> torch.Tensor:
        """The network part: latents -> (B * C, outputs, bins, STFT frames) spectral parameters."""
        x = self.embed(z.transpose(1, 2))
        x = self.embed_norm(x + depthwise_conv(x, self.embed_weight, None))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.upsamples[i - 1](x)
            x = stage(x)
        h = self.head(self.out_norm(x)).float()  # the iSTFT runs in fp32 even under autocast
        b, frames, _ = h.shape
        h = h.reshape(b, frames, self.channels, self.outputs, self.bins)
        if self.linear is not None:  # (B, latent frames, frames_per_latent * C * bins) -> the log-magnitudes
            lin = self.linear(z.transpose(1, 2)).float().reshape(b, frames, self.channels, 1, self.bins)
            h = torch.cat([h[:, :, :, :1] + lin, h[:, :, :, 1:]], dim=3)
        h = h.permute(0, 2, 3, 4, 1)
        return h.reshape(b * self.channels, self.outputs, self.bins, frames)

    def magnitude(self, params: torch.Tensor) -> torch.Tensor:
        """(B * C, bins, frames) STFT magnitudes: exp of the predicted log-magnitude, clipped against overflow."""
        return torch.exp(params[:, 0].clamp(max=math.log(1e2)))

    def spectrum(self, params: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Spectral parameters -> the complex STFT (B * C, bins, frames) that :meth:`synthesize` inverts."""
        magnitude = self.magnitude(params)
        if self.phase == "griffin-lim":  # differentiable in the magnitude, the retrieved phase held fixed
            return torch.polar(magnitude, griffin_lim_phase(magnitude, self.n_fft, self.hop, self.griffin_lim_iters))
        if self.phase == "integrated":
            deviation = self.max_deviation * torch.tanh(params[:, 1])
            phase, _ = integrated_phase(deviation, params[:, 2], self.n_fft, self.hop, start)
        else:
            phase = params[:, 1]
        return torch.polar(magnitude, phase)

    def synthesize(self, params: torch.Tensor, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Spectral parameters -> (B, C, T) audio, and the accumulated phase per frame (integrated only)."""
        # Magnitude as exp(log-magnitude), clipped against overflow; angles stay unbounded and
        # are wrapped by cos/sin: no discontinuity at +-pi for the network to learn.
        magnitude = self.magnitude(params)
        accumulated = None
        if self.phase == "griffin-lim":
            wav = griffin_lim(magnitude, self.n_fft, self.hop, self.griffin_lim_iters)
            return wav.reshape(-1, self.channels, wav.shape[-1]), None
        if self.phase == "integrated":
            deviation = self.max_deviation * torch.tanh(params[:, 1])
            phase, accumulated = integrated_phase(deviation, params[:, 2], self.n_fft, self.hop, start)
        else:
            phase = params[:, 1]
        wav = istft_same(torch.polar(magnitude, phase), self.n_fft, self.hop)
        return wav.reshape(-1, self.channels, wav.shape[-1]), accumulated

    def accumulated_phase(self, params: torch.Tensor) -> torch.Tensor:
        """Running sum (float64) of the integrated phase advance over the frames of ``params``."""
        deviation = self.max_deviation * torch.tanh(params[:, 1])
        return integrated_phase(deviation, params[:, 2], self.n_fft, self.hop)[1]

    def forward(self, z: torch.Tensor, return_spectrum: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Audio (B, C, T); with ``return_spectrum`` also the complex STFT it was synthesized from."""
        if not return_spectrum:
            return self.synthesize(self.frame_params(z))[0]
        spec = self.spectrum(self.frame_params(z))
        wav = istft_same(spec, self.n_fft, self.hop)
        return wav.reshape(-1, self.channels, wav.shape[-1]), spec


def receptive_field_frames(depths: tuple[int, ...], kernel_size: int, n_fft: int, hop: int) -> int:
    """An upper bound on the latent frames of context, each side, that one output frame sees.

    Every conv reaches ``kernel_size // 2`` frames at its own rate, which is at most as
    many latent frames; the STFT window adds ``n_fft / hop / 2`` STFT frames.  Chunked
    encoding/decoding with at least this much overlap equals the unchunked result.
    """
    convs = sum(depths) + 1  # the blocks plus the embedding conv
    return convs * (kernel_size // 2) + math.ceil(n_fft / hop / 2) + len(depths)
