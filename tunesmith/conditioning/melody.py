"""Melody conditioning: the dominant pitch class of each frame of a reference recording.

MusicGen (sec. 2.2) conditions on the chromagram of a reference, reduced to its
strongest bin per frame: a one-hot "information bottleneck" that carries the melody
line and little else, so the model cannot copy the reference's timbre.  Frames are
aligned to the codec's token rate, so frame f of the melody sits next to token
frame f.  Silent frames get an all-zero column, the same as "no melody".  A MIDI file
gives the same target from its top line (:func:`midi_melody`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tunesmith.audio import Audio, load_audio
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


MIDI_SUFFIXES = (".mid", ".midi")
MAX_MIDI_BYTES = 16 * 2**20
DRUM_CHANNEL = 9  # General MIDI channel 10: percussion, no pitch


def midi_melody(path: str | Path, frame_rate: float, num_frames: int | None = None) -> torch.Tensor:
    """(1, 12, F) one-hot chroma of a MIDI file's top line: per frame, the highest sounding
    non-drum note (the "skyline" reading of a melody), zero where nothing sounds.

    The same bottleneck as :func:`dominant_chroma`, so a score and a recording of it give the
    same kind of target."""
    path = Path(path)
    try:
        import mido
    except ImportError:
        raise ValueError(f"reading the MIDI melody {path.name} needs mido (pip install 'tunesmith[data]')") from None
    if not path.is_file():
        raise ValueError(f"melody file not found: {path}")
    if path.stat().st_size > MAX_MIDI_BYTES:
        raise ValueError(f"{path.name} is over {MAX_MIDI_BYTES >> 20} MB: not a melody")
    try:
        messages = list(mido.MidiFile(path))  # merged tracks, times in seconds (tempo changes applied)
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path.name} is not a readable MIDI file ({str(err)[:120]})") from None
    notes: list[tuple[float, float, int]] = []  # (start s, end s, pitch)
    sounding: dict[tuple[int, int], float] = {}
    now = 0.0
    for msg in messages:
        now += msg.time
        if msg.type not in ("note_on", "note_off") or msg.channel == DRUM_CHANNEL:
            continue
        key = (msg.channel, msg.note)
        if key in sounding:  # a note ends (note_off, or note_on at velocity 0), or restarts
            notes.append((sounding.pop(key), now, msg.note))
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = now
    notes += [(start, now, pitch) for (_, pitch), start in sounding.items()]
    if not notes:
        raise ValueError(f"{path.name} has no pitched notes to follow")
    total = num_frames if num_frames is not None else max(1, math.ceil(now * frame_rate))
    top = torch.full((total,), -1, dtype=torch.long)
    for start, end, pitch in notes:  # frame f (at f / frame_rate s) hears notes with start <= t < end
        first, last = math.ceil(start * frame_rate), min(total, math.ceil(end * frame_rate))
        if first < last:
            top[first:last] = torch.clamp_min(top[first:last], pitch)
    out = torch.zeros(1, 12, total)
    audible = top >= 0
    out[0, top[audible] % 12, audible.nonzero().squeeze(1)] = 1.0
    return out


def melody_chroma(reference: Audio | str | Path, frame_rate: float, num_frames: int | None = None) -> torch.Tensor:
    """(B, 12, F) melody target of a reference: a MIDI file's top line, or a recording's dominant
    chroma (an :class:`Audio` or the path of an audio file)."""
    if isinstance(reference, (str, Path)) and Path(reference).suffix.lower() in MIDI_SUFFIXES:
        return midi_melody(reference, frame_rate, num_frames)
    if isinstance(reference, (str, Path)):
        seconds = None if num_frames is None else num_frames / frame_rate + 1.0
        reference = load_audio(reference, channels=1, max_seconds=seconds)
    if not isinstance(reference, Audio):
        raise TypeError(f"a melody is an Audio, an audio file or a MIDI file, got {type(reference).__name__}")
    return dominant_chroma(reference.samples, reference.sample_rate, frame_rate, num_frames)
