"""Audio as tensors: load, save, resample, mono, loudness. Pure functions, no models.

Contract: audio is float32 (C, T) or (B, C, T) in [-1, 1] with its sample rate
carried beside it.  All file I/O goes through soundfile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from tunesmith.errors import AudioError
from tunesmith.files import atomic_path




@dataclass
class Audio:
    """Waveform (C, T) or (B, C, T) plus its sample rate."""

    samples: torch.Tensor
    sample_rate: int
    info: dict = field(default_factory=dict)  # what made it, for the sidecar (e.g. the controls' report)

    def __post_init__(self) -> None:
        if not isinstance(self.samples, torch.Tensor):
            raise AudioError(f"Audio.samples must be a torch.Tensor, got {type(self.samples).__name__}")
        if self.samples.dim() not in (2, 3):
            raise AudioError(f"Audio.samples must be (C, T) or (B, C, T), got shape {tuple(self.samples.shape)}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, (int, np.integer)) or self.sample_rate <= 0:
            raise AudioError(f"Audio.sample_rate must be a positive integer (Hz), got {self.sample_rate!r}")
        self.sample_rate = int(self.sample_rate)

    @property
    def duration(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    channels: int | None = None,
    *,
    allow_silent: bool = False,
    max_seconds: float | None = None,
) -> Audio:
    """Read an audio file as float32 (C, T), optionally resampled and mixed to ``channels``.

    ``max_seconds`` reads only the start of the file, so a 2-hour file costs what is used.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        frames = -1
        if max_seconds is not None:
            frames = max(1, math.ceil(max_seconds * sf.info(str(path)).samplerate))
        data, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for bad files
        raise AudioError(f"cannot read audio file {path}: {err}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    check_audio(wav, str(path), allow_silent=allow_silent)
    if channels is not None:
        wav = to_channels(wav, channels)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return Audio(wav, sr)


def check_audio(wav: torch.Tensor, name: str = "audio", *, allow_silent: bool = False) -> None:
    """Raise :class:`AudioError` for empty, non-finite or silent audio."""
    if wav.numel() == 0:
        raise AudioError(f"{name} is empty")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    if not allow_silent and wav.abs().max() < 1e-5:
        raise AudioError(f"{name} is silent")


# what load_audio reads (libsndfile; mp3 and opus where its build has them), by file suffix
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".opus")

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}  # name -> soundfile's format and subtype


def write_audio(target: str | Path | BinaryIO, wav: torch.Tensor, sample_rate: int, format: str) -> None:
    """Write (C, T) audio to a path or a binary stream, refusing what is not audio.

    NaN or infinite samples are an error, never a file: written as PCM they become
    full-scale DC, a file that looks fine and is not.
    """
    if wav.dim() == 3:
        if wav.shape[0] != 1:
            raise ValueError("write_audio takes one clip (C, T); got a batch")
        wav = wav[0]
    if wav.dim() == 1:
        wav = wav[None]
    if not torch.isfinite(wav).all():
        raise AudioError("the audio to write contains NaN or infinite samples (a broken model or input); nothing written")
    if format not in FORMATS:
        raise AudioError(f"unknown audio format '{format}' (known: {', '.join(FORMATS)})")
    kind, subtype = FORMATS[format]
    data = wav.detach().cpu().float().clamp(-1, 1).numpy().T
    try:
        sf.write(target, data, sample_rate, format=kind, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError) as err:  # a full disk is "System error" here
        raise OSError(f"cannot write audio to {getattr(target, 'name', target)}: {err}") from None


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int, *, format: str | None = None) -> Path:
    """Write (C, T) audio atomically (whole file or none, mode from the umask); the format follows the suffix."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "wav").lower()
    if not torch.isfinite(wav).all():  # before any file is made
        raise AudioError(f"the audio for {path} contains NaN or infinite samples (a broken model or input); nothing written")
    with atomic_path(path) as tmp:
        write_audio(tmp, wav, sample_rate, fmt)
    return path


def to_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Mix down to mono or duplicate mono to stereo; (…, C, T) -> (…, channels, T)."""
    c = wav.shape[-2]
    if c == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if c == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    raise AudioError(f"cannot convert {c} channels to {channels}")


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited polyphase resampling (Kaiser-windowed sinc), any leading shape."""
    if orig_sr == new_sr:
        return wav
    from scipy.signal import resample_poly

    ratio = Fraction(new_sr, orig_sr).limit_denominator(1000)
    out = resample_poly(wav.detach().cpu().numpy(), ratio.numerator, ratio.denominator, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(wav.device)


def rms_db(wav: torch.Tensor) -> float:
    """RMS level in dBFS (a simple loudness proxy)."""
    rms = wav.float().pow(2).mean().sqrt().item()
    return 20 * math.log10(max(rms, 1e-10))


def normalize_loudness(wav: torch.Tensor, target_db: float = -20.0, peak: float = 0.99) -> torch.Tensor:
    """Scale to an RMS of ``target_db`` dBFS, then limit the peak to ``peak``."""
    gain = 10 ** ((target_db - rms_db(wav)) / 20)
    out = wav * gain
    top = out.abs().max()
    return out * (peak / top) if top > peak else out
