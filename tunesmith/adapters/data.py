"""A folder of the user's audio -> captioned clips -> held-out split by file -> a frame cache.

    prepare_folder(folder, run_dir, codec, kind="latents")   # for the DiT; "tokens" for the LM

1. index (``tunesmith.data.index``): every usable file, resampled to the codec's rate and
   channels, cut into clips of ``segment_seconds``; unusable files skipped with a reason;
2. captions: the folder's own (sidecars, or a caption table) where there are any, else the
   time-aware captioner's (:mod:`tunesmith.data.captioner`): the clip's summary as the caption
   (families, key, tempo: the shape of a prompt), its time-stamped sections in the tags;
3. split by file, never by clip: the held-out clips come from files the training never
   hears (clips of one recording are too alike to tell generalisation from memory); a folder
   of one file holds out its last clip instead;
4. the codec's latents or tokens of every clip, once, in a frame cache (``tunesmith.data.cache``).

Everything lands in ``run_dir`` with a digest of the folder (names, sizes, times) and the
settings; a second run on an unchanged folder (a resume) reuses it without decoding again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tunesmith.audio import load_audio
from tunesmith.data.cache import write_frame_cache
from tunesmith.adapters.autocaption import caption_of
from tunesmith.data.captioner import TimeCaptioner
from tunesmith.data.index import AUDIO_SUFFIXES, IndexOptions, index_folder
from tunesmith.data.manifest import read_manifest, stable_hash, write_manifest
from tunesmith.data.sources import scan_folder
from tunesmith.errors import UserError
from tunesmith.files import atomic_write_text

AUTO = "auto"
_UNCAPTIONED = "\x00uncaptioned"  # the indexer's default caption: marks clips the captioner fills in
PREPARED = "data.json"


@dataclass
class DataOptions:
    captions: str = AUTO  # "auto", or a CSV/JSONL caption table (files it lacks are captioned automatically)
    segment_seconds: float = 30.0
    min_seconds: float = 2.0
    valid_fraction: float = 0.1  # of the audio, in whole files, held out for validation and early stopping
    seed: int = 0


@dataclass
class PreparedData:
    cache_dir: Path
    manifest: Path
    train_clips: int
    valid_clips: int
    train_files: list[str]
    valid_files: list[str]
    hours: float
    auto_captioned: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False

    def summary(self) -> dict[str, Any]:
        return {"train_clips": self.train_clips, "valid_clips": self.valid_clips, "train_files": len(self.train_files),
                "valid_files": self.valid_files, "hours": self.hours, "auto_captioned": self.auto_captioned,
                "skipped": len(self.skipped)}


def folder_digest(folder: Path, codec_name: str, kind: str, options: DataOptions) -> tuple[str, int]:
    """What the prepared data depends on (every audio file's name, size and time, and the
    settings) as a digest, and how many audio files there are."""
    files, _ = scan_folder(folder, AUDIO_SUFFIXES)
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    table = options.captions
    if table != AUTO and Path(table).is_file():
        table = hashlib.sha256(Path(table).read_bytes()).hexdigest()
    text = json.dumps([listing, codec_name, kind, {**asdict(options), "captions": table}])
    return hashlib.sha256(text.encode()).hexdigest(), len(files)


def held_out_files(durations: dict[str, float], fraction: float, seed: int) -> list[str]:
    """Whole files holding about ``fraction`` of the audio (at least one file when there are two
    or more, never all), taken in an order seeded by a hash of their names: the same folder and
    seed hold out the same files, and a short stinger alone does not make the validation set."""
    files = sorted(durations)
    if len(files) < 2 or fraction <= 0:
        return []
    target = fraction * sum(durations.values())
    chosen: list[str] = []
    for name in sorted(files, key=lambda f: stable_hash(f"{seed}:{f}")):
        if len(chosen) == len(files) - 1 or (chosen and sum(durations[c] for c in chosen) >= target):
            break
        chosen.append(name)
    return sorted(chosen)


def prepare_folder(folder: str | Path, run_dir: str | Path, codec: Any, codec_name: str, kind: str,
                   options: DataOptions | None = None, *, captioner: Callable[[], Callable[..., Any]] | None = None,
                   progress: bool = True, log: Callable[[str], None] | None = None) -> PreparedData:
    """Index, caption, split and cache ``folder`` under ``run_dir`` (reused when unchanged)."""
    options = options or DataOptions()
    log = log or (lambda text: print(text, file=sys.stderr))
    folder, run_dir = Path(folder), Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    if options.captions != AUTO and not Path(options.captions).is_file():
        raise UserError(f"caption table not found: {options.captions} (--captions takes 'auto' or a CSV/JSONL file)")
    digest, count = folder_digest(folder, codec_name, kind, options)
    if count == 0:
        raise UserError(f"no audio files in {folder} (looked for {', '.join(AUDIO_SUFFIXES)})")
    done = run_dir / PREPARED
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("digest") == digest and (run_dir / "cache" / "meta.json").is_file():
            data = PreparedData(**{**saved["data"], "cache_dir": run_dir / "cache", "manifest": Path(saved["data"]["manifest"]),
                                   "reused": True})
            log(f"data: reusing the prepared clips in {run_dir} (the folder has not changed)")
            return data

    index_dir = run_dir / "index"
    report = index_folder(IndexOptions(str(folder), out=str(index_dir),
                                       captions=None if options.captions == AUTO else options.captions,
                                       sample_rate=int(codec.sample_rate), channels=int(codec.channels),
                                       segment_seconds=options.segment_seconds, min_seconds=options.min_seconds,
                                       default_caption=_UNCAPTIONED), progress=progress)
    records = read_manifest(index_dir / "manifest.jsonl")
    if not records:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in report["skipped"][:3])
        raise UserError(f"no usable audio in {folder}: all {report['files']} files were skipped ({reasons})")
    for skip in report["skipped"]:
        log(f"skipped {skip['file']}: {skip['reason']}")

    auto = [r for r in records if r["caption"] == _UNCAPTIONED]
    if auto:
        tagger = captioner() if captioner is not None else TimeCaptioner()
        for record in tqdm(auto, desc="caption", unit="clip", disable=not progress):
            audio = load_audio(index_dir / record["audio"])
            caption, tags = tagger(audio.samples, audio.sample_rate)
            # train on the summary ("cello, strings, D minor, 96 BPM"), the shape of what people type;
            # the time-stamped sections stay in the tags ("segments", "timed_prompt") to read and for
            # section training
            record["caption"] = caption_of(tags) if tags.get("segments") else caption
            record["tags"] = {**tags, **(record.get("tags") or {})}
            record["caption_source"] = "auto"

    durations: dict[str, float] = {}
    for r in records:
        durations[r["source"]] = durations.get(r["source"], 0.0) + float(r["duration"])
    valid_files = held_out_files(durations, options.valid_fraction, options.seed)
    for r in records:
        r["split"] = "valid" if r["source"] in valid_files else "train"
    if not valid_files and len(records) >= 2 and options.valid_fraction > 0:  # one file: hold out its last clip
        records[-1]["split"] = "valid"
    manifest = write_manifest(run_dir / "manifest.jsonl", records)

    cache_dir = run_dir / "cache"
    meta = {"kind": kind, "model": codec_name, "frame_rate": float(codec.frame_rate),
            "sample_rate": int(codec.sample_rate), "channels": int(codec.channels)}
    if kind == "tokens":
        meta["num_codebooks"] = int(codec.num_codebooks)
    else:
        meta["latent_dim"] = int(codec.latent_dim)
    if (cache_dir / "meta.json").is_file():
        (cache_dir / "meta.json").unlink()  # a cache of another codec or folder: replaced, split by split
    for split in ("train", "valid"):
        chosen = [r for r in records if r["split"] == split]
        if chosen:
            write_frame_cache(cache_dir, split, _encoded(chosen, index_dir, codec, kind, split, progress), meta)
        else:
            for stale in (cache_dir / f"{split}.safetensors", cache_dir / f"{split}.jsonl"):
                stale.unlink(missing_ok=True)

    train = [r for r in records if r["split"] == "train"]
    data = PreparedData(cache_dir=cache_dir, manifest=manifest, train_clips=len(train),
                        valid_clips=len(records) - len(train),
                        train_files=sorted({r["source"] for r in train}), valid_files=valid_files,
                        hours=round(sum(r["duration"] for r in records) / 3600, 4), auto_captioned=len(auto),
                        skipped=report["skipped"])
    saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(data).items() if k != "reused"}
    atomic_write_text(done, json.dumps({"digest": digest, "data": saved}, indent=2) + "\n")
    return data


def cache_rows(frames: torch.Tensor, kind: str) -> np.ndarray:
    """A clip's encoded frames (width, T) as the frame cache stores them: (T, width), tokens as integers."""
    array = frames.numpy() if kind == "latents" else frames.to(torch.int64).numpy()
    return np.ascontiguousarray(array.T)


def _encoded(records: list[dict[str, Any]], index_dir: Path, codec: Any, kind: str, split: str, progress: bool):
    """(frames (T, width), info) per clip: the codec's posterior-mean latents or its tokens."""
    for record in tqdm(records, desc=f"encode {split}", unit="clip", disable=not progress):
        audio = load_audio(index_dir / record["audio"])
        wav = audio.samples[None].float()
        with torch.inference_mode():
            frames = codec.encode_long(wav)[0]  # (width, T)
        yield cache_rows(frames, kind), {"id": record["id"], "caption": record["caption"],
                                              "tags": record.get("tags") or {}, "duration": record["duration"]}
