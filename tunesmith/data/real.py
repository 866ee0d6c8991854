"""Real recordings for the corpus: folders of freely licensed music, cut into captioned clips.

The rendered corpus has heard SoundFonts only; free recordings (the game soundtracks Debian
packages, say) add real instruments, rooms and mixes.  Each source is a folder with one
licence; every track is cut into clips of ``clip_seconds`` (the last one kept when at least
``min_seconds``), silent clips are dropped, and each clip is captioned by a captioner the
caller gives (``tunesmith.adapters.autocaption.AutoCaptioner``: tempo, key and CLAP
instrument families; the data layer cannot import it), or gets its source's words.

Splits are by track: every clip of a track is in one split, by the same hash as the
corpus's works (:func:`tunesmith.data.manifest.split_of`), so the test split is a held-out
set of whole tracks to measure a model's distance to real music on.  The records are the
manifest format every reader shares, with ``licence``, ``offset`` and ``kind: "real"``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from tunesmith.audio import AUDIO_SUFFIXES, load_audio, rms_db, save_audio
from tunesmith.data.manifest import slug, split_of, write_manifest
from tunesmith.data.sources import scan_folder
from tunesmith.errors import UserError
from tunesmith.files import atomic_write_text

SILENCE_DB = -50.0  # a clip quieter than this (RMS, dBFS) is a gap between pieces, not music
Captioner = Callable[[torch.Tensor, int], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class RealSource:
    """A folder of recordings under one licence (e.g. one Debian game-music package)."""

    name: str  # e.g. "wesnoth-1.16-music"
    folder: str
    licence: str  # e.g. "GPL-2+"; every clip records it
    words: str = "music"  # the caption when no captioner is given

    def __post_init__(self) -> None:
        if not self.name.strip() or slug(self.name) != self.name:
            raise UserError(f"source name {self.name!r} must be a plain id (letters, digits, . _ -)")
        if not self.licence.strip():
            raise UserError(f"source {self.name}: a licence is required (it goes into every clip and the card)")


@dataclass
class RealOptions:
    out: str
    sources: list[RealSource] = field(default_factory=list)
    sample_rate: int = 24000
    channels: int = 1
    clip_seconds: float = 10.0
    min_seconds: float = 5.0
    max_clips_per_track: int | None = None  # long tracks would otherwise dominate
    audio_format: str = "flac"

    def __post_init__(self) -> None:
        if not self.sources:
            raise UserError("no sources of recordings given")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise UserError(f"source names must differ, got {names}")
        if not 0 < self.min_seconds <= self.clip_seconds:
            raise UserError(f"need 0 < min_seconds <= clip_seconds, got {self.min_seconds}, {self.clip_seconds}")
        if self.channels not in (1, 2):
            raise UserError(f"channels must be 1 or 2, got {self.channels}")
        if self.max_clips_per_track is not None and self.max_clips_per_track < 1:
            raise UserError(f"max_clips_per_track must be >= 1, got {self.max_clips_per_track}")
        if self.audio_format not in ("flac", "wav"):
            raise UserError(f"audio_format must be flac or wav, got {self.audio_format}")


def clip_spans(total: int, sample_rate: int, clip_seconds: float, min_seconds: float,
               limit: int | None = None) -> list[tuple[int, int]]:
    """[start, end) sample spans of consecutive clips of a track; a last piece shorter than
    ``min_seconds`` is dropped; at most ``limit`` clips, spread evenly over the track."""
    size, least = int(round(clip_seconds * sample_rate)), int(round(min_seconds * sample_rate))
    spans = [(a, min(a + size, total)) for a in range(0, total, size) if min(a + size, total) - a >= least]
    if limit is not None and len(spans) > limit:
        step = len(spans) / limit
        spans = [spans[int(k * step)] for k in range(limit)]
    return spans


def track_id(source: RealSource, rel: str) -> str:
    """The id a track's clips share (its split is by this id)."""
    return f"{source.name}/{rel}"


def index_recordings(options: RealOptions, captioner: Captioner | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Cut, caption and write every source's tracks; writes ``manifest.jsonl``, ``skipped.jsonl`` and
    ``real_card.json`` into ``options.out``; returns the card (hours, clips, tracks and licence per
    source, clips and hours per split)."""
    out = Path(options.out)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    jobs: list[tuple[RealSource, Path, str]] = []
    for source in options.sources:
        if not Path(source.folder).is_dir():
            raise UserError(f"source {source.name}: folder not found: {source.folder}")
        files, left_out = scan_folder(source.folder, AUDIO_SUFFIXES, exclude=out)
        skipped += [{"source": source.name, **entry} for entry in left_out]
        jobs += [(source, f, f.relative_to(source.folder).as_posix()) for f in files]
    for source, path, rel in tqdm(jobs, desc="recordings", disable=not progress):
        try:
            audio = load_audio(path, sample_rate=options.sample_rate, channels=options.channels, allow_silent=True)
        except UserError as err:
            skipped.append({"source": source.name, "file": rel, "reason": str(err)})
            continue
        track = track_id(source, rel)
        spans = clip_spans(audio.samples.shape[-1], options.sample_rate, options.clip_seconds, options.min_seconds,
                           options.max_clips_per_track)
        if not spans:
            skipped.append({"source": source.name, "file": rel, "reason": f"shorter than {options.min_seconds:g} s"})
            continue
        kept = 0
        for a, b in spans:
            wav = audio.samples[:, a:b]
            if rms_db(wav) < SILENCE_DB:
                continue
            kept += 1
            clip_id = slug(f"{source.name}-{Path(rel).with_suffix('').as_posix()}-{a // options.sample_rate:05d}")
            caption, tags = captioner(wav, options.sample_rate) if captioner is not None else (source.words, {})
            rel_audio = Path("audio") / "real" / slug(source.name) / f"{clip_id}.{options.audio_format}"
            (out / rel_audio).parent.mkdir(parents=True, exist_ok=True)
            save_audio(out / rel_audio, wav, options.sample_rate)
            records.append({
                "id": clip_id, "audio": str(rel_audio), "caption": caption, "tags": tags,
                "duration": round(wav.shape[-1] / options.sample_rate, 4), "sample_rate": options.sample_rate,
                "channels": options.channels, "split": split_of(track), "source": track,
                "offset": round(a / options.sample_rate, 4), "licence": source.licence, "kind": "real",
            })
        if not kept:
            skipped.append({"source": source.name, "file": rel, "reason": f"silent (every clip under {SILENCE_DB:g} dB)"})
    if not records:
        raise UserError(f"no usable recordings in {', '.join(s.folder for s in options.sources)}")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", records)
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped))
    card = summarize(records, options.sources)
    card["skipped"] = len(skipped)
    atomic_write_text(out / "real_card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def summarize(records: list[dict[str, Any]], sources: list[RealSource]) -> dict[str, Any]:
    """Hours, clips, tracks and licence per source; clips, tracks and hours per split."""
    per_source: dict[str, Any] = {}
    for source in sources:
        mine = [r for r in records if r["source"].startswith(source.name + "/")]
        per_source[source.name] = {"licence": source.licence, "clips": len(mine),
                                   "tracks": len({r["source"] for r in mine}),
                                   "hours": round(sum(r["duration"] for r in mine) / 3600, 4)}
    splits = Counter(r["split"] for r in records)
    return {"hours": round(sum(r["duration"] for r in records) / 3600, 4), "clips": len(records),
            "tracks": len({r["source"] for r in records}), "sources": per_source,
            "splits": {s: {"clips": splits[s], "tracks": len({r["source"] for r in records if r["split"] == s}),
                           "hours": round(sum(r["duration"] for r in records if r["split"] == s) / 3600, 4)}
                       for s in sorted(splits)}}


def mix_proportion(rendered_seconds: float, real_seconds: float, share: float) -> float:
    """How many times to repeat (or what fraction to keep of) the real clips so that they make
    ``share`` of the training audio beside ``rendered_seconds`` of renders: the weight of a
    real clip in a weighted sampler."""
    if not 0 < share < 1:
        raise UserError(f"the share of real recordings must be in (0, 1), got {share}")
    if real_seconds <= 0 or rendered_seconds <= 0 or not math.isfinite(real_seconds + rendered_seconds):
        raise UserError("mixing needs positive hours of both renders and recordings")
    return share / (1 - share) * rendered_seconds / real_seconds
