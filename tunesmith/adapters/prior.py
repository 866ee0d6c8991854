"""Prior preservation: clips the base generates from prompts of its own, mixed into fine-tuning.

Fine-tuning on a folder of one style pulls every prompt towards that style.  Measured on the
benchmark's real orchestral recordings (docs/finetune.md), an adapter trained on the folder
alone dropped the base's instrument-family accuracy on free-wording prompts from 0.75 to 0.50:
"solo marimba" came out orchestral.  DreamBooth (Ruiz et al. 2023, section 3.3) keeps what a
model knew by training, beside the new data, on samples the frozen model generated for its
class prompts.  Here the class is everything the base was trained to follow: prompts drawn
from the corpus's own vocabulary (every style, its ensembles and lead instruments, keys,
tempi), generated once by the base before training, cached like the user's clips and mixed
into the training set as a share of its clips.  The adapter then learns the folder's sound
where the folder's captions ask for it, and the base's sound elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tunesmith.data.cache import read_cache_meta, write_frame_cache
from tunesmith.files import atomic_write_text

PRIOR_SPLIT = "prior"
METERS = {"duple": ("4/4", "2/4"), "triple": ("3/4",), "compound": ("6/8",), "odd": ("5/4", "7/8")}  # meters of each class
PRIOR_STATE = "prior.json"


def prior_count(train_clips: int, share: float, limit: int = 64) -> int:
    """How many prior clips make ``share`` of a training set with ``train_clips`` of the user's
    (at most ``limit``: generating them is part of the fine-tune's time)."""
    if share <= 0 or train_clips <= 0:
        return 0
    return int(min(limit, max(1, round(share / (1.0 - share) * train_clips))))


def prior_tags(rng: np.random.Generator) -> dict[str, Any]:
    """Tags of one piece the corpus could hold: a style, one of its ensembles or a lead with its
    accompaniment, a tempo in the style's range, a key."""
    from tunesmith.data.instruments import instrument
    from tunesmith.data.styles import STYLES
    from tunesmith.music import tonic_name

    style = STYLES[sorted(STYLES)[int(rng.integers(len(STYLES)))]]
    if style.leads and rng.random() < 0.4:  # a tune: lead, accompaniment, bass
        voices = [style.leads[int(rng.integers(len(style.leads)))], style.comps[int(rng.integers(len(style.comps)))],
                  style.basses[int(rng.integers(len(style.basses)))]]
    else:
        voices = list(style.ensembles[int(rng.integers(len(style.ensembles)))][1])
    names = list(dict.fromkeys(v for v in voices if v))
    families = list(dict.fromkeys(instrument(n).family for n in names))
    mode = "major" if rng.random() < 0.6 else "minor"
    low, high = style.tempo
    meters = METERS[style.meters[int(rng.integers(len(style.meters)))]]
    return {"instruments": names, "families": families, "style": style.name, "adjectives": list(style.adjectives),
            "tempo_bpm": int(rng.integers(low, high + 1)), "key": tonic_name(int(rng.integers(12)), mode), "mode": mode,
            "meter": meters[int(rng.integers(len(meters)))], "dynamics_range": list(style.dynamics)}


def prior_prompts(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` (prompt, tags) pairs, half corpus-style sentences and half short prompts, the
    two wordings the base was trained on."""
    from tunesmith.data.captions import caption, prompt_caption

    rng = np.random.default_rng([seed, 0x5052])
    out = []
    for _ in range(count):
        tags = prior_tags(rng)
        text = caption(tags, rng) if rng.random() < 0.5 else prompt_caption(tags, rng)
        out.append((text, tags))
    return out


def median_loudness(paths: list[Path]) -> float | None:
    """The median integrated loudness (LUFS) of these audio files (None when all are silent)."""
    from tunesmith.audio import load_audio
    from tunesmith.loudness import integrated_loudness

    values = []
    for path in paths:
        audio = load_audio(path)
        values.append(integrated_loudness(audio.samples.numpy(), audio.sample_rate))
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else None


def prepare_prior(base_dir: Path, run_dir: Path, cache_dir: Path, codec: Any, kind: str, count: int, seconds: float,
                  seed: int, *, lufs: float | None = None, batch: int = 4, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> int:
    """Write ``count`` base-generated clips of ``seconds`` as the cache's ``prior`` split (reused
    when the base, count, length and seed are unchanged); returns the number of clips.

    ``lufs``: the loudness to bring every prior clip to, that of the user's clips, and ``seconds``
    their length: guided samples come out louder than the data the base learnt from, and the DiT
    is conditioned on a clip's total length (Stable Audio's timing), so unmatched prior clips
    differ from the folder in ways that are not its style.  Matching both did not make prior
    preservation pay on the benchmark (docs/finetune.md): it keeps prompt adherence but makes
    the output bursty, which is why it is off by default."""
    log = log or (lambda text: print(text, file=sys.stderr))
    state_path = run_dir / PRIOR_STATE
    files = [cache_dir / f"{PRIOR_SPLIT}.safetensors", cache_dir / f"{PRIOR_SPLIT}.jsonl"]
    if count <= 0:
        for stale in files:
            stale.unlink(missing_ok=True)
        return 0
    weights = sorted(p for p in base_dir.glob("*.safetensors"))
    fingerprint = [str(base_dir.resolve()), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]]
    meta = read_cache_meta(cache_dir)
    digest = hashlib.sha256(json.dumps([fingerprint, meta, count, seconds, seed, kind, lufs]).encode()).hexdigest()
    if state_path.is_file() and json.loads(state_path.read_text()).get("digest") == digest and all(f.is_file() for f in files):
        log(f"prior: reusing {count} clips the base generated")
        return count

    from tunesmith.adapters.data import cache_rows
    from tunesmith.generator import load_generator

    generator = load_generator(base_dir)
    seconds = min(seconds, generator.max_duration)
    prompts = prior_prompts(count, seed)
    log(f"prior: the base generates {count} clips of {seconds:g} s from its own prompts (prior preservation)")

    def clips():
        bar = tqdm(total=count, desc="prior clips", unit="clip", disable=not progress)
        for start in range(0, count, batch):
            part = prompts[start : start + batch]
            seeds = [seed * 100_003 + start + i for i in range(len(part))]
            audio = generator.generate([p for p, _ in part], seconds, seed=seeds, loudness=lufs)
            with torch.inference_mode():
                frames = codec.encode_long(audio.samples.float())  # (B, width, T)
            for i, (text, tags) in enumerate(part):
                record = {"id": f"prior-{start + i:03d}", "caption": text, "tags": {**tags, "prior": True},
                          "duration": float(seconds)}
                yield cache_rows(frames[i], kind), record
                bar.update(1)
        bar.close()

    write_frame_cache(cache_dir, PRIOR_SPLIT, clips(), meta)
    atomic_write_text(state_path, json.dumps({"digest": digest, "count": count, "seconds": seconds}) + "\n")
    return count


class MixedWindows(torch.utils.data.Dataset):
    """The user's training windows followed by the prior's, as one dataset (both families'
    datasets draw a window with ``get_item(index, rng)``)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part], index - int(self.starts[part])

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        part, local = self._locate(index)
        return part.get_item(local, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self._locate(index)
        return part[local]
