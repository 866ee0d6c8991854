"""Codec evaluation: reconstruction distances, speed and code usage over a set of clips.

Shared by ``tunesmith codec eval``, the model export (its evaluation JSON) and
``bench/codec.py``, so every number about a codec is computed one way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from tunesmith.audio import AUDIO_SUFFIXES, AudioError, load_audio
from tunesmith.codec.losses import mel_distance, si_sdr, stft_distance
from tunesmith.codec.model import RVQCodec, VAECodec
from tunesmith.codec.rvq import code_usage, perplexity


Clip = tuple[str, torch.Tensor]  # (id, (C, T) audio)


def manifest_clips(manifest: str | Path, split: str, sample_rate: int, channels: int,
                   max_clips: int | None = None, max_seconds: float | None = 10.0) -> Iterator[Clip]:
    """The first ``max_clips`` clips of a manifest split, each cut to ``max_seconds``."""
    from tunesmith.data.datasets import AudioClipDataset

    data = AudioClipDataset(manifest, split, sample_rate, channels, segment_seconds=None)
    for i in range(min(len(data), max_clips or len(data))):
        record = data.records[i]
        wav = data[i]["audio"]
        if max_seconds is not None:
            wav = wav[:, : int(max_seconds * sample_rate)]
        yield record["id"], wav


def folder_clips(folder: str | Path, sample_rate: int, channels: int, max_clips: int | None = None,
                 max_seconds: float | None = 10.0, offset_seconds: float = 0.0) -> Iterator[Clip]:
    """Audio files under ``folder`` (sorted), resampled, mixed, cut to ``max_seconds`` after ``offset_seconds``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise AudioError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    for path in files[: max_clips or len(files)]:
        wav = load_audio(path, sample_rate, channels).samples
        start = int(offset_seconds * sample_rate) if wav.shape[-1] > (offset_seconds + 1) * sample_rate else 0
        wav = wav[:, start:]
        if max_seconds is not None:
            wav = wav[:, : int(max_seconds * sample_rate)]
        yield path.stem, wav


def reconstruction_metrics(recon: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Mel distance, multi-resolution STFT distance, SI-SDR and chroma similarity of one (C, T) reconstruction.

    Chroma similarity (mean cosine of 12-bin chroma frames where the reference is not
    silent) checks that the pitches survive, which spectral-envelope distances barely see.
    """
    recon, ref = recon[None].float(), ref[None].float()
    n = min(recon.shape[-1], ref.shape[-1])
    recon, ref = recon[..., :n], ref[..., :n]
    return {
        "mel_distance": float(mel_distance(recon, ref, sample_rate)),
        "stft_distance": float(stft_distance(recon, ref)),
        "si_sdr": float(si_sdr(recon, ref).mean()),
        "chroma_similarity": chroma_similarity(recon, ref, sample_rate),
    }


def chroma_similarity(recon: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> float:
    """Mean cosine similarity of raw chroma energy frames, over frames where the reference has energy."""
    from tunesmith.spectral import chroma_basis, stft_magnitude

    basis = chroma_basis(sample_rate, 4096)
    a = torch.matmul(basis, stft_magnitude(recon.flatten(0, -2), 4096, 1024, power=2.0))
    b = torch.matmul(basis, stft_magnitude(ref.flatten(0, -2), 4096, 1024, power=2.0))
    energy = b.sum(dim=-2)
    keep = energy > 1e-4 * energy.max().clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-2)
    return float(cos[keep].mean()) if keep.any() else float("nan")


def summarize(rows: list[dict[str, float]], seconds: float, compute_seconds: float) -> dict[str, float]:
    """Means over clips plus the speed as a multiple of real time."""
    if not rows:
        raise ValueError("no clips were evaluated")
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out.update(clips=len(rows), audio_seconds=round(seconds, 3),
               x_realtime=seconds / compute_seconds if compute_seconds > 0 else float("inf"))
    return out


def evaluate_roundtrip(clips: Iterable[Clip], roundtrip: Callable[[torch.Tensor], torch.Tensor], sample_rate: int,
                       desc: str = "eval") -> dict[str, float]:
    """Metrics of any (C, T) -> (C, T) round trip (our codec, Opus, ...) over ``clips``, timed."""
    rows, seconds, compute = [], 0.0, 0.0
    for _, wav in tqdm(list(clips), desc=desc, leave=False):
        start = time.perf_counter()
        recon = roundtrip(wav)
        compute += time.perf_counter() - start
        seconds += wav.shape[-1] / sample_rate
        rows.append(reconstruction_metrics(recon, wav, sample_rate))
    return summarize(rows, seconds, compute)


def codec_roundtrip(codec: RVQCodec | VAECodec, num_codebooks: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """(C, T) -> (C, T) encode + decode with the chunked API."""

    def run(wav: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = wav[None].to(next(codec.parameters()).device)
            if isinstance(codec, RVQCodec):
                y = codec.decode_long(codec.encode_long(x, num_codebooks))
            else:
                y = codec.decode_long(codec.encode_long(x))
            return y[0, :, : wav.shape[-1]].cpu()

    return run


@torch.inference_mode()
def codebook_stats(codec: RVQCodec, clips: Iterable[Clip]) -> dict[str, list[float]]:
    """Per-codebook fraction of entries used and perplexity over ``clips``."""
    counts = torch.zeros(codec.num_codebooks, codec.codebook_size)
    for _, wav in clips:
        tokens = codec.encode_long(wav[None])[0]
        for k in range(codec.num_codebooks):
            counts[k] += code_usage(tokens[k], codec.codebook_size)
    return {
        "usage": [float((c > 0).float().mean()) for c in counts],
        "perplexity": [perplexity(c) for c in counts],
    }


@torch.inference_mode()
def latent_stats(codec: VAECodec, clips: Iterable[Clip]) -> dict[str, float | list[float]]:
    """Mean and standard deviation of the posterior means over ``clips`` (for diffusion's latent scaling)."""
    latents = torch.cat([codec.encode_long(wav[None])[0] for _, wav in clips], dim=-1)  # (D, frames)
    return {"mean": float(latents.mean()), "std": float(latents.std()),
            "channel_std": [float(v) for v in latents.std(dim=-1)]}


def evaluate_codec(codec: RVQCodec | VAECodec, clips: list[Clip]) -> dict:
    """The evaluation JSON of a codec: metrics at every bitrate (RVQ) or of the VAE, plus code usage."""
    sr = codec.sample_rate
    if isinstance(codec, VAECodec):
        return {"kind": "latents", "latent_dim": codec.latent_dim, "frame_rate": codec.frame_rate,
                "metrics": evaluate_roundtrip(clips, codec_roundtrip(codec), sr, "vae"),
                "latents": latent_stats(codec, clips)}
    by_k = {}
    for k in range(1, codec.num_codebooks + 1):
        by_k[f"{k}q"] = {"kbps": codec.bitrate(k) / 1000,
                         **evaluate_roundtrip(clips, codec_roundtrip(codec, k), sr, f"codec {k}q")}
    return {"kind": "tokens", "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size,
            "frame_rate": codec.frame_rate, "metrics": by_k, "codebooks": codebook_stats(codec, clips)}
