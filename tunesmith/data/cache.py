"""Frame cache: codec tokens or VAE latents of a whole split, precomputed once.

Layout of a cache directory::

    meta.json              {"kind": "tokens"|"latents", "model", "frame_rate", "sample_rate",
                            "channels", "num_codebooks" | "latent_dim", ...}
    <split>.safetensors    "data": (sum of frames, K) int16 tokens or (sum of frames, D)
                           float16 latents; "offsets": int64 (N + 1,), clip i = data[o[i]:o[i+1]]
    <split>.jsonl          one line per clip, same order: id, caption, tags, duration

Generators then train on frames without running the encoder each step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from safetensors.torch import load_file, save_file

from tunesmith.files import atomic_write_text
from tunesmith.data.manifest import manifest_line

KINDS = {"tokens": ("num_codebooks", np.int16), "latents": ("latent_dim", np.float16)}


class CacheError(ValueError):
    """A frame cache that is missing, inconsistent or of the wrong kind."""


def write_frame_cache(
    out_dir: str | Path,
    split: str,
    items: Iterable[tuple[np.ndarray, dict[str, Any]]],
    meta: dict[str, Any],
) -> Path:
    """Store ``(frames (T, K or D), info)`` pairs of one split; returns the cache directory.

    ``info`` needs ``id`` and ``caption`` and may carry ``tags`` and ``duration``.  Tokens
    must fit int16 (codebooks up to 32768 entries).
    """
    kind = meta.get("kind")
    if kind not in KINDS:
        raise CacheError(f"meta['kind'] must be 'tokens' or 'latents', got {kind!r}")
    width_key, dtype = KINDS[kind]
    for key in ("frame_rate", "sample_rate", width_key):
        if key not in meta:
            raise CacheError(f"meta lacks '{key}'")
    width = int(meta[width_key])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_meta_compatible(out, meta)
    chunks, lines, offsets = [], [], [0]
    for i, (frames, info) in enumerate(items):
        frames = np.ascontiguousarray(frames)  # transposed views (frames of (K, T) codes) are common
        if frames.ndim != 2 or frames.shape[1] != width:
            raise CacheError(f"item {i}: frames must be (T, {width}), got {tuple(frames.shape)}")
        if kind == "tokens" and frames.size and (frames.min() < 0 or frames.max() > np.iinfo(np.int16).max):
            raise CacheError(f"item {i}: token ids outside 0..32767")
        if kind == "latents" and not np.isfinite(frames).all():
            raise CacheError(f"item {i}: latents contain NaN or infinity")
        if "id" not in info or "caption" not in info:
            raise CacheError(f"item {i}: info needs 'id' and 'caption'")
        chunks.append(frames.astype(dtype))
        offsets.append(offsets[-1] + frames.shape[0])
        lines.append({"id": info["id"], "caption": info["caption"], "tags": info.get("tags", {}),
                      "duration": info.get("duration")})
    if not lines:
        raise CacheError(f"no items to cache for split '{split}'")
    data = np.concatenate(chunks, axis=0)
    tmp = out / f".{split}.safetensors.tmp"
    save_file({"data": torch.from_numpy(data), "offsets": torch.tensor(offsets, dtype=torch.int64)}, str(tmp))
    tmp.replace(out / f"{split}.safetensors")
    atomic_write_text(out / f"{split}.jsonl", "".join(manifest_line(x) + "\n" for x in lines))
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _check_meta_compatible(out: Path, meta: dict[str, Any]) -> None:
    """Splits of one cache must come from the same model and format."""
    path = out / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for key in ("kind", "model", "frame_rate", "sample_rate", "num_codebooks", "latent_dim"):
            if old.get(key) != meta.get(key):
                raise CacheError(f"{out}: existing cache has {key}={old.get(key)!r}, new split has {meta.get(key)!r}")


def read_cache_meta(cache_dir: str | Path) -> dict[str, Any]:
    """The meta.json of a cache directory."""
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise CacheError(f"not a frame cache (no meta.json): {cache_dir}")
    return json.loads(path.read_text())


class FrameCache(Dataset):
    """Clips of one cached split as (K or D, segment) frame windows with their text."""

    def __init__(self, cache_dir: str | Path, split: str = "train", segment_frames: int | None = None) -> None:
        self.dir = Path(cache_dir)
        self.meta = read_cache_meta(self.dir)
        self.kind = self.meta["kind"]
        tensors_path = self.dir / f"{split}.safetensors"
        if not tensors_path.is_file():
            raise CacheError(f"cache {self.dir} has no split '{split}'")
        # safetensors only (never pickle); read directly: checkpoint.load_tensors' pickle sniffing
        # misreads a safetensors header of exactly 128 bytes (first byte 0x80) as a pickle.
        tensors = load_file(str(tensors_path))
        self.data, self.offsets = tensors["data"], tensors["offsets"]
        with (self.dir / f"{split}.jsonl").open(encoding="utf-8") as f:
            self.records = [json.loads(line) for line in f if line.strip()]
        if len(self.records) != len(self.offsets) - 1:
            raise CacheError(f"{self.dir}/{split}: {len(self.records)} records but {len(self.offsets) - 1} clips")
        if segment_frames is not None and segment_frames <= 0:
            raise ValueError(f"segment_frames must be positive, got {segment_frames}")
        self.segment_frames = segment_frames

    def __len__(self) -> int:
        return len(self.records)

    def clip_frames(self, index: int) -> torch.Tensor:
        """All frames of clip ``index`` as stored, (T, K or D)."""
        return self.data[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, 0.0)

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        return self._item(index, float(rng.random()))

    def _item(self, index: int, start_fraction: float) -> dict[str, Any]:
        frames = self.clip_frames(index)
        total = frames.shape[0]
        size = total if self.segment_frames is None else self.segment_frames
        start = int(start_fraction * max(0, total - size))
        window = frames[start : start + size]
        length = window.shape[0]
        out = window.T.to(torch.int64 if self.kind == "tokens" else torch.float32)
        if length < size:
            out = torch.nn.functional.pad(out, (0, size - length))
        record = self.records[index]
        return {"frames": out.contiguous(), "caption": record["caption"], "tags": record.get("tags", {}),
                "id": record["id"], "length": length}


def collate_frames(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch frame windows (B, K or D, T), zero-padding to the longest; ``length`` says how many are real."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    longest = max(it["frames"].shape[-1] for it in items)
    frames = torch.stack([torch.nn.functional.pad(it["frames"], (0, longest - it["frames"].shape[-1])) for it in items])
    return {
        "frames": frames,
        "length": torch.tensor([it["length"] for it in items], dtype=torch.int64),
        "caption": [it["caption"] for it in items],
        "tags": [it["tags"] for it in items],
        "id": [it["id"] for it in items],
    }
