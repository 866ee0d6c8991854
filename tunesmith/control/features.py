"""Differentiable music features and the control losses of DITTO (Novack et al. 2024, sec. 3-4).

DITTO optimises a diffusion model's initial noise so that the decoded audio matches a
target feature; every feature here is therefore a torch function of the waveform with a
useful gradient, built on :mod:`tunesmith.spectral` (one definition of STFT and chroma).

- intensity: the loudness curve, RMS in dB per frame, smoothed (DITTO's intensity control);
- melody: a per-frame distribution over the 12 pitch classes, scored by cross-entropy
  against a target melody's one-hot chroma (DITTO's melody control);
- structure: the self-similarity matrix of per-frame features, against a target pattern
  such as "AABA" (DITTO's musical-structure control);
- loop and masked reconstruction: a loop's rendered tail against its head (on log-mel
  frames: pitch and timbre both must match before the tail is folded in), how audible a seam
  is, and the kept region of an inpainting or outpainting.

Targets are parsed from what a user writes: an intensity curve as "t:level" points
("0:soft, 5:loud, 10:-30") and a structure as letters ("AABA", or "A:4,B:8,A:4" with
section lengths in seconds).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from tunesmith.spectral import chroma_basis, log_mel, stft_magnitude

LEVEL_WORDS = {"silent": -60.0, "very soft": -36.0, "soft": -30.0, "quiet": -30.0, "medium": -20.0,
               "moderate": -20.0, "loud": -12.0, "very loud": -6.0}  # RMS dBFS a word stands for
POWER_FLOOR = 1e-10  # -100 dB: keeps log and its gradient finite in silence


def _mono(wav: torch.Tensor) -> torch.Tensor:
    """(T,), (B, T) or (B, C, T) -> (B, T)."""
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() == 3:
        return wav.mean(dim=1)
    if wav.dim() != 2:
        raise ValueError(f"audio must be (T,), (B, T) or (B, C, T), got shape {tuple(wav.shape)}")
    return wav


def _hop(sample_rate: int, frame_rate: float) -> int:
    if frame_rate <= 0 or sample_rate <= 0:
        raise ValueError(f"sample_rate and frame_rate must be positive, got {sample_rate} and {frame_rate}")
    return max(1, round(sample_rate / frame_rate))


# ---------------------------------------------------------------------------
# intensity


def loudness_curve(wav: torch.Tensor, sample_rate: int, frame_rate: float = 20.0, smooth_seconds: float = 0.0) -> torch.Tensor:
    """RMS level in dBFS per frame, (B, F) with F = T // hop: each frame is its hop of samples.

    A sine of amplitude A reads 20 log10(A / sqrt 2).  ``smooth_seconds`` > 0 averages the
    dB curve over that window (edges padded by replication), as DITTO smooths its target.
    """
    mono = _mono(wav)
    hop = _hop(sample_rate, frame_rate)
    frames = mono.shape[-1] // hop
    if frames < 1:
        raise ValueError(f"audio of {mono.shape[-1]} samples is shorter than one frame ({hop} samples)")
    power = mono[:, : frames * hop].reshape(mono.shape[0], frames, hop).pow(2).mean(-1)
    db = 10 * torch.log10(power.clamp_min(POWER_FLOOR))
    width = int(round(smooth_seconds * frame_rate))
    if width > 1:
        kernel = torch.full((1, 1, width), 1.0 / width, dtype=db.dtype, device=db.device)
        padded = F.pad(db[:, None], ((width - 1) // 2, width // 2), mode="replicate")
        db = F.conv1d(padded, kernel)[:, 0]
    return db


def parse_level(text: str) -> float:
    """A loudness level: dBFS as a number ("-30") or a word ("soft", "loud", "very loud")."""
    word = " ".join(text.strip().lower().split())
    if word in LEVEL_WORDS:
        return LEVEL_WORDS[word]
    try:
        value = float(word.removesuffix("db").strip())
    except ValueError:
        raise ValueError(f"cannot read the level {text!r}: give dBFS (e.g. -20) or one of "
                         f"{', '.join(LEVEL_WORDS)}") from None
    if not (math.isfinite(value) and -100 <= value <= 0):
        raise ValueError(f"a level in dBFS must be in [-100, 0], got {value}")
    return value


def intensity_target(spec: str, num_frames: int, frame_rate: float) -> torch.Tensor:
    """(F,) dB target from "t:level" points ("0:-30, 5:loud, 10:-30"), linear between points and
    held flat before the first and after the last."""
    points = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if ":" not in part:
            raise ValueError(f"intensity point {part!r} must be 'seconds:level', e.g. '5:-10' or '5:loud'")
        when, level = part.split(":", 1)
        try:
            seconds = float(when)
        except ValueError:
            raise ValueError(f"intensity point {part!r}: {when!r} is not a time in seconds") from None
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"intensity point {part!r}: the time must be >= 0 seconds")
        points.append((seconds, parse_level(level)))
    if not points:
        raise ValueError("an intensity curve needs at least one 'seconds:level' point")
    points.sort()
    times = torch.tensor([p[0] for p in points], dtype=torch.float64)
    levels = torch.tensor([p[1] for p in points], dtype=torch.float64)
    t = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / frame_rate  # frame centres
    index = torch.searchsorted(times, t).clamp(1, max(1, len(points) - 1))
    if len(points) == 1:
        return levels.expand(num_frames).float().clone()
    t0, t1 = times[index - 1], times[index]
    w = ((t - t0) / (t1 - t0).clamp_min(1e-9)).clamp(0, 1)
    return (levels[index - 1] + w * (levels[index] - levels[index - 1])).float()


def intensity_loss(curve: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared dB error of a loudness curve (B, F) against a target (F,) or (B, F)."""
    return (curve - target.to(curve)).pow(2).mean()


# ---------------------------------------------------------------------------
# melody


def pitch_class_distribution(wav: torch.Tensor, sample_rate: int, frame_rate: float = 20.0,
                             temperature: float = 0.05) -> torch.Tensor:
    """(B, 12, F) per-frame distribution over pitch classes: a softmax of the log chroma energy
    (sharp at small ``temperature``), so a cross-entropy against a one-hot target has a gradient
    everywhere, unlike the arg-max the melody conditioner uses."""
    mono = _mono(wav)
    hop = _hop(sample_rate, frame_rate)
    n_fft = 4096 if sample_rate >= 22050 else 2048
    power = stft_magnitude(mono, n_fft, hop, power=2.0)
    chroma = torch.matmul(chroma_basis(sample_rate, n_fft).to(power), power)  # (B, 12, frames)
    frames = mono.shape[-1] // hop
    log_chroma = torch.log10(chroma[..., :frames].clamp_min(POWER_FLOOR))
    return torch.softmax(log_chroma / temperature, dim=-2)


def melody_loss(distribution: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-frame pitch-class distributions (B, 12, F) against a target one-hot
    chroma (B or 1, 12, F'), over the frames where the target has a note (all-zero = rest)."""
    frames = min(distribution.shape[-1], target.shape[-1])
    p, q = distribution[..., :frames], target[..., :frames].to(distribution)
    voiced = q.sum(dim=-2) > 0  # (B, F)
    if not voiced.any():
        raise ValueError("the melody target has no notes")
    ce = -(q * p.clamp_min(1e-8).log()).sum(dim=-2)  # (B, F)
    return ce[voiced.expand_as(ce)].mean()


def pitch_class_accuracy(distribution: torch.Tensor, target: torch.Tensor) -> float:
    """Share of the target's voiced frames whose most likely pitch class is the target's."""
    frames = min(distribution.shape[-1], target.shape[-1])
    p, q = distribution[..., :frames], target[..., :frames].to(distribution)
    voiced = (q.sum(dim=-2) > 0).expand(p.shape[0], -1)
    hits = p.argmax(dim=-2) == q.argmax(dim=-2).expand(p.shape[0], -1)
    return float(hits[voiced].float().mean())


# ---------------------------------------------------------------------------
# structure


def self_similarity(features: torch.Tensor) -> torch.Tensor:
    """(B, D, F) per-frame features -> (B, F, F) cosine similarity of every pair of frames."""
    unit = F.normalize(features, dim=-2, eps=1e-8)
    return unit.transpose(-1, -2) @ unit


_SECTION = re.compile(r"^([A-Za-z])(?::(\d+(?:\.\d+)?))?$")


def structure_target(pattern: str, num_frames: int, frame_rate: float) -> torch.Tensor:
    """(F, F) target self-similarity: 1 where two frames' sections share a letter, else 0.

    ``pattern`` is letters ("AABA": equal sections over the clip) or "letter:seconds" parts
    ("A:4,B:8,A:4"; lengths are scaled to the clip if they do not add up to it).
    """
    parts = [p.strip() for p in pattern.split(",")] if "," in pattern or ":" in pattern else list(pattern.strip())
    labels, lengths = [], []
    for part in parts:
        match = _SECTION.match(part)
        if not match:
            raise ValueError(f"cannot read the structure {pattern!r}: use letters ('AABA') or 'A:4,B:8,A:4'")
        labels.append(match.group(1).upper())
        lengths.append(float(match.group(2)) if match.group(2) else 1.0)
    if len(labels) < 2:
        raise ValueError(f"a structure needs at least two sections, got {pattern!r}")
    if any(length <= 0 for length in lengths):
        raise ValueError(f"section lengths must be positive in {pattern!r}")
    bounds = torch.tensor([0.0, *lengths], dtype=torch.float64).cumsum(0) / sum(lengths) * num_frames
    centres = torch.arange(num_frames, dtype=torch.float64) + 0.5
    section = (torch.searchsorted(bounds[1:-1], centres, right=True)).tolist()
    ids = torch.tensor([sorted(set(labels)).index(labels[s]) for s in section])
    return (ids[:, None] == ids[None, :]).float()


def structure_loss(similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of self-similarity matrices (B, F, F) against a target (F, F)."""
    frames = min(similarity.shape[-1], target.shape[-1])
    return (similarity[..., :frames, :frames] - target[:frames, :frames].to(similarity)).pow(2).mean()


def structure_correlation(similarity: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson correlation of a self-similarity matrix with the target (off the diagonal)."""
    frames = min(similarity.shape[-1], target.shape[-1])
    off = ~torch.eye(frames, dtype=torch.bool)
    a = similarity[..., :frames, :frames].reshape(-1, frames, frames)[0][off].double()
    b = target[:frames, :frames][off].double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# ---------------------------------------------------------------------------
# loops and kept regions


def spectral_frames(wav: torch.Tensor, sample_rate: int, frame_rate: float = 20.0, n_mels: int = 64) -> torch.Tensor:
    """(B, n_mels, F) log-mel frames (natural log, so steps are ratios) at ``frame_rate``, frame i
    centred on its hop of samples: the "spectrum" a seam is judged on."""
    mono = _mono(wav)
    hop = _hop(sample_rate, frame_rate)
    frames = mono.shape[-1] // hop
    mel = log_mel(mono, sample_rate, eps=1e-4, n_fft=2 * hop, hop=hop, n_mels=n_mels)
    return mel[..., :frames]


def loop_seam_loss(features: torch.Tensor, overlap: int = 1) -> torch.Tensor:
    """DITTO's looping as outpainting towards the head: the last ``overlap`` frames of per-frame
    features (B, D, F) should repeat the first ones, so that the tail folded into the head
    (:func:`fold_loop`) crossfades between two alike sounds.  Mean squared difference of the two."""
    if overlap < 1 or features.shape[-1] < 2 * overlap:
        raise ValueError(f"a loop of {overlap} overlapping frames needs at least {2 * max(overlap, 1)} frames, "
                         f"got {features.shape[-1]}")
    return (features[..., -overlap:] - features[..., :overlap]).pow(2).mean()


def fold_loop(wav: torch.Tensor, overlap: int) -> torch.Tensor:
    """A seamless loop from audio rendered ``overlap`` samples longer than the loop: the extra tail
    is crossfaded into the head, so the loop's last sample flows into its first exactly as the
    rendering flowed on (y[0] = x[L]) and the head takes over within ``overlap`` samples.

    The fades keep the level whatever the two parts share: with r the correlation of head and
    tail, the gains a = g t, b = g (1 - t) satisfy a^2 + b^2 + 2 a b r = 1 (linear fades for
    identical parts, equal power for unrelated ones).  (..., L + overlap) -> (..., L)."""
    length = wav.shape[-1] - overlap
    if overlap < 1 or length < overlap:
        raise ValueError(f"a loop folding {overlap} samples needs at least {2 * max(overlap, 1)} samples, "
                         f"got {wav.shape[-1]}")
    head, tail = wav[..., :overlap], wav[..., length:]
    dims = tuple(range(head.dim()))  # one correlation for the whole clip: the same fade on every channel
    r = ((head * tail).sum(dims) / (head.pow(2).sum(dims) * tail.pow(2).sum(dims)).sqrt().clamp_min(1e-12)).clamp(-1, 1)
    t = (torch.arange(overlap, dtype=torch.float64) / overlap).to(wav.device)
    gain = (t.pow(2) + (1 - t).pow(2) + 2 * t * (1 - t) * r.double().clamp_min(0)).rsqrt()
    faded = (gain * t).to(wav) * head + (gain * (1 - t)).to(wav) * tail
    return torch.cat([faded, wav[..., overlap:length]], dim=-1)


def seam_jump_ratio(wav: torch.Tensor, sample_rate: int, seams: list[float], frame_rate: float = 20.0) -> float:
    """How audible an edit point is: the largest log-mel step near each seam (seconds) over the
    median of the same measure at every frame boundary of the clip; the worst seam.

    "Near" is the three steps between the four frames around a boundary: with the 50 % frame
    overlap of :func:`spectral_frames` a cut shows in all of them, so the seam is compared with
    the music's own moments measured the same way.  <= 1: no worse than a typical moment of the
    clip (a beat's onset reads several times the median)."""
    if wav.shape[-1] // _hop(sample_rate, frame_rate) < 5:
        raise ValueError(f"{wav.shape[-1] / sample_rate:g} s is too short to judge a seam at {frame_rate:g} frames/s")
    frames = spectral_frames(wav, sample_rate, frame_rate)
    steps = (frames[..., 1:] - frames[..., :-1]).pow(2).sum(dim=-2).sqrt()  # (B, F - 1): frame f -> f + 1
    near = torch.stack([steps[..., :-2], steps[..., 1:-1], steps[..., 2:]]).amax(dim=0)  # near[b - 2]: boundary b
    typical = near.median(dim=-1).values.clamp_min(1e-12)  # (B,)
    worst = torch.zeros_like(typical)
    for seam in seams:
        b = min(max(round(seam * frame_rate), 2), near.shape[-1] + 1)
        worst = torch.maximum(worst, near[..., b - 2])
    return float((worst / typical).mean())


def loop_seam_ratio(wav: torch.Tensor, sample_rate: int, frame_rate: float = 20.0) -> float:
    """The seam of a loop as it is heard, the clip played twice: :func:`seam_jump_ratio` where
    the second pass begins."""
    return seam_jump_ratio(torch.cat([wav, wav], dim=-1), sample_rate, [wav.shape[-1] / sample_rate], frame_rate)


def masked_reconstruction_loss(x: torch.Tensor, reference: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the kept region only (``keep`` = 1 where the reference must stay),
    for inpainting and outpainting; broadcast over leading dimensions."""
    keep = keep.to(x)
    weight = keep.expand_as(x)
    if weight.sum() == 0:
        raise ValueError("the mask keeps nothing")
    return ((x - reference.to(x)).pow(2) * weight).sum() / weight.sum()
