"""The two codecs: RVQ tokens for the token LM and VAE latents for diffusion.

Both share the frame-rate encoder/decoder of :mod:`tunesmith.codec.modules`; they
differ only in the bottleneck between them.  Contract (DESIGN.md): audio float32
(B, C, T) in [-1, 1], tokens int64 (B, K, F), latents float (B, D, F).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from tunesmith.checkpoint import register_model
from tunesmith.codec.gaussian import sample_gaussian, split_gaussian
from tunesmith.codec.modules import Decoder, Encoder, receptive_field_frames
from tunesmith.spectral import griffin_lim
from tunesmith.codec.rvq import ResidualVQ


@dataclass
class NetConfig:
    """The encoder/decoder shared by both codecs."""

    sample_rate: int = 24000
    channels: int = 1
    n_fft: int = 960  # 40 ms analysis/synthesis window at 24 kHz
    hop: int = 240  # STFT frames at 100/s; strides bring the latent rate down from there
    dim: int = 256
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    strides: tuple[int, ...] = (2,)
    encoder_depths: tuple[int, ...] = (2, 4)
    decoder_depths: tuple[int, ...] = (4, 2)  # first stage at the latent rate
    # How the decoder gets its phase (see modules.Decoder): retrieved from the predicted
    # magnitude by fast Griffin-Lim, predicted per frame (Vocos), or integrated frequency.
    phase: Literal["griffin-lim", "direct", "integrated"] = "griffin-lim"
    # 8 iterations: on corpus clips through the codec, mel distance 0.463 / chroma 0.893 against
    # 0.460 / 0.900 with 16, at two thirds of the decoding time.
    griffin_lim_iters: int = 8
    # A linear path beside the convolutional stacks (modules.Encoder), for the Griffin-Lim
    # decoder: measured, a per-frame linear autoencoder reached mel distance 0.33 in 1,500
    # steps where the stacks alone were at 1.0 after 2,000 (same loss, data and latent size).
    # With a phase-predicting decoder it made training diverge, so it is used with
    # Griffin-Lim only.
    linear_path: bool = True

    def __post_init__(self) -> None:
        if self.sample_rate < 8000 or self.channels < 1:
            raise ValueError(f"need sample_rate >= 8000 and channels >= 1, got {self.sample_rate}, {self.channels}")
        if (self.n_fft - self.hop) % 2 or self.n_fft < self.hop:
            raise ValueError(f"n_fft must be >= hop with an even difference, got {self.n_fft}, {self.hop}")
        for name in ("encoder_depths", "decoder_depths"):
            if len(getattr(self, name)) != len(self.strides) + 1:
                raise ValueError(f"{name} needs len(strides) + 1 = {len(self.strides) + 1} entries")
        if any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be >= 1, got {self.strides}")

    @property
    def uses_linear_path(self) -> bool:
        return self.linear_path and self.phase == "griffin-lim"

    @property
    def samples_per_frame(self) -> int:
        return self.hop * math.prod(self.strides)


@dataclass
class RVQCodecConfig(NetConfig):
    latent_dim: int = 128
    num_codebooks: int = 6
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.5
    restart_after: int = 100  # training forwards a code may stay unused before it is restarted

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("need num_codebooks >= 1 and codebook_size >= 2")
        if not 0 <= self.quantizer_dropout <= 1:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")


@dataclass
class VAEConfig(NetConfig):
    strides: tuple[int, ...] = (2, 2)
    encoder_depths: tuple[int, ...] = (2, 2, 4)
    decoder_depths: tuple[int, ...] = (4, 2, 2)
    latent_dim: int = 32


class _FrameCodec(nn.Module):
    """What both codecs share: shapes, padding, chunked processing of any length."""

    config: NetConfig

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.samples_per_frame

    @property
    def context_frames(self) -> int:
        """Overlap that makes chunked processing equal to processing the whole (see modules)."""
        c = self.config
        depths = max(c.encoder_depths, c.decoder_depths, key=sum)
        return receptive_field_frames(depths, c.kernel_size, c.n_fft, c.hop)

    @property
    def gradient_checkpointing(self) -> bool:
        return any(s.gradient_checkpointing for s in self._stages())

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        for s in self._stages():
            s.gradient_checkpointing = value

    def _stages(self) -> list[nn.Module]:
        return [*self.encoder.stages, *self.decoder.stages]  # type: ignore[attr-defined]

    def _prepare(self, wav: torch.Tensor) -> torch.Tensor:
        """Check (B, C, T) audio and zero-pad T up to a whole number of frames."""
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"expected audio of shape (batch, {self.channels}, samples), got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise ValueError("audio is empty")
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        extra = -wav.shape[-1] % self.samples_per_frame
        return torch.nn.functional.pad(wav, (0, extra)) if extra else wav

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.samples_per_frame)

    # -- chunked processing ------------------------------------------------

    def _encode_chunked(self, wav: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                        chunk_seconds: float) -> torch.Tensor:
        wav = self._prepare(wav)
        spf, ctx = self.samples_per_frame, self.context_frames
        frames = wav.shape[-1] // spf
        chunk = max(1, int(chunk_seconds * self.frame_rate))
        pieces = []
        for start in range(0, frames, chunk):
            end = min(frames, start + chunk)
            lo, hi = max(0, start - ctx), min(frames, end + ctx)
            out = encode(wav[..., lo * spf : hi * spf])
            pieces.append(out[..., start - lo : end - lo])
        return torch.cat(pieces, dim=-1)

    def _decode_chunked(self, frames_in: torch.Tensor, to_latents: Callable[[torch.Tensor], torch.Tensor],
                        chunk_seconds: float) -> torch.Tensor:
        """Decode overlapping chunks; the integrated phase is carried from chunk to chunk.

        A Griffin-Lim decoder computes magnitudes chunk by chunk and retrieves the phase
        over the whole (a 10-minute mono clip is 60,000 frames x 481 bins: about 120 MB).

        The phase at STFT frame s is the running sum of the frequencies of all frames
        up to s.  A chunk starting at ``lo`` (context) and kept from ``start`` is
        synthesized from the sum before ``lo``: the sum before ``start`` carried from the
        previous chunk, minus what this chunk's context frames add.
        """
        spf, ctx = self.samples_per_frame, self.context_frames
        rate = spf // self.config.hop  # STFT frames per latent frame
        frames = frames_in.shape[-1]
        chunk = max(1, int(chunk_seconds * self.frame_rate))
        decoder = self.decoder  # type: ignore[attr-defined]
        if decoder.phase == "griffin-lim":  # magnitudes chunk by chunk, then one phase retrieval
            mags = []
            for start in range(0, frames, chunk):
                end = min(frames, start + chunk)
                lo, hi = max(0, start - ctx), min(frames, end + ctx)
                mag = decoder.magnitude(decoder.frame_params(to_latents(frames_in[..., lo:hi])))
                mags.append(mag[..., (start - lo) * rate : (end - lo) * rate])
            wav = griffin_lim(torch.cat(mags, dim=-1), decoder.n_fft, decoder.hop, decoder.griffin_lim_iters)
            return wav.reshape(-1, self.channels, wav.shape[-1])
        carried = None  # accumulated phase before STFT frame start * rate, float64 (B*C, bins)
        pieces = []
        for start in range(0, frames, chunk):
            end = min(frames, start + chunk)
            lo, hi = max(0, start - ctx), min(frames, end + ctx)
            params = decoder.frame_params(to_latents(frames_in[..., lo:hi]))
            begin = None
            if decoder.phase == "integrated":
                local = decoder.accumulated_phase(params)  # running sum from this chunk's first frame
                begin = torch.zeros_like(local[..., 0]) if carried is None else carried
                if start > lo:
                    begin = begin - local[..., (start - lo) * rate - 1]
                carried = begin + local[..., (end - lo) * rate - 1]
            out, _ = decoder.synthesize(params, begin)
            pieces.append(out[..., (start - lo) * spf : (end - lo) * spf])
        return torch.cat(pieces, dim=-1)


@register_model("codec-rvq", RVQCodecConfig)
class RVQCodec(_FrameCodec):
    """Audio <-> K parallel token streams at ``frame_rate`` (50/s by default)."""

    def __init__(self, config: RVQCodecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.channels, c.n_fft, c.hop, c.dim, c.encoder_depths, c.strides, c.latent_dim,
                               c.mlp_ratio, c.kernel_size, linear_path=c.uses_linear_path)
        self.quantizer = ResidualVQ(c.latent_dim, c.num_codebooks, c.codebook_size, c.codebook_dim,
                                    c.quantizer_dropout, c.restart_after)
        self.decoder = Decoder(c.channels, c.n_fft, c.hop, c.dim, c.decoder_depths, c.strides, c.latent_dim,
                               c.mlp_ratio, c.kernel_size, c.phase, griffin_lim_iters=c.griffin_lim_iters,
                               linear_path=c.uses_linear_path)

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def bitrate(self, num_codebooks: int | None = None) -> float:
        """Bits per second at ``num_codebooks`` (default: all)."""
        k = num_codebooks or self.num_codebooks
        return self.frame_rate * k * math.log2(self.codebook_size)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: (B, C, T) -> reconstruction (B, C, T'), codes, quantizer losses/stats.

        A Griffin-Lim codec returns no reconstruction; ``stats["magnitude"]`` holds its
        predicted STFT magnitudes (B * C, bins, frames) instead."""
        wav = self._prepare(wav)
        z_q, codes, stats = self.quantizer(self.encoder(wav))
        if self.config.phase == "griffin-lim":  # trained on magnitudes: no waveform needed
            stats["magnitude"] = self.decoder.magnitude(self.decoder.frame_params(z_q))
            return None, codes, stats
        recon, stats["spectrum"] = self.decoder(z_q, return_spectrum=True)
        return recon, codes, stats

    def encode(self, wav: torch.Tensor, num_codebooks: int | None = None) -> torch.Tensor:
        """(B, C, T) audio -> (B, K, ceil(T / samples_per_frame)) int64 tokens."""
        return self.quantizer.encode(self.encoder(self._prepare(wav)), num_codebooks)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, k, F) tokens (the first k <= K codebooks) -> (B, C, F * samples_per_frame) audio."""
        return self.decoder(self.quantizer.decode(tokens.long()))

    @torch.inference_mode()
    def encode_long(self, wav: torch.Tensor, num_codebooks: int | None = None, chunk_seconds: float = 30.0) -> torch.Tensor:
        """:meth:`encode` for any length, in overlapping chunks (memory bounded by the chunk)."""
        return self._encode_chunked(wav, lambda w: self.encode(w, num_codebooks), chunk_seconds)

    @torch.inference_mode()
    def decode_long(self, tokens: torch.Tensor, chunk_seconds: float = 30.0) -> torch.Tensor:
        """:meth:`decode` for any length, in overlapping chunks."""
        return self._decode_chunked(tokens, lambda t: self.quantizer.decode(t.long()), chunk_seconds)


@register_model("codec-vae", VAEConfig)
class VAECodec(_FrameCodec):
    """Audio <-> continuous latents (B, latent_dim, F) at ``frame_rate`` (25/s by default)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.channels, c.n_fft, c.hop, c.dim, c.encoder_depths, c.strides, 2 * c.latent_dim,
                               c.mlp_ratio, c.kernel_size, linear_path=c.uses_linear_path)
        self.decoder = Decoder(c.channels, c.n_fft, c.hop, c.dim, c.decoder_depths, c.strides, c.latent_dim,
                               c.mlp_ratio, c.kernel_size, c.phase, griffin_lim_iters=c.griffin_lim_iters,
                               linear_path=c.uses_linear_path)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def posterior(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | audio), each (B, D, F)."""
        return split_gaussian(self.encoder(self._prepare(wav)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (B, C, T) -> reconstruction, posterior mean and std, decoder's complex STFT
        (a Griffin-Lim codec: no reconstruction, and its predicted magnitudes instead of the STFT)."""
        mean, std = self.posterior(wav)
        z = sample_gaussian(mean, std)
        if self.config.phase == "griffin-lim":  # trained on magnitudes: no waveform needed
            return None, mean, std, self.decoder.magnitude(self.decoder.frame_params(z))
        recon, spectrum = self.decoder(z, return_spectrum=True)
        return recon, mean, std, spectrum

    def encode(self, wav: torch.Tensor, sample: bool = False, seed: int | None = None) -> torch.Tensor:
        """(B, C, T) audio -> (B, D, F) latents: the posterior mean, or a seeded sample."""
        mean, std = self.posterior(wav)
        if not sample:
            return mean
        generator = torch.Generator(device=mean.device).manual_seed(0 if seed is None else seed)
        return sample_gaussian(mean, std, generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, F) latents -> (B, C, F * samples_per_frame) audio."""
        if latents.dim() != 3 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (batch, {self.latent_dim}, frames), got {tuple(latents.shape)}")
        return self.decoder(latents)

    @torch.inference_mode()
    def encode_long(self, wav: torch.Tensor, chunk_seconds: float = 30.0) -> torch.Tensor:
        """Posterior means for any length, in overlapping chunks."""
        return self._encode_chunked(wav, self.encode, chunk_seconds)

    @torch.inference_mode()
    def decode_long(self, latents: torch.Tensor, chunk_seconds: float = 30.0) -> torch.Tensor:
        return self._decode_chunked(latents, lambda z: z, chunk_seconds)
