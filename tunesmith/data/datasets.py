"""Clip datasets over a manifest: random fixed-length crops read straight from disk.

Only the crop is read (soundfile seeks inside the file), so an epoch costs what the
model consumes, not what the corpus stores.  Clips shorter than the segment are
zero-padded at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from tunesmith.audio import AudioError, resample, to_channels
from tunesmith.errors import UserError
from tunesmith.data.manifest import SPLITS, read_manifest, resolve_audio


class AudioClipDataset(Dataset):
    """Fixed-length audio segments with their captions and tags from one split of a manifest."""

    def __init__(
        self,
        manifest_path: str | Path,
        split: str | None = "train",
        sample_rate: int = 24000,
        channels: int = 1,
        segment_seconds: float | None = 2.0,
    ) -> None:
        if split is not None and split not in SPLITS:
            raise UserError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)} or None)")
        if segment_seconds is not None and segment_seconds <= 0:
            raise UserError(f"segment_seconds must be positive, got {segment_seconds}")
        if channels not in (1, 2):
            raise UserError(f"channels must be 1 or 2, got {channels}")
        self.manifest_path = Path(manifest_path)
        records = read_manifest(self.manifest_path)
        self.records = [r for r in records if split is None or r["split"] == split]
        if not self.records:
            raise UserError(f"manifest {manifest_path} has no clips in split '{split}'")
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_seconds = segment_seconds

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The segment starting at the clip's beginning (deterministic, for validation)."""
        return self._load(index, start_fraction=0.0)

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """A segment at a random position drawn from ``rng``."""
        return self._load(index, start_fraction=float(rng.random()))

    def _load(self, index: int, start_fraction: float) -> dict[str, Any]:
        record = self.records[index]
        path = resolve_audio(self.manifest_path, record)
        audio = read_segment(path, self.segment_seconds, start_fraction, self.sample_rate, self.channels)
        return {"audio": audio, "caption": record["caption"], "tags": record["tags"], "id": record["id"]}


class AlternateAudioDataset(Dataset):
    """The clips of ``primary``, each item read from ``alternate`` instead with probability ``p``.

    ``alternate`` holds other versions of the same clips (the same ids), such as their
    round trips through a codec (``tunesmith codec roundtrip``): an augmentation that
    teaches a model to judge the music, not the codec.  Validation (``dataset[i]``)
    always reads ``primary``.
    """

    def __init__(self, primary: AudioClipDataset, alternate: AudioClipDataset, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"p must be in [0, 1], got {p}")
        by_id = {r["id"]: i for i, r in enumerate(alternate.records)}
        missing = [r["id"] for r in primary.records if r["id"] not in by_id]
        if missing:
            raise UserError(f"{alternate.manifest_path} lacks {len(missing)} clips of {primary.manifest_path}, e.g. {missing[0]}")
        self.primary, self.alternate, self.p = primary, alternate, p
        self.records = primary.records
        self._alternate_index = [by_id[r["id"]] for r in primary.records]

    def __len__(self) -> int:
        return len(self.primary)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.primary[index]

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if rng.random() < self.p:
            return self.alternate.get_item(self._alternate_index[index], rng)
        return self.primary.get_item(index, rng)


def read_segment(
    path: Path | BinaryIO,
    segment_seconds: float | None,
    start_fraction: float,
    sample_rate: int,
    channels: int,
) -> torch.Tensor:
    """Read ``segment_seconds`` of ``path`` (a file or file object; whole file if None) as float32 (C, S).

    The start is ``start_fraction`` of the slack (file length minus segment); the result
    is resampled and mixed to the requested format, then zero-padded to the exact length.
    """
    try:
        with sf.SoundFile(path if hasattr(path, "read") else str(path)) as f:
            file_sr, total = f.samplerate, f.frames
            want = total if segment_seconds is None else int(round(segment_seconds * file_sr))
            start = int(start_fraction * max(0, total - want))
            f.seek(start)
            data = f.read(min(want, total - start), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(f"cannot read audio file {path}: {err}") from None
    wav = to_channels(torch.from_numpy(np.ascontiguousarray(data.T)), channels)
    if file_sr != sample_rate:
        wav = resample(wav, file_sr, sample_rate)
    length = wav.shape[-1] if segment_seconds is None else int(round(segment_seconds * sample_rate))
    if wav.shape[-1] < length:
        wav = torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))
    return wav[:, :length].contiguous()


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack equal-length segments into a batch (B, C, S) plus lists of the text fields."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    return {
        "audio": torch.stack([it["audio"] for it in items]),
        "caption": [it["caption"] for it in items],
        "tags": [it["tags"] for it in items],
        "id": [it["id"] for it in items],
    }
