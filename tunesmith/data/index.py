"""Index a folder of the user's own audio into the clip manifest format.

Captions come from sidecar files (``song.txt``, or ``song.json`` with ``caption`` and
``tags``) or from one CSV/JSONL table with a ``file`` (or ``path``) column and a ``caption``
column (other columns become tags).  Files that cannot be used (unreadable, empty,
silent, NaN, too short) are skipped and listed with the reason; nothing stops the run.
With resampling, channel conversion, segmentation or loudness normalisation requested,
processed clips are written under ``OUT/audio``; otherwise the manifest points at the
original files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from tunesmith.audio import normalize_loudness, resample, rms_db, save_audio, to_channels
from tunesmith.files import atomic_write_text
from tunesmith.data.corpus import slug, split_of
from tunesmith.data.manifest import SPLITS, read_table, write_manifest

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".opus")
SILENCE_DB = -60.0


@dataclass
class IndexOptions:
    folder: str
    out: str | None = None  # default: the folder itself
    captions: str | None = None  # CSV/JSONL table of captions
    sample_rate: int | None = None  # resample to this rate
    channels: int | None = None  # mix to mono (1) or duplicate to stereo (2)
    segment_seconds: float | None = None  # cut into clips of at most this length
    min_seconds: float = 1.0
    loudness_db: float | None = None  # normalise each clip to this RMS level (dBFS)
    default_caption: str | None = None  # for files without a caption (else they are skipped)

    @property
    def writes_audio(self) -> bool:
        return any(x is not None for x in (self.sample_rate, self.channels, self.segment_seconds, self.loudness_db))


class SkipFile(Exception):
    """A file that is left out; the message is the reason shown in the report."""


def read_caption_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a CSV/JSONL caption table keyed by their file path (as written in the table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    rows = read_table(path)
    table = {}
    for i, row in enumerate(rows):
        key = row.get("file") or row.get("path") or row.get("audio")
        if not key or "caption" not in row:
            raise ValueError(f"{path}: row {i + 1} needs a 'file' (or 'path') and a 'caption' column")
        table[str(key)] = row
    return table


def caption_for(path: Path, rel: str, table: dict[str, dict[str, Any]], default: str | None) -> tuple[str, dict, str | None]:
    """(caption, tags, split or None) from the table, a sidecar .json/.txt, or the default."""
    row = table.get(rel) or table.get(path.name)
    if row is not None:
        tags = row.get("tags") if isinstance(row.get("tags"), dict) else {
            k: v for k, v in row.items() if k not in ("file", "path", "audio", "caption", "split", "tags") and v != ""}
        return str(row["caption"]), tags, row.get("split") or None
    side_json, side_txt = path.with_suffix(".json"), path.with_suffix(".txt")
    if side_json.is_file():
        try:
            data = json.loads(side_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SkipFile(f"sidecar {side_json.name} is not valid JSON ({err.msg})") from None
        if not isinstance(data, dict) or not str(data.get("caption", "")).strip():
            raise SkipFile(f"sidecar {side_json.name} has no 'caption'")
        return str(data["caption"]).strip(), dict(data.get("tags", {})), data.get("split")
    if side_txt.is_file():
        text = side_txt.read_text(encoding="utf-8").strip()
        if text:
            return text, {}, None
    if default is not None:
        return default, {}, None
    raise SkipFile("no caption (no sidecar .txt/.json, no row in the caption table)")


def load_checked(path: Path, min_seconds: float) -> tuple[np.ndarray, int]:
    """Decode a file as float32 (frames, channels) and refuse unusable audio with a reason."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types for corrupt or truncated files
        raise SkipFile(f"unreadable: {str(err).strip()[:120]}") from None
    if data.shape[0] == 0:
        raise SkipFile("empty (no samples)")
    if not np.isfinite(data).all():
        raise SkipFile("contains NaN or infinite samples")
    if data.shape[0] / sr < min_seconds:
        raise SkipFile(f"too short ({data.shape[0] / sr:.2f} s < {min_seconds} s)")
    if rms_db(torch.from_numpy(data)) < SILENCE_DB:
        raise SkipFile(f"silent (below {SILENCE_DB:.0f} dBFS)")
    return data, sr


def _segments(total: int, sr: int, segment_seconds: float | None, min_seconds: float) -> list[tuple[int, int]]:
    """Consecutive [start, end) sample ranges; a tail shorter than ``min_seconds`` is dropped."""
    if segment_seconds is None:
        return [(0, total)]
    size = int(round(segment_seconds * sr))
    out = [(a, min(a + size, total)) for a in range(0, total, size)]
    return [(a, b) for a, b in out if (b - a) / sr >= min_seconds]


def index_folder(options: IndexOptions, progress: bool = True) -> dict[str, Any]:
    """Write ``manifest.jsonl`` and ``index_report.json``; returns the report."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    out = Path(options.out) if options.out else folder
    out.mkdir(parents=True, exist_ok=True)
    table = read_caption_table(options.captions) if options.captions else {}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and out / "audio" not in p.parents)
    records, skipped = [], []
    for path in tqdm(files, desc="index", unit="file", disable=not progress):
        rel = str(path.relative_to(folder))
        try:
            records += _index_file(path, rel, options, table, out)
        except SkipFile as reason:
            skipped.append({"file": rel, "reason": str(reason)})
    write_manifest(out / "manifest.jsonl", records)
    report = {"files": len(files), "indexed_files": len(files) - len(skipped), "clips": len(records),
              "hours": round(sum(r["duration"] for r in records) / 3600, 4), "skipped": skipped}
    atomic_write_text(out / "index_report.json", json.dumps(report, indent=2) + "\n")
    return report


def _index_file(path: Path, rel: str, options: IndexOptions, table: dict, out: Path) -> list[dict[str, Any]]:
    caption, tags, split = caption_for(path, rel, table, options.default_caption)
    if split is not None and split not in SPLITS:
        raise SkipFile(f"unknown split '{split}'")
    data, sr = load_checked(path, options.min_seconds)
    split = split or split_of(rel)
    if not options.writes_audio:
        return [{"id": slug(rel), "audio": os.path.relpath(path, out), "caption": caption, "tags": tags,
                 "duration": round(data.shape[0] / sr, 4), "sample_rate": sr, "channels": data.shape[1],
                 "split": split, "source": rel}]
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    if options.channels is not None:
        wav = to_channels(wav, options.channels)
    if options.sample_rate is not None and options.sample_rate != sr:
        wav, sr = resample(wav, sr, options.sample_rate).clamp(-1, 1), options.sample_rate
    records = []
    for k, (a, b) in enumerate(_segments(wav.shape[-1], sr, options.segment_seconds, options.min_seconds)):
        clip = wav[:, a:b]
        if rms_db(clip) < SILENCE_DB:
            continue  # a silent stretch of an otherwise good file
        if options.loudness_db is not None:
            clip = normalize_loudness(clip, options.loudness_db)
        clip_id = f"{slug(rel)}-{k}"
        target = out / "audio" / f"{clip_id}.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_audio(target, clip, sr)
        records.append({"id": clip_id, "audio": str(target.relative_to(out)), "caption": caption, "tags": tags,
                        "duration": round(clip.shape[-1] / sr, 4), "sample_rate": sr, "channels": clip.shape[0],
                        "split": split, "source": rel, "offset": round(a / sr, 4)})
    if not records:
        raise SkipFile("no non-silent segment long enough")
    return records
