"""WebDataset tar shards: many clips per file, read as a stream.

A shard is a plain tar in the WebDataset layout: for each clip, ``<key>.flac`` (or
``.wav``, the original bytes) and ``<key>.json`` (the manifest record).  Keys have no dots,
since WebDataset splits a member name at its first dot.  Shards are byte-deterministic
(fixed member order, zero mtimes), so rebuilding gives identical files.

:class:`ShardClipDataset` streams shards (split over DataLoader workers and distributed
ranks), decodes only the crop it needs and yields the same items as
:class:`~tunesmith.data.datasets.AudioClipDataset`, so training code reads either.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tunesmith.data.datasets import AudioClipDataset, read_segment
from tunesmith.data.manifest import SPLITS, read_manifest, resolve_audio

AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")


def shard_key(clip_id: str) -> str:
    """A WebDataset-safe key: no dots or slashes."""
    return re.sub(r"[./\\\s]+", "_", clip_id)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(manifest_path: str | Path, out_dir: str | Path, splits: Iterable[str] | None = None,
                 max_count: int = 1000, max_bytes: int = 256 * 2**20) -> dict[str, list[Path]]:
    """Pack each split of a manifest into ``<split>-NNNNNN.tar`` shards; returns the paths per split."""
    if max_count < 1 or max_bytes < 1:
        raise ValueError("max_count and max_bytes must be positive")
    records = read_manifest(manifest_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(splits) if splits else [s for s in SPLITS if any(r["split"] == s for r in records)]
    written: dict[str, list[Path]] = {}
    for split in wanted:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'")
        chunk: list[tuple[str, bytes, bytes]] = []
        size, paths = 0, []
        for r in (r for r in records if r["split"] == split):
            audio_path = resolve_audio(manifest_path, r)
            audio = audio_path.read_bytes()
            ext = audio_path.suffix.lstrip(".").lower()
            meta = {k: v for k, v in r.items() if k not in ("audio", "midi")}
            member = (f"{shard_key(r['id'])}.{ext}", audio, json.dumps(meta, sort_keys=True).encode())
            if chunk and (len(chunk) >= max_count or size + len(audio) > max_bytes):
                paths.append(_write_one(out, split, len(paths), chunk))
                chunk, size = [], 0
            chunk.append(member)
            size += len(audio)
        if chunk:
            paths.append(_write_one(out, split, len(paths), chunk))
        written[split] = paths
    return written


def _write_one(out: Path, split: str, index: int, chunk: list[tuple[str, bytes, bytes]]) -> Path:
    path = out / f"{split}-{index:06d}.tar"
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, audio, meta in chunk:
            _add(tar, name, audio)
            _add(tar, name.rsplit(".", 1)[0] + ".json", meta)
    tmp.replace(path)
    return path


def iter_shard(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a shard, reading the tar as a stream."""
    key, sample = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if key is not None and k != key:
                yield key, sample
                sample = {}
            key = k
            sample[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if key is not None:
        yield key, sample


def shard_paths(source: str | Path, split: str | None = None) -> list[Path]:
    """Shards of a folder (optionally one split), a single .tar, or a list file."""
    source = Path(source)
    if source.is_file() and source.suffix == ".tar":
        return [source]
    if source.is_dir():
        paths = sorted(source.glob(f"{split}-*.tar" if split else "*.tar"))
        if paths:
            return paths
    raise FileNotFoundError(f"no shards found at {source}" + (f" for split '{split}'" if split else ""))


class ShardClipDataset(IterableDataset):
    """Random fixed-length crops streamed from shards; each epoch reshuffles shard order and samples."""

    def __init__(self, source: str | Path, split: str | None = "train", sample_rate: int = 24000, channels: int = 1,
                 segment_seconds: float | None = 2.0, seed: int = 0, shuffle_buffer: int = 64) -> None:
        self.paths = shard_paths(source, split)
        self.sample_rate, self.channels, self.segment_seconds = sample_rate, channels, segment_seconds
        self.seed, self.shuffle_buffer, self.epoch = seed, shuffle_buffer, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_paths(self) -> tuple[list[Path], int]:
        """This worker's (and rank's) share of the shards, in this epoch's order."""
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
        slot, slots = rank * workers + worker, world * workers
        return [self.paths[i] for i in order[slot::slots]], slot

    def __iter__(self) -> Iterator[dict[str, Any]]:
        paths, slot = self._my_paths()
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        buffer: list[dict[str, Any]] = []
        for path in paths:
            for key, sample in iter_shard(path):
                buffer.append(self._decode(key, sample, rng))
                if len(buffer) > self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _decode(self, key: str, sample: dict[str, bytes], rng: np.random.Generator) -> dict[str, Any]:
        ext = next((e for e in AUDIO_EXTENSIONS if e in sample), None)
        if ext is None or "json" not in sample:
            raise ValueError(f"shard sample '{key}' lacks audio or json")
        meta = json.loads(sample["json"])
        audio = read_segment(io.BytesIO(sample[ext]), self.segment_seconds, float(rng.random()),
                             self.sample_rate, self.channels)
        return {"audio": audio, "caption": meta["caption"], "tags": meta["tags"], "id": meta["id"]}


def open_clip_dataset(source: str | Path, split: str = "train", **kwargs: Any):
    """A manifest (.jsonl) gives an :class:`AudioClipDataset`; a shard folder or .tar a :class:`ShardClipDataset`."""
    source = Path(source)
    if source.suffix == ".jsonl":
        return AudioClipDataset(source, split=split, **kwargs)
    return ShardClipDataset(source, split=split, **kwargs)
