"""Training data for the token LM: token windows from a frame cache, with cached text states.

The frame cache (``tunesmith.data.cache``) holds every clip's codec tokens; this
module cuts training windows from it and attaches the caption's text-encoder
states.  The encoder is frozen, so each caption is encoded once, before training,
and the states are stored next to the run (``text_states_<split>.safetensors``):
a resumed run or a second run on the same data does not encode again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tunesmith.conditioning.conditions import from_clip
from tunesmith.conditioning.text import TextEncoder, pad_states
from tunesmith.data.captions import resample_caption
from tunesmith.data.cache import CacheError, FrameCache

TEXT_DTYPE = torch.float16  # states are stored at half precision: the cache stays small


def encode_captions(
    captions: Sequence[str], encoder: TextEncoder, path: str | Path | None = None, *, batch_size: int = 64, progress: bool = True
) -> dict[str, torch.Tensor]:
    """caption -> (S_i, dim) text states for every distinct caption, reusing ``path`` if it matches."""
    unique = sorted(set(captions))
    digest = hashlib.sha256(json.dumps(unique).encode()).hexdigest()
    if path is not None and Path(path).is_file():
        stored = load_file(str(path))
        meta = json.loads(bytes(stored["meta"].tolist()).decode())
        if meta.get("digest") == digest and meta.get("dim") == encoder.dim:
            return _unpack(unique, stored["states"], stored["offsets"])
    states: list[torch.Tensor] = []
    for start in tqdm(range(0, len(unique), batch_size), desc="encode captions", disable=not progress, leave=False):
        batch, mask = encoder.encode(unique[start : start + batch_size])
        states += [batch[i, mask[i]].to(TEXT_DTYPE) for i in range(batch.shape[0])]
    offsets = torch.tensor([0] + [s.shape[0] for s in states]).cumsum(0)
    flat = torch.cat(states) if states else torch.zeros(0, encoder.dim, dtype=TEXT_DTYPE)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = torch.tensor(list(json.dumps({"digest": digest, "dim": encoder.dim}).encode()), dtype=torch.uint8)
        tmp = Path(path).with_suffix(".tmp")
        save_file({"states": flat, "offsets": offsets, "meta": meta}, str(tmp))
        tmp.replace(path)
    return _unpack(unique, flat, offsets)


def _unpack(captions: list[str], flat: torch.Tensor, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    return {c: flat[int(offsets[i]) : int(offsets[i + 1])] for i, c in enumerate(captions)}


class TokenWindows(Dataset):
    """Random windows of ``segment_frames`` token frames (first ``num_codebooks`` codebooks).

    Items: ``tokens`` (K, segment) int64 zero-padded past ``length``; ``text`` (S, dim)
    float32; ``melody`` (12, segment) when a per-frame chroma track is given; ``beat``
    (CLOCK_DIM, segment) with ``beat_clock``: the clip's beat grid (the corpus cuts clips
    at bar lines, so a beat falls on the clip's first frame) at its ``tags.tempo_bpm``,
    zeros for a clip without one; ``key`` (KEY_DIM,) with ``key_input``: the clip's
    ``tags.key`` and ``tags.mode`` as a key vector.

    With ``caption_resample`` > 0 (and an ``encoder``), training items (``get_item``) draw
    a fresh caption from the clip's tags that often (``data.captions.resample_caption``)
    and encode it on the fly; ``__getitem__`` (validation) keeps the corpus caption.
    """

    def __init__(
        self,
        cache: FrameCache,
        num_codebooks: int,
        segment_frames: int,
        text_states: dict[str, torch.Tensor],
        melody: list[torch.Tensor] | None = None,
        max_text_tokens: int = 64,
        beat_clock: bool = False,
        encoder: TextEncoder | None = None,
        caption_resample: float = 0.0,
        key_input: bool = False,
    ) -> None:
        if cache.kind != "tokens":
            raise CacheError(f"{cache.dir} holds {cache.kind}, the token LM needs tokens")
        available = int(cache.meta.get("num_codebooks", cache.data.shape[1]))
        if num_codebooks > available:
            raise CacheError(f"the LM predicts {num_codebooks} codebooks, the cache has {available}")
        self.cache, self.K, self.segment = cache, num_codebooks, segment_frames
        self.text_states, self.melody, self.max_text_tokens = text_states, melody, max_text_tokens
        self.beat_clock = beat_clock
        if caption_resample > 0 and encoder is None:
            raise ValueError("caption_resample needs the text encoder to encode the fresh captions")
        self.encoder, self.caption_resample, self.key_input = encoder, caption_resample, key_input
        self.frame_rate = float(cache.meta.get("frame_rate", 0.0))
        if beat_clock and self.frame_rate <= 0:
            raise CacheError(f"{cache.dir} does not say its frame_rate, which a beat clock needs")

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, 0.0, self.cache.records[index]["caption"])

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        start_fraction = float(rng.random())
        return self._item(index, start_fraction, resample_caption(self.cache.records[index], rng, self.caption_resample))

    def _text(self, caption: str) -> torch.Tensor:
        if caption in self.text_states:
            return self.text_states[caption]
        assert self.encoder is not None
        states, mask = self.encoder.encode([caption])
        return states[0, mask[0]]

    def _item(self, index: int, start_fraction: float, caption: str) -> dict[str, Any]:
        frames = self.cache.clip_frames(index)  # (T, K_all)
        start = int(start_fraction * max(0, frames.shape[0] - self.segment))
        window = frames[start : start + self.segment, : self.K].T.to(torch.int64)
        length = window.shape[1]
        tokens = torch.nn.functional.pad(window, (0, self.segment - length))
        item = {"tokens": tokens, "length": length, "text": self._text(caption)[: self.max_text_tokens].float()}
        if self.melody is not None:
            mel = self.melody[index][:, start : start + self.segment].float()
            item["melody"] = torch.nn.functional.pad(mel, (0, self.segment - mel.shape[1]))
        item.update(from_clip(self.cache.records[index], num_frames=self.segment, frame_rate=self.frame_rate,
                              start_frame=start, beat_clock=self.beat_clock, key_input=self.key_input))
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    text, mask = pad_states([it["text"] for it in items])
    batch = {
        "tokens": torch.stack([it["tokens"] for it in items]),
        "length": torch.tensor([it["length"] for it in items]),
        "text": text,
        "text_mask": mask,
    }
    for key in ("melody", "beat", "key"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    return batch
