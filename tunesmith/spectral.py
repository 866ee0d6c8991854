"""Spectral analysis and synthesis in torch: the one place audio becomes a spectrogram.

Analysis (STFT magnitude, log-mel, chromagram) is shared by the codec's losses, CLAP,
melody conditioning and evaluation, so every part measures audio the same way.
Filterbanks come from librosa (computed once per configuration and cached); the
transforms run in torch so they are differentiable and batchable.

Synthesis ("same"-padded STFT and inverse STFT, Griffin-Lim): T samples <-> T / hop frames.
The codec works at frame rate and leaves the waveform to an inverse STFT (Vocos,
Siuzdak 2023): the decoder predicts a log-magnitude and a phase per bin and the
inverse FFT plus overlap-add does the upsampling for free.  Both directions pad
by ``(n_fft - hop) / 2`` on each side instead of torch's ``center=True``, so that
exactly ``T / hop`` frames describe ``T`` samples, which makes strided
downsampling and chunked processing line up without off-by-one frames.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F



# The cached tensors are made outside inference mode even when the first caller is inside it: an
# inference tensor, once cached, would break every later caller that wants gradients (DITTO's losses).


@lru_cache(maxsize=32)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    import librosa

    with torch.inference_mode(False):
        return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)).float()


@lru_cache(maxsize=32)
def chroma_basis(sample_rate: int, n_fft: int) -> torch.Tensor:
    import librosa

    with torch.inference_mode(False):
        return torch.from_numpy(librosa.filters.chroma(sr=sample_rate, n_fft=n_fft)).float()


@lru_cache(maxsize=8)
def _window(n_fft: int, device: str) -> torch.Tensor:
    with torch.inference_mode(False):
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
    basis = mel_basis(sample_rate, n_fft, n_mels, fmin, fmax).to(wav.device, mag.dtype)
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
    basis = chroma_basis(sample_rate, n_fft).to(wav.device, power.dtype)
    chroma = torch.matmul(basis, power)
    return chroma / chroma.amax(dim=-2, keepdim=True).clamp_min(1e-8)


# ---------------------------------------------------------------------------
# "same"-padded STFT <-> audio (the codec's synthesis)



def _check(n_fft: int, hop: int) -> None:
    if (n_fft - hop) % 2:
        raise ValueError(f"n_fft - hop must be even for symmetric padding, got n_fft={n_fft}, hop={hop}")


def stft_same(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Complex STFT of (B, T) audio with T % hop == 0 -> (B, n_fft // 2 + 1, T // hop)."""
    _check(n_fft, hop)
    if wav.shape[-1] % hop:
        raise ValueError(f"audio length {wav.shape[-1]} is not a multiple of the hop {hop}")
    pad = (n_fft - hop) // 2
    padded = F.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    # torch returns a transposed view of frame-major memory: .transpose(1, 2) of this is free
    return torch.stft(padded, n_fft, hop, window=window, center=False, return_complex=True)


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Sum (B, F, n_fft) frames placed every ``hop`` samples -> (B, (F - 1) * hop + n_fft).

    With n_fft a multiple of hop, each frame is R = n_fft / hop blocks of hop samples and
    block r of frame f lands on output block f + r: R shifted additions of contiguous
    slices, about 3x faster on CPU than ``F.fold`` (col2im), and differentiable.
    """
    batch, count, n_fft = frames.shape
    if n_fft % hop:
        raise ValueError(f"n_fft must be a multiple of the hop, got n_fft={n_fft}, hop={hop}")
    blocks = n_fft // hop
    parts = frames.reshape(batch, count, blocks, hop)
    out = frames.new_zeros(batch, count + blocks - 1, hop)
    for r in range(blocks):
        out[:, r : r + count] += parts[:, :, r]
    return out.reshape(batch, -1)


def _inverse_envelope(n_fft: int, hop: int, frames: int, window: torch.Tensor) -> torch.Tensor:
    """1 / (summed squared window) over the trimmed output: the least-squares OLA normaliser."""
    pad = (n_fft - hop) // 2
    envelope = _overlap_add(window.square().expand(1, frames, n_fft), hop)[0]
    return 1.0 / envelope[pad : envelope.shape[0] - pad].clamp_min(1e-8)


def _frames_to_audio(frames: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, inverse_envelope: torch.Tensor) -> torch.Tensor:
    """Windowed time-domain frames (B, F, n_fft) -> (B, F * hop) audio (the "same" trim)."""
    pad = (n_fft - hop) // 2
    signal = _overlap_add(frames * window, hop)
    return signal[:, pad : signal.shape[1] - pad] * inverse_envelope


def istft_same(spec: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Inverse of :func:`stft_same`: (B, n_fft // 2 + 1, F) complex -> (B, F * hop) audio.

    Windowed overlap-add normalised by the summed squared window (the least-squares
    inverse, Griffin & Lim 1984).  Written with ``irfft`` and our own overlap-add rather
    than ``torch.istft``, which insists on ``center`` padding.
    """
    _check(n_fft, hop)
    window = torch.hann_window(n_fft, device=spec.device, dtype=spec.real.dtype)
    frames = torch.fft.irfft(spec.transpose(1, 2), n=n_fft, dim=-1, norm="backward")
    return _frames_to_audio(frames, n_fft, hop, window, _inverse_envelope(n_fft, hop, spec.shape[-1], window))


def bin_advance(n_fft: int, hop: int, device: torch.device | None = None) -> torch.Tensor:
    """Phase advance per hop of each bin's centre frequency, 2 pi k hop / n_fft reduced mod 2 pi (float64)."""
    k = torch.arange(n_fft // 2 + 1, device=device, dtype=torch.float64)
    return 2 * torch.pi * torch.remainder(k * hop, n_fft) / n_fft


def integrated_phase(
    deviation: torch.Tensor,
    local: torch.Tensor,
    n_fft: int,
    hop: int,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """STFT phase from instantaneous frequency: (N, bins, F) deviations (in bins) and local angles.

    A steady sinusoid at frequency f advances the phase of every bin near it by
    2 pi f hop / sr per frame; a network that predicts each frame's phase directly
    from local context cannot produce that ramp (its output repeats wherever its
    input does, so a held note comes out as a comb at multiples of the frame rate).
    Here the network predicts per frame and bin the frequency as a deviation from the
    bin centre, and the phase is its running sum (plus a local angle for onsets) —
    the phase-vocoder relation (Flanagan & Golden 1966; cf. GANSynth's instantaneous
    frequency, Engel et al. 2019).  The sum runs in float64 so hours of audio do not drift.

    ``start`` (N, bins) is the accumulated phase before the first frame (chunked
    decoding carries it across chunks).  Returns the phase (N, bins, F) and the
    accumulated phase including each frame (float64), for carrying.
    """
    omega = bin_advance(n_fft, hop, deviation.device)[:, None] + (2 * torch.pi * hop / n_fft) * deviation.double()
    accumulated = torch.cumsum(omega, dim=-1)
    if start is not None:
        accumulated = accumulated + start[..., None]
    # pi * k: the Hann window sits in the middle of each frame, which gives the bins of one
    # partial a phase alternating by pi; adding it back lets ``local`` be smooth across bins.
    k = torch.arange(deviation.shape[-2], device=deviation.device, dtype=torch.float64)
    zero_phase = torch.remainder(torch.pi * k, 2 * torch.pi)[:, None]
    phase = torch.remainder(accumulated + zero_phase, 2 * torch.pi).to(local.dtype) + local
    return phase, accumulated


@torch.no_grad()
def griffin_lim_phase(magnitude: torch.Tensor, n_fft: int, hop: int, iters: int = 16, momentum: float = 0.99) -> torch.Tensor:
    """The phase (N, bins, frames) fast Griffin-Lim retrieves for ``magnitude`` (N, bins, frames).

    Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013): alternate projections between
    spectrograms with the wanted magnitude and consistent spectrograms (those of a signal),
    with a momentum term that speeds convergence.  Measured on corpus clips with their true
    960-point magnitudes: 16 iterations give mel distance 0.13 and chroma similarity 0.997,
    at about 40 ms per second of audio on one core.  It starts from zero phase (deterministic):
    a steady 440 Hz tone, between bins 17 and 18, comes back at 440 Hz, where starting from
    each bin's own centre frequency locks it onto 450 Hz.
    """
    if magnitude.dim() != 3 or magnitude.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"expected magnitudes of shape (N, {n_fft // 2 + 1}, frames), got {tuple(magnitude.shape)}")
    _check(n_fft, hop)
    # Frame-major (N, frames, bins) throughout, so every FFT runs over contiguous rows, and
    # the complex arithmetic on real views (torch's complex kernels are not vectorised on
    # CPU): about 3x faster than going through stft_same / istft_same.
    wanted = magnitude.detach().float().transpose(1, 2).contiguous()
    window = torch.hann_window(n_fft, device=wanted.device)
    inverse_envelope = _inverse_envelope(n_fft, hop, wanted.shape[1], window)
    spec = wanted.to(torch.complex64)
    previous = None
    for _ in range(iters):
        audio = _frames_to_audio(torch.fft.irfft(spec, n=n_fft, dim=-1), n_fft, hop, window, inverse_envelope)
        consistent = torch.view_as_real(stft_same(audio, n_fft, hop).transpose(1, 2))
        if previous is None:
            accelerated = consistent.clone()
        else:
            accelerated = torch.sub(consistent, previous).mul_(momentum).add_(consistent)
        previous = consistent
        # the wanted magnitude with the accelerated estimate's phase (a scaling, not angle + polar)
        power = accelerated[..., 0].square() + accelerated[..., 1].square()
        accelerated.mul_((wanted * torch.rsqrt(power.clamp_min_(1e-16))).unsqueeze(-1))
        spec = torch.view_as_complex(accelerated)
    return torch.angle(spec).transpose(1, 2)


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, iters: int = 16, momentum: float = 0.99) -> torch.Tensor:
    """Audio (N, frames * hop) whose STFT magnitude approaches ``magnitude`` (N, bins, frames).

    Differentiable in the magnitude with the retrieved phase held fixed, so waveform losses
    (and a GAN) can train a magnitude decoder through it.
    """
    phase = griffin_lim_phase(magnitude, n_fft, hop, iters, momentum)
    return istft_same(torch.polar(magnitude.float(), phase), n_fft, hop)
