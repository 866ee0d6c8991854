"""Seeded music-like test signals: harmonic notes with envelopes plus noise hits.

For tests and smoke runs, where no corpus exists: each clip is a pure function of
(seed, index), so it needs no files and resumes exactly like the real dataset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def render_clip(rng: np.random.Generator, num_samples: int, sample_rate: int, channels: int = 1) -> torch.Tensor:
    """A few overlapping harmonic notes (random pitch, timbre, ADSR) and decaying noise bursts."""
    t = np.arange(num_samples) / sample_rate
    out = np.zeros(num_samples)
    for _ in range(int(rng.integers(2, 7))):
        f0 = 440.0 * 2 ** ((rng.integers(36, 85) - 69) / 12)
        start = rng.uniform(0, 0.7) * num_samples / sample_rate
        length = rng.uniform(0.1, 0.8) * num_samples / sample_rate
        tone = np.zeros(num_samples)
        rolloff = rng.uniform(0.5, 2.0)
        for h in range(1, 12):
            if h * f0 > sample_rate / 2 - 500:
                break
            tone += np.sin(2 * math.pi * h * f0 * t + rng.uniform(0, 2 * math.pi)) / h**rolloff
        local = t - start
        attack = np.clip(local / 0.01, 0, 1)
        decay = np.exp(-np.clip(local, 0, None) * rng.uniform(1, 8))
        gate = (local >= 0) & (local < length)
        out += tone * attack * decay * gate * rng.uniform(0.05, 0.3)
    for _ in range(int(rng.integers(0, 4))):
        start = int(rng.uniform(0, 0.9) * num_samples)
        n = num_samples - start
        burst = rng.standard_normal(n) * np.exp(-np.arange(n) / sample_rate * rng.uniform(20, 60))
        out[start:] += burst * rng.uniform(0.02, 0.15)
    out = out / max(1.0, float(np.abs(out).max()) / 0.95)
    wav = torch.from_numpy(out.astype(np.float32))[None]
    return wav.expand(channels, -1).contiguous()


class SyntheticClips(Dataset):
    """``num_clips`` seeded synthetic clips in the AudioClipDataset item format."""

    def __init__(self, num_clips: int, segment_seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> None:
        if num_clips < 1 or segment_seconds <= 0:
            raise ValueError("need num_clips >= 1 and segment_seconds > 0")
        self.num_clips, self.sample_rate, self.channels, self.seed = num_clips, sample_rate, channels, seed
        self.num_samples = int(round(segment_seconds * sample_rate))

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng([self.seed, index]))

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        audio = render_clip(rng, self.num_samples, self.sample_rate, self.channels)
        return {"audio": audio, "caption": "synthetic tones", "tags": {}, "id": f"synthetic-{index}"}
