"""STFT analysis and inverse-STFT synthesis with "same" padding: T samples <-> T / hop frames.

The codec works at frame rate and leaves the waveform to an inverse STFT (Vocos,
Siuzdak 2023): the decoder predicts a log-magnitude and a phase per bin and the
inverse FFT plus overlap-add does the upsampling for free.  Both directions pad
by ``(n_fft - hop) / 2`` on each side instead of torch's ``center=True``, so that
exactly ``T / hop`` frames describe ``T`` samples — which makes strided
downsampling and chunked processing line up without off-by-one frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    return torch.stft(padded, n_fft, hop, window=window, center=False, return_complex=True)


def istft_same(spec: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Inverse of :func:`stft_same`: (B, n_fft // 2 + 1, F) complex -> (B, F * hop) audio.

    Windowed overlap-add normalised by the summed squared window (the least-squares
    inverse, Griffin & Lim 1984).  Written with ``irfft`` + ``fold`` rather than
    ``torch.istft`` because the latter insists on ``center`` padding.
    """
    _check(n_fft, hop)
    frames = spec.shape[-1]
    window = torch.hann_window(n_fft, device=spec.device, dtype=spec.real.dtype)
    chunks = torch.fft.irfft(spec, n=n_fft, dim=1, norm="backward") * window[None, :, None]
    length = (frames - 1) * hop + n_fft
    signal = F.fold(chunks, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))[:, 0, 0]
    envelope = F.fold(
        window.square()[None, :, None].expand(1, n_fft, frames),
        output_size=(1, length),
        kernel_size=(1, n_fft),
        stride=(1, hop),
    )[0, 0, 0]
    pad = (n_fft - hop) // 2
    return signal[:, pad : length - pad] / envelope[pad : length - pad].clamp_min(1e-8)


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
    magnitude = magnitude.detach().float().contiguous()
    spec = magnitude.to(torch.complex64)
    previous = None
    for _ in range(iters):
        consistent = stft_same(istft_same(spec, n_fft, hop), n_fft, hop)
        accelerated = consistent if previous is None else consistent + momentum * (consistent - previous)
        previous = consistent
        # the wanted magnitude with the accelerated estimate's phase (a division, not angle+polar: 2x faster)
        spec = accelerated * (magnitude / accelerated.abs().clamp_min(1e-8))
    return torch.angle(spec)


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, iters: int = 16, momentum: float = 0.99) -> torch.Tensor:
    """Audio (N, frames * hop) whose STFT magnitude approaches ``magnitude`` (N, bins, frames).

    Differentiable in the magnitude with the retrieved phase held fixed, so waveform losses
    (and a GAN) can train a magnitude decoder through it.
    """
    phase = griffin_lim_phase(magnitude, n_fft, hop, iters, momentum)
    return istft_same(torch.polar(magnitude.float(), phase), n_fft, hop)
