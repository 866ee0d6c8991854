"""Loudness by ITU-R BS.1770-4: K-weighting, gated integrated loudness, true peak, and
normalisation to a target.  Pure functions on (C, T) arrays, no models.

Why: the generators' raw output ranged from -25 to -8.5 dB RMS across prompts and hard-
clipped 3-4% of its samples past 10 s, so two prompts differed by 15 dB.  Every generator's
output is brought to one integrated loudness (LUFS) with its true peak kept under a ceiling
(dBTP) by :mod:`tunesmith.generator`; this module measures.

Conventions (BS.1770-4): channels are summed by power with weight 1 (no surround channels
here), so a one-channel signal is measured as one channel: a sine of peak 1 reads -3.01 LUFS
and a sine of RMS 0.1 reads -20.0 LUFS.  A signal shorter than one 400 ms block, or silent
(every block under the -70 LUFS absolute gate), has no loudness: -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import lfilter, resample_poly

BLOCK_SECONDS = 0.4  # BS.1770-4 sec. 2.8: gating blocks of 400 ms ...
BLOCK_OVERLAP = 0.75  # ... overlapping by 75%
ABSOLUTE_GATE = -70.0  # LUFS (sec. 2.8, Gamma_a)
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness (sec. 2.8, Gamma_r)
LOUDNESS_OFFSET = -0.691  # dB (eq. 2): makes the K-weighted 1 kHz response read 0 dB
TRUE_PEAK_RATE = 192_000  # Annex 2: oversample to at least 192 kHz (4x at 48 kHz)
LIMITER_SECONDS = 0.02  # the limiter's look-ahead and its release: its gain moves over 20 ms at the fastest

# K-weighting as analogue prototypes (BS.1770-4 Annex 1 gives the 48 kHz coefficients; these
# parameters reproduce them and give the filters at any rate by the bilinear transform).
SHELF_HZ, SHELF_GAIN_DB, SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
HIGHPASS_HZ, HIGHPASS_Q = 38.13547087602444, 0.5003270373238773


@dataclass(frozen=True)
class LoudnessTarget:
    """What a generator's output is normalised to: integrated loudness and a true-peak ceiling."""

    lufs: float = -16.0
    true_peak_dbtp: float = -1.0

    def __post_init__(self) -> None:
        check_target(self.lufs, "loudness target")
        if isinstance(self.true_peak_dbtp, bool) or not isinstance(self.true_peak_dbtp, (int, float)) \
                or not -20.0 <= self.true_peak_dbtp <= 0.0:
            raise ValueError(f"true-peak ceiling must be a number of dBTP in [-20, 0], got {self.true_peak_dbtp!r}")


def check_target(lufs: Any, name: str = "loudness") -> float:
    """A loudness target in LUFS, refused by name when it is not a number in [-70, 0]."""
    if isinstance(lufs, bool) or not isinstance(lufs, (int, float)) or not math.isfinite(lufs):
        raise ValueError(f"{name} must be a number of LUFS (e.g. -16) or None, got {lufs!r}")
    if not -70.0 <= lufs <= 0.0:
        raise ValueError(f"{name} must be in [-70, 0] LUFS, got {lufs:g}")
    return float(lufs)


def _as_channels(samples: Any) -> np.ndarray:
    x = samples.detach().cpu().double().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples, np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"loudness takes (C, T) or (T,) samples, got shape {x.shape}")
    return x


def k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two biquads of K-weighting at ``sample_rate`` as (b, a) pairs: the head's high
    shelf (stage 1) and the RLB high-pass (stage 2), BS.1770-4 Annex 1.  Below 4 kHz (tiny test
    models) the shelf would sit at or past Nyquist, where the bilinear transform has no filter:
    only the high-pass is used there."""
    high = _highpass(sample_rate)
    if SHELF_HZ >= 0.45 * sample_rate:
        return [high]
    k = math.tan(math.pi * SHELF_HZ / sample_rate)
    vh = 10.0 ** (SHELF_GAIN_DB / 20.0)
    vb = vh ** 0.4996667741545416  # the shelf's mid-band gain, as in the published derivation
    a0 = 1.0 + k / SHELF_Q + k * k
    shelf_b = np.array([vh + vb * k / SHELF_Q + k * k, 2.0 * (k * k - vh), vh - vb * k / SHELF_Q + k * k]) / a0
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / SHELF_Q + k * k) / a0])
    return [(shelf_b, shelf_a), high]


def _highpass(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    k = math.tan(math.pi * HIGHPASS_HZ / sample_rate)
    a0 = 1.0 + k / HIGHPASS_Q + k * k
    return np.array([1.0, -2.0, 1.0]), np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / HIGHPASS_Q + k * k) / a0])


def block_powers(samples: Any, sample_rate: int) -> np.ndarray:
    """(blocks,) channel-summed mean square of the K-weighted signal per 400 ms block (eq. 3-4)."""
    x = _as_channels(samples)
    for b, a in k_weighting(sample_rate):
        x = lfilter(b, a, x, axis=-1)
    size = int(round(BLOCK_SECONDS * sample_rate))
    step = int(round(BLOCK_SECONDS * (1.0 - BLOCK_OVERLAP) * sample_rate))
    if x.shape[-1] < size:
        return np.zeros(0)
    starts = np.arange(0, x.shape[-1] - size + 1, step)
    # running sums make every block's mean square O(1)
    cumulative = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=-1)], axis=-1)
    per_channel = (cumulative[:, starts + size] - cumulative[:, starts]) / size
    return per_channel.sum(0)  # channel weights G_i = 1 (left, right, centre)


def _lufs(power: float | np.ndarray) -> Any:
    with np.errstate(divide="ignore"):
        return LOUDNESS_OFFSET + 10.0 * np.log10(power)


def integrated_loudness(samples: Any, sample_rate: int) -> float:
    """Gated integrated loudness in LUFS (BS.1770-4 eq. 5-7); -inf for silence or < 400 ms."""
    z = block_powers(samples, sample_rate)
    z = z[_lufs(z) > ABSOLUTE_GATE]
    if z.size == 0:
        return float("-inf")
    relative = _lufs(z.mean()) + RELATIVE_GATE
    z = z[_lufs(z) > relative]
    return float(_lufs(z.mean()))


def true_peak(samples: Any, sample_rate: int) -> float:
    """The true peak in dBTP: the largest |sample| of the signal oversampled to >= 192 kHz
    (BS.1770-4 Annex 2, with a polyphase low-pass interpolator); -inf for silence."""
    x, _ = _oversampled(_as_channels(samples), sample_rate)
    peak = float(np.abs(x).max()) if x.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else float("-inf")


def _oversampled(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    factor = max(1, math.ceil(TRUE_PEAK_RATE / sample_rate))
    if factor > 1 and x.shape[-1] > 0:
        x = resample_poly(x, factor, 1, axis=-1)
    return x, factor


def peak_envelope(samples: Any, sample_rate: int) -> np.ndarray:
    """(T,) the true peak around each sample: the largest |value| of the oversampled signal over
    all channels between the sample and its next (an interpolated peak belongs to both)."""
    x = _as_channels(samples)
    over, factor = _oversampled(x.astype(np.float32), sample_rate)
    length = x.shape[-1]
    envelope = np.abs(over[:, : length * factor]).reshape(x.shape[0], length, factor).max(-1).max(0)
    return np.maximum(envelope, np.concatenate([envelope[1:], envelope[-1:]])).astype(np.float64)


def limit(samples: Any, sample_rate: int, ceiling_dbtp: float, envelope: np.ndarray | None = None) -> np.ndarray:
    """(C, T) with every true peak under ``ceiling_dbtp`` by a look-ahead limiter: the gain each
    sample needs (ceiling / its true-peak envelope), a running minimum over the next window, then
    averaged over the window: the smooth gain never exceeds what any sample needs (each average
    is of minima over windows that contain the sample) and dips before a peak, not at it.
    ``envelope``: :func:`peak_envelope` of ``samples`` when the caller has it (it scales with them)."""
    x = _as_channels(samples)
    if envelope is None:
        envelope = peak_envelope(x, sample_rate)
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    needed = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    if needed.min() >= 1.0:
        return x
    width = max(1, int(LIMITER_SECONDS * sample_rate))
    # minimum over [n, n + width) (forward), then mean over (n - width, n] (backward)
    ahead = minimum_filter1d(needed, width, mode="nearest", origin=-(width // 2))
    gain = uniform_filter1d(ahead, width, mode="nearest", origin=(width - 1) // 2)
    return x * np.minimum(gain, needed)[None]


def normalise(samples: torch.Tensor, sample_rate: int, target: LoudnessTarget,
              iterations: int = 4) -> tuple[torch.Tensor, dict[str, Any]]:
    """``samples`` (C, T) brought to ``target.lufs`` with every true peak under
    ``target.true_peak_dbtp``: one gain, then the limiter where peaks would pass the ceiling
    (limiting lowers the loudness a little, so gain and limiter repeat until within 0.1 LU).
    Silence and signals shorter than one block are returned unchanged.  Returns the samples
    and a report (loudness before and after, gain, the limiter's deepest cut)."""
    x = _as_channels(samples)
    before = integrated_loudness(x, sample_rate)
    if not math.isfinite(before):
        return samples, {"lufs_before": None, "lufs": None, "gain_db": 0.0, "true_peak_dbtp": None, "limited_db": 0.0}
    gain_db, out, now = 0.0, x, before
    envelope = peak_envelope(x, sample_rate)  # once: a gain scales it
    for _ in range(iterations):
        gain_db += target.lufs - now
        scaled = x * 10.0 ** (gain_db / 20.0)
        out = limit(scaled, sample_rate, target.true_peak_dbtp, envelope * 10.0 ** (gain_db / 20.0))
        now = integrated_loudness(out, sample_rate)
        if abs(now - target.lufs) < 0.1:
            break
    peak = true_peak(out, sample_rate)
    if peak > target.true_peak_dbtp:  # the limiter's gain is per sample; a last hair of overshoot
        out = out * 10.0 ** ((target.true_peak_dbtp - peak) / 20.0)
        now, peak = integrated_loudness(out, sample_rate), target.true_peak_dbtp
    with np.errstate(divide="ignore", invalid="ignore"):
        cut = np.abs(out).max() and float(20 * np.log10(np.abs(out).max() / np.abs(scaled).max()))
    result = torch.from_numpy(out).to(samples.dtype if isinstance(samples, torch.Tensor) else torch.float32)
    return result.reshape(samples.shape), {
        "lufs_before": round(before, 2), "lufs": round(now, 2), "gain_db": round(gain_db, 2),
        "true_peak_dbtp": round(peak, 2), "limited_db": round(min(0.0, cut), 2)}
