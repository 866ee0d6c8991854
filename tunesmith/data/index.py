"""Index a folder of the user's own audio into the clip manifest format.

Captions come from sidecar files (``song.txt``, or ``song.json`` with ``caption`` and
``tags``) or from one CSV/JSONL table with a ``file`` (or ``path``) column and a ``caption``
column (other columns become tags).  Files that cannot be used (unreadable, empty,
silent, NaN, too short, a bad sidecar, a fifo or device) are skipped and listed with the
reason; nothing stops the run.  With resampling, channel conversion, segmentation or
loudness normalisation requested, processed clips are written under ``OUT/audio``;
otherwise the manifest points at the original files.

Audio is read in blocks of :data:`BLOCK_FRAMES`, never whole, so a two-hour file costs
no more memory than a short one.  This module needs only the base install (no music21,
mido or FluidSynth): it imports nothing from the corpus builder.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from tunesmith.audio import AUDIO_SUFFIXES, resample, to_channels
from tunesmith.errors import UserError
from tunesmith.files import atomic_path, atomic_write_text
from tunesmith.data.manifest import (SPLITS, ManifestError, read_table, slug, split_of, stable_hash,
                                     write_manifest)
from tunesmith.data.sources import scan_folder

SILENCE_DB = -60.0
PEAK = 0.99  # loudness normalisation limits the peak to this, as audio.normalize_loudness does
BLOCK_FRAMES = 1 << 16  # frames decoded at a time: memory is bounded by this, not by the file
MAX_SIDECAR_BYTES = 1 << 20  # a caption file larger than this is a mistake, not a caption


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

    def __post_init__(self) -> None:
        # `not x > 0` also refuses NaN, which argparse's float() lets through
        if self.sample_rate is not None and not self.sample_rate > 0:
            raise UserError(f"--sample-rate must be positive, got {self.sample_rate}")
        if self.channels not in (None, 1, 2):
            raise UserError(f"--channels must be 1 or 2, got {self.channels}")
        if self.segment_seconds is not None and not (self.segment_seconds > 0 and math.isfinite(self.segment_seconds)):
            raise UserError(f"--segment must be a positive number of seconds, got {self.segment_seconds}")
        if not (self.min_seconds >= 0 and math.isfinite(self.min_seconds)):
            raise UserError(f"--min-seconds must be zero or more, got {self.min_seconds}")
        if self.loudness_db is not None and not self.loudness_db < 0:
            raise UserError(f"--loudness-db must be a negative dBFS level, got {self.loudness_db}")

    @property
    def writes_audio(self) -> bool:
        return any(x is not None for x in (self.sample_rate, self.channels, self.segment_seconds, self.loudness_db))


class SkipFile(Exception):
    """A file that is left out; the message is the reason shown in the report."""


# ---------------------------------------------------------------------------
# captions


def read_caption_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a CSV/JSONL caption table keyed by their file path (as written in the table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    table = {}
    for i, row in enumerate(read_table(path)):
        key = row.get("file") or row.get("path") or row.get("audio")
        if not key or "caption" not in row:
            raise ManifestError(f"{path}: row {i + 1} needs a 'file' (or 'path') and a 'caption' column")
        table[str(key)] = row | {"_row": i + 1}
    return table


def _sidecar_text(path: Path) -> str:
    """A sidecar's text; an unreadable, huge or non-UTF-8 one skips its audio file, not the run."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError as err:
        raise SkipFile(f"sidecar {path.name} is not readable ({err.strerror or err})") from None
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SkipFile(f"sidecar {path.name} is larger than {MAX_SIDECAR_BYTES // 2**20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SkipFile(f"sidecar {path.name} is not UTF-8 text (byte {err.start})") from None


def _sidecar_json(path: Path) -> tuple[str, dict, str | None]:
    """(caption, tags, split) of a ``.json`` sidecar, each field checked for its type."""
    try:
        data = json.loads(_sidecar_text(path))
    except json.JSONDecodeError as err:
        raise SkipFile(f"sidecar {path.name} is not valid JSON ({err.msg})") from None
    except RecursionError:
        raise SkipFile(f"sidecar {path.name} is nested too deeply") from None
    if not isinstance(data, dict):
        raise SkipFile(f"sidecar {path.name} is not a JSON object")
    caption, tags, split = data.get("caption"), data.get("tags", {}), data.get("split")
    if not isinstance(caption, str) or not caption.strip():
        raise SkipFile(f"sidecar {path.name} has no 'caption' text")
    if tags is None:
        tags = {}
    if not isinstance(tags, dict):
        raise SkipFile(f"sidecar {path.name}: 'tags' must be an object, got {type(tags).__name__}")
    if split is not None and not isinstance(split, str):
        raise SkipFile(f"sidecar {path.name}: 'split' must be a string")
    return caption.strip(), tags, split


def caption_for(path: Path, rel: str, table: dict[str, dict[str, Any]], default: str | None) -> tuple[str, dict, str | None]:
    """(caption, tags, split or None) from the table, a sidecar .json/.txt, or the default."""
    row = table.get(rel) or table.get(path.name)
    if row is not None:
        text = row["caption"]
        if not isinstance(text, str) or not text.strip():
            raise SkipFile(f"caption table row {row['_row']} has no caption text")
        tags = row.get("tags") if isinstance(row.get("tags"), dict) else {
            k: v for k, v in row.items()
            if k not in ("file", "path", "audio", "caption", "split", "tags", "_row") and v not in ("", None)}
        split = row.get("split") or None
        if split is not None and not isinstance(split, str):
            raise SkipFile(f"caption table row {row['_row']}: 'split' must be a string")
        return text.strip(), tags, split
    side_json, side_txt = path.with_suffix(".json"), path.with_suffix(".txt")
    if side_json.is_file():
        return _sidecar_json(side_json)
    if side_txt.is_file():
        text = _sidecar_text(side_txt).strip()
        if text:
            return text, {}, None
    if default is not None:
        return default, {}, None
    raise SkipFile("no caption (no sidecar .txt/.json, no row in the caption table)")


# ---------------------------------------------------------------------------
# audio, in blocks


def _db(sum_squares: float, count: int) -> float:
    """RMS level in dBFS of ``count`` samples whose squares sum to ``sum_squares`` (as audio.rms_db)."""
    return 20 * math.log10(max(math.sqrt(sum_squares / max(count, 1)), 1e-10))


def check_file(f: sf.SoundFile, min_seconds: float) -> int:
    """Frames of an open file after one pass in blocks; refuses unusable audio with a reason."""
    frames, squares = 0, 0.0
    while True:
        block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if not len(block):
            break
        if not np.isfinite(block).all():
            raise SkipFile("contains NaN or infinite samples")
        frames += len(block)
        squares += float(np.square(block, dtype=np.float64).sum())
    if frames == 0:
        raise SkipFile("empty (no samples)")
    if frames / f.samplerate < min_seconds:
        raise SkipFile(f"too short ({frames / f.samplerate:.2f} s < {min_seconds} s)")
    if _db(squares, frames * f.channels) < SILENCE_DB:
        raise SkipFile(f"silent (below {SILENCE_DB:.0f} dBFS)")
    return frames


def _read_range(f: sf.SoundFile, lo: int, hi: int, total: int) -> np.ndarray:
    """Frames [lo, hi) as float32 (n, C); zeros where the range reaches outside the file."""
    a, b = max(lo, 0), min(hi, total)
    try:
        f.seek(a)
        data = f.read(b - a, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SkipFile(f"unreadable: {str(err).strip()[:120]}") from None
    if len(data) != b - a:
        raise SkipFile("unreadable: the file ended early on a second read")
    return np.pad(data, ((a - lo, hi - b), (0, 0))) if (lo, hi) != (a, b) else data


def clip_blocks(f: sf.SoundFile, a: int, b: int, total: int, sample_rate: int | None,
                channels: int | None) -> Iterator[torch.Tensor]:
    """Frames [a, b) of ``f`` as (C, n) blocks, mixed to ``channels`` and resampled to ``sample_rate``.

    Each block is resampled with as many neighbouring frames as the filter reaches, so
    the blocks join into exactly what resampling the whole file gives, and memory stays
    at one block.
    """
    sr = f.samplerate
    if sample_rate is None or sample_rate == sr:
        up = down = 1
    else:  # the ratio audio.resample uses
        ratio = Fraction(sample_rate, sr).limit_denominator(1000)
        up, down = ratio.numerator, ratio.denominator
    reach = 0 if up == down else (-(-10 * max(up, down) // up) + 1)  # scipy's resample_poly filter half-length
    context = -(-reach // down) * down  # a multiple of `down`, so block outputs land on whole output samples
    step = -(-BLOCK_FRAMES // down) * down
    for s in range(a, b, step):
        e = min(s + step, b)
        data = _read_range(f, s - context, e + context, total)
        wav = torch.from_numpy(np.ascontiguousarray(data.T))
        if channels is not None:
            wav = to_channels(wav, channels)
        if up == down:
            yield wav
            continue
        wav = resample(wav, sr, sample_rate).clamp(-1, 1)
        first = (s - a) * up // down  # output samples of the clip before this block
        count = -(-(e - a) * up // down) - first
        offset = context * up // down
        yield wav[:, offset:offset + count]


def write_clip(f: sf.SoundFile, a: int, b: int, total: int, target: Path, options: IndexOptions) -> tuple[int, int, int] | None:
    """Process frames [a, b) into ``target`` (FLAC); (frames, sample rate, channels), or None when silent.

    Two passes over the blocks: the first measures level and peak (silence check, loudness
    gain), the second writes; the clip is never whole in memory.
    """
    rate = options.sample_rate or f.samplerate
    squares, count, peak, width = 0.0, 0, 0.0, 0
    for block in clip_blocks(f, a, b, total, options.sample_rate, options.channels):
        squares += float(block.double().pow(2).sum())
        count += block.numel()
        peak = max(peak, float(block.abs().max())) if block.numel() else peak
        width = block.shape[0]
    level = _db(squares, count)
    if level < SILENCE_DB:
        return None
    gain = 1.0
    if options.loudness_db is not None:  # as audio.normalize_loudness: RMS to the target, then limit the peak
        gain = 10 ** ((options.loudness_db - level) / 20)
        if peak * gain > PEAK:
            gain = PEAK / peak
    target.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    try:  # reading errors are SkipFile (see _read_range); these are writing errors
        with atomic_path(target) as tmp, sf.SoundFile(tmp, "w", rate, width, subtype="PCM_16", format="FLAC") as out:
            for block in clip_blocks(f, a, b, total, options.sample_rate, options.channels):
                out.write((block * gain).clamp(-1, 1).numpy().T)
                frames += block.shape[-1]
    except (sf.LibsndfileError, RuntimeError) as err:  # a full disk is "System error" here: the run stops
        raise OSError(f"cannot write audio to {target}: {err}") from None
    return frames, rate, width


def _segments(total: int, sr: int, segment_seconds: float | None, min_seconds: float) -> list[tuple[int, int]]:
    """Consecutive [start, end) frame ranges; a tail shorter than ``min_seconds`` is dropped."""
    if segment_seconds is None:
        return [(0, total)]
    size = max(1, int(round(segment_seconds * sr)))
    out = [(a, min(a + size, total)) for a in range(0, total, size)]
    return [(a, b) for a, b in out if (b - a) / sr >= min_seconds]


# ---------------------------------------------------------------------------
# the run


def file_ids(rels: list[str]) -> dict[str, str]:
    """A clip id per relative path; paths that slug alike (``a b.wav``, ``a-b.wav``) get a hash each."""
    counts = Counter(slug(r).casefold() for r in rels)
    return {r: slug(r) if counts[slug(r).casefold()] == 1 else f"{slug(r)}~{stable_hash(r) % 16**8:08x}"
            for r in rels}


def index_folder(options: IndexOptions, progress: bool = True) -> dict[str, Any]:
    """Write ``manifest.jsonl`` and ``index_report.json``; returns the report."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    out = Path(options.out) if options.out else folder
    out.mkdir(parents=True, exist_ok=True)
    table = read_caption_table(options.captions) if options.captions else {}
    files, skipped = scan_folder(folder, AUDIO_SUFFIXES, exclude=out / "audio")
    seen = len(files) + sum(1 for s in skipped if not s["reason"].startswith("folder"))
    rels = [str(path.relative_to(folder)) for path in files]
    ids = file_ids(rels)
    records: list[dict[str, Any]] = []
    for path, rel in tqdm(list(zip(files, rels)), desc="index", unit="file", disable=not progress):
        try:
            records += _index_file(path, rel, ids[rel], options, table, out)
        except SkipFile as reason:
            skipped.append({"file": rel, "reason": str(reason)})
    skipped.sort(key=lambda s: s["file"])
    write_manifest(out / "manifest.jsonl", records)
    report = {"files": seen, "indexed_files": seen - len(skipped), "clips": len(records),
              "hours": round(sum(r["duration"] for r in records) / 3600, 4), "skipped": skipped}
    atomic_write_text(out / "index_report.json", json.dumps(report, indent=2) + "\n")
    return report


def _index_file(path: Path, rel: str, clip_id: str, options: IndexOptions, table: dict,
                out: Path) -> list[dict[str, Any]]:
    caption, tags, split = caption_for(path, rel, table, options.default_caption)
    if split is not None and split not in SPLITS:
        raise SkipFile(f"unknown split '{split}'")
    split = split or split_of(rel)
    try:
        with sf.SoundFile(str(path)) as f:
            return _index_audio(f, path, clip_id, rel, caption, tags, split, options, out)
    except (SkipFile, OSError):
        raise  # OSError: writing to OUT failed (a full disk, permissions), the user's to fix
    except Exception as err:  # libsndfile raises several types for corrupt or truncated files
        raise SkipFile(f"unreadable: {str(err).strip()[:120]}") from None


def _index_audio(f: sf.SoundFile, path: Path, clip_id: str, rel: str, caption: str, tags: dict, split: str,
                 options: IndexOptions, out: Path) -> list[dict[str, Any]]:
    total = check_file(f, options.min_seconds)
    sr = f.samplerate
    if not options.writes_audio:
        return [{"id": clip_id, "audio": os.path.relpath(path, out), "caption": caption, "tags": tags,
                 "duration": round(total / sr, 4), "sample_rate": sr, "channels": f.channels,
                 "split": split, "source": rel}]
    records = []
    for k, (a, b) in enumerate(_segments(total, sr, options.segment_seconds, options.min_seconds)):
        target = out / "audio" / f"{clip_id}-{k}.flac"
        written = write_clip(f, a, b, total, target, options)
        if written is None:
            continue  # a silent stretch of an otherwise good file
        frames, rate, width = written
        records.append({"id": f"{clip_id}-{k}", "audio": str(target.relative_to(out)), "caption": caption, "tags": tags,
                        "duration": round(frames / rate, 4), "sample_rate": rate, "channels": width,
                        "split": split, "source": rel, "offset": round(a / sr, 4)})
    if not records:
        raise SkipFile("no non-silent segment long enough")
    return records
