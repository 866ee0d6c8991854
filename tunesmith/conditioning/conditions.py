"""``Conditioning``: everything a generator is conditioned on, as tensors, for every model family.

One type for the token LM and the DiT, built in one place from a prompt (generation) or
from a corpus clip (training), and dropped for classifier-free guidance by one function
with one config.  A field a model does not take is None; a condition that is "absent"
(dropped, or not named by the prompt) is zeros of its shape, so a batch mixes both.

- ``text`` (B, S, text_dim) with ``text_mask`` (B, S) bool (True = real token; a row of
  all False means "no text", the unconditional case of CFG);
- ``melody`` (B, 12, F) one-hot chroma per frame (token LM);
- ``beat`` (B, CLOCK_DIM, F) the beat clock per frame (:mod:`.beat`);
- ``key`` (B, KEY_DIM) the key vector (:mod:`.key`);
- ``seconds_start``, ``seconds_total`` (B,) the timing of Stable Audio's timing
  conditioning (DiT); never dropped: guidance keeps the length it was asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from tunesmith.conditioning.beat import prompt_clocks, record_clock
from tunesmith.conditioning.key import prompt_keys, record_key

DROPPABLE = ("text", "melody", "beat", "key")


@dataclass
class Conditioning:
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    melody: torch.Tensor | None = None
    beat: torch.Tensor | None = None
    key: torch.Tensor | None = None
    seconds_start: torch.Tensor | None = None
    seconds_total: torch.Tensor | None = None

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        return Conditioning(*(None if t is None else fn(t) for t in self.tensors()))

    def batch_size(self) -> int | None:
        for t in self.tensors():
            if t is not None:
                return t.shape[0]
        return None

    def null(self, keep: Sequence[str] = ()) -> "Conditioning":
        """The same shapes with every condition dropped but those named in ``keep``
        ("text", "melody", "beat", "key"): the unconditional half of CFG.  Timing stays."""
        unknown = set(keep) - set(DROPPABLE)
        if unknown:
            raise ValueError(f"unknown conditions to keep: {', '.join(sorted(unknown))} (known: {', '.join(DROPPABLE)})")
        zero = self._map(torch.zeros_like)
        return dataclasses.replace(
            self,
            text_mask=self.text_mask if "text" in keep else zero.text_mask,
            text=self.text if "text" in keep else zero.text,
            melody=self.melody if "melody" in keep else zero.melody,
            beat=self.beat if "beat" in keep else zero.beat,
            key=self.key if "key" in keep else zero.key,
        )

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Stack two conditionings along the batch (this one's rows first)."""
        pairs = zip(self.tensors(), other.tensors())
        return Conditioning(*(None if a is None else torch.cat([a, b], 0) for a, b in pairs))

    def repeat(self, n: int) -> "Conditioning":
        return self._map(lambda a: a.repeat_interleave(n, 0))

    def to(self, device: torch.device | str) -> "Conditioning":
        return self._map(lambda a: a.to(device))

    def frames(self, start: int, length: int) -> "Conditioning":
        """The per-frame conditions (melody, beat) cut to frames [start, start + length),
        zero-padded ("none") past their end; the rest unchanged."""

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            x = x[..., start : start + length]
            return F.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x

        return dataclasses.replace(self, melody=cut(self.melody), beat=cut(self.beat))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The conditions that are present, by name: keyword arguments of a model's forward."""
        return {f.name: t for f, t in zip(dataclasses.fields(self), self.tensors()) if t is not None}


@dataclass
class ConditionDropout:
    """Probability of dropping each condition of a training example, independently (CFG
    training, MusicGen sec. 2.2): the clock and the key apart from the text, so prompts
    that name no tempo or key work too."""

    text: float = 0.2
    melody: float = 0.2
    beat: float = 0.2
    key: float = 0.2

    def __post_init__(self) -> None:
        for name in DROPPABLE:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"dropout.{name} must be in [0, 1], got {getattr(self, name)}")


def drop_conditions(cond: Conditioning, dropout: ConditionDropout, generator: torch.Generator | None = None) -> Conditioning:
    """Each example's text, melody, beat clock and key dropped with its own probability."""
    b = cond.batch_size()
    if b is None:
        return cond

    def keep(p: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(b, generator=generator) >= p).to(like.device)

    mask, melody, beat, key = cond.text_mask, cond.melody, cond.beat, cond.key
    if mask is not None and dropout.text > 0:
        mask = mask & keep(dropout.text, mask)[:, None]
    if melody is not None and dropout.melody > 0:
        melody = melody * keep(dropout.melody, melody)[:, None, None].to(melody.dtype)
    if beat is not None and dropout.beat > 0:
        beat = beat * keep(dropout.beat, beat)[:, None, None].to(beat.dtype)
    if key is not None and dropout.key > 0:
        key = key * keep(dropout.key, key)[:, None].to(key.dtype)
    return dataclasses.replace(cond, text_mask=mask, melody=melody, beat=beat, key=key)


def from_prompts(
    prompts: list[str],
    text_encoder: Any,
    *,
    num_frames: int,
    frame_rate: float,
    beat_clock: bool = False,
    key_input: bool = False,
    melody: torch.Tensor | None = None,
    duration: float | None = None,
) -> Conditioning:
    """A batch's conditioning at generation time: the encoded prompts, and what the model
    takes of the rest: each prompt's tempo as a clock, its key, a melody's chroma (B or 1,
    12, F), and the timing of ``duration`` seconds."""
    text, mask = text_encoder.encode(list(prompts))
    b = text.shape[0]
    beat = prompt_clocks(list(prompts), num_frames, frame_rate) if beat_clock else None
    key = prompt_keys(list(prompts)) if key_input else None
    if melody is not None and melody.shape[0] == 1 and b > 1:
        melody = melody.expand(b, -1, -1)
    elif melody is not None and melody.shape[0] != b:
        raise ValueError(f"{melody.shape[0]} melodies for {b} prompts")
    start = total = None
    if duration is not None:
        start, total = torch.zeros(b), torch.full((b,), float(duration))
    return Conditioning(text, mask, melody, beat, key, start, total)


def from_clip(
    record: dict[str, Any], *, num_frames: int, frame_rate: float, start_frame: int = 0,
    beat_clock: bool = False, key_input: bool = False,
) -> dict[str, torch.Tensor]:
    """The per-clip conditions of a training window, unbatched, by name: the clip's beat
    grid from ``start_frame`` (CLOCK_DIM, num_frames) and its key (KEY_DIM,), as the model
    takes them.  Text is encoded per batch, from the (possibly resampled) caption."""
    out: dict[str, torch.Tensor] = {}
    if beat_clock:
        out["beat"] = record_clock(record, num_frames, frame_rate, start_frame)
    if key_input:
        out["key"] = record_key(record)
    return out
