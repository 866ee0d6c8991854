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
  conditioning (DiT); never dropped: guidance keeps the length it was asked for;
- ``segments`` (B, K, F), only for time-stamped prompts ("0:00-0:20 solo piano; 0:20-0:45
  strings join"; FUTGA's time-aware captions read the other way): ``text`` then holds K
  sections of S tokens each, (B, K * S, text_dim), and ``segments[b, k, f]`` is how much
  frame f reads section k's text (1 inside it, a linear crossfade over
  ``SECTION_CROSSFADE_SECONDS`` at a boundary; the weights of a frame sum to 1).  The beat
  clock and the key follow the sections: ``key`` is then (B, KEY_DIM, F) when a row's
  sections name different keys.  None for plain prompts, which keep today's tensors exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from tunesmith.conditioning.beat import CLOCK_DIM, beat_clock, prompt_clocks, record_clock
from tunesmith.conditioning.key import key_vector, prompt_keys, record_key
from tunesmith.conditioning.prompt import TimedSegment, mmss, parse_key, parse_timed_prompt
from tunesmith.conditioning.tempo_words import prompt_tempo

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
    segments: torch.Tensor | None = None  # (B, K, F) section weights per frame (time-stamped prompts)

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
        """The per-frame conditions (melody, beat, sections, a per-frame key) cut to frames [start, start + length),
        zero-padded ("none") past their end; the rest unchanged."""

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            x = x[..., start : start + length]
            return F.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x

        key = cut(self.key) if self.key is not None and self.key.dim() == 3 else self.key
        return dataclasses.replace(self, melody=cut(self.melody), beat=cut(self.beat), key=key,
                                   segments=cut(self.segments))

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
        key = key * keep(dropout.key, key).view(-1, *[1] * (key.dim() - 1)).to(key.dtype)
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
    seed: int | list[int] = 0,
) -> Conditioning:
    """A batch's conditioning at generation time: the encoded prompts, and what the model
    takes of the rest: each prompt's tempo as a clock (``seed``, one or one per prompt, draws
    the tempo of a prompt that gives only tempo words: "a fast jig"), its key, a melody's chroma (B or 1,
    12, F), and the timing of ``duration`` seconds.  A time-stamped prompt ("0:00-0:20 solo piano;
    0:20-0:45 strings join") gives per-section text, clock and key (``segments``, above)."""
    sections = [parse_timed_prompt(p) for p in prompts]
    if any(sections):
        return _from_timed_prompts(list(prompts), sections, text_encoder, num_frames=num_frames, frame_rate=frame_rate,
                                   beat_clock=beat_clock, key_input=key_input, melody=melody, duration=duration,
                                   seed=seed)
    text, mask = text_encoder.encode(list(prompts))
    b = text.shape[0]
    beat = prompt_clocks(list(prompts), num_frames, frame_rate, seed) if beat_clock else None
    key = prompt_keys(list(prompts)) if key_input else None
    melody, start, total = _batch_melody_and_timing(melody, duration, b)
    return Conditioning(text, mask, melody, beat, key, start, total)


def _batch_melody_and_timing(melody: torch.Tensor | None, duration: float | None, b: int
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A melody's chroma for each of ``b`` prompts (one is shared), and the timing of ``duration``."""
    if melody is not None and melody.shape[0] == 1 and b > 1:
        melody = melody.expand(b, -1, -1)
    elif melody is not None and melody.shape[0] != b:
        raise ValueError(f"{melody.shape[0]} melodies for {b} prompts")
    if duration is None:
        return melody, None, None
    return melody, torch.zeros(b), torch.full((b,), float(duration))


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


# -- time-stamped prompts ---------------------------------------------------------------------

SECTION_CROSSFADE_SECONDS = 1.0  # conditioning crossfades over this around each section boundary


def section_weights(starts: Sequence[float], num_frames: int, frame_rate: float,
                    crossfade: float = SECTION_CROSSFADE_SECONDS) -> torch.Tensor:
    """(K, num_frames) how much each frame (at its centre time) reads each section's text.

    w_k(t) = r(t - start_k) - r(t - start_{k+1}) with r a ramp from 0 to 1 over ``crossfade``
    seconds centred on 0 (r = 1 for the first section's start, 0 past the last): the weights
    are >= 0, sum to 1 at every frame, are exactly 1 inside a section away from its
    boundaries, and exactly 0 outside it and its crossfades.
    """
    t = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / frame_rate

    def ramp(x: torch.Tensor) -> torch.Tensor:
        if crossfade <= 0:
            return (x >= 0).double()
        return (x / crossfade + 0.5).clamp(0.0, 1.0)

    rises = [torch.ones_like(t)] + [ramp(t - s) for s in starts[1:]] + [torch.zeros_like(t)]
    return torch.stack([rises[k] - rises[k + 1] for k in range(len(starts))]).float()


def _section_of_frame(starts: Sequence[float], num_frames: int, frame_rate: float) -> torch.Tensor:
    """(num_frames,) index of the section each frame's centre falls in (hard boundaries)."""
    t = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / frame_rate
    return (t[:, None] >= torch.tensor(list(starts[1:]), dtype=torch.float64)[None]).sum(1)


def _check_sections(sections: list[TimedSegment], duration: float | None, where: str) -> None:
    if duration is None:
        return
    for i, s in enumerate(sections):
        if s.start >= duration:
            raise ValueError(f"{where}: section {i + 1} ({mmss(s.start)}-{mmss(s.end)}) starts after the end of "
                             f"the audio ({duration:g} s); ask for a longer duration")


def section_clock(sections: list[TimedSegment], num_frames: int, frame_rate: float, seed: int = 0) -> torch.Tensor:
    """(CLOCK_DIM, num_frames): each section's tempo (its BPM, or one ``seed`` draws from its tempo
    words, as for a plain prompt) as a beat clock over its frames.

    A section naming no tempo keeps the one before it; a new tempo starts its grid on a
    beat at the section's first frame (a section starts on a downbeat); the same tempo
    continues the grid without a jump.  Zeros while no tempo has been named.
    """
    out = torch.zeros(CLOCK_DIM, num_frames)
    owner = _section_of_frame([s.start for s in sections], num_frames, frame_rate)
    bpm, anchor = None, 0
    for k, section in enumerate(sections):
        frames = (owner == k).nonzero().flatten()
        if not len(frames):
            continue
        named = prompt_tempo(section.text, seed)
        first, last = int(frames[0]), int(frames[-1]) + 1
        if named is not None and named != bpm:
            bpm, anchor = named, first
        if bpm is not None:
            out[:, first:last] = beat_clock(bpm, last - first, frame_rate, start_frame=first - anchor)
    return out


def section_keys(sections: list[TimedSegment]) -> list[torch.Tensor]:
    """Each section's key vector (KEY_DIM,); a section naming none keeps the one before it."""
    out, tonic, mode = [], None, None
    for section in sections:
        t, m = parse_key(section.text)
        if t is not None or m is not None:
            tonic, mode = t, m
        out.append(key_vector(tonic, mode))
    return out


def section_rows(prompts: list[str], sections: list[list[TimedSegment] | None]) -> list[list[TimedSegment]]:
    """Each prompt's sections; a plain prompt is one section covering everything."""
    return [s if s else [TimedSegment(0.0, math.inf, p)] for p, s in zip(prompts, sections)]


def section_text(rows: list[list[TimedSegment]], text_encoder: Any, num_frames: int, frame_rate: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text (B, K * S, dim), text_mask (B, K * S), segments (B, K, F)) of a batch of section lists:
    row i's K sections of S tokens side by side (padded to the longest row), and how much each
    frame reads each section.  Generation and training (time-stamped windows) both build it here."""
    b, k_max = len(rows), max(len(r) for r in rows)
    states, mask = text_encoder.encode([s.text for r in rows for s in r])
    s_len = states.shape[1]
    text = states.new_zeros(b, k_max * s_len, states.shape[-1])
    text_mask = torch.zeros(b, k_max * s_len, dtype=torch.bool)
    weights = torch.zeros(b, k_max, num_frames)
    n = 0
    for i, row in enumerate(rows):
        for k in range(len(row)):
            text[i, k * s_len : (k + 1) * s_len], text_mask[i, k * s_len : (k + 1) * s_len] = states[n], mask[n]
            n += 1
        weights[i, : len(row)] = section_weights([s.start for s in row], num_frames, frame_rate)
    return text, text_mask, weights


def _from_timed_prompts(prompts: list[str], sections: list[list[TimedSegment] | None], text_encoder: Any, *,
                        num_frames: int, frame_rate: float, beat_clock: bool, key_input: bool,
                        melody: torch.Tensor | None, duration: float | None, seed: int | list[int] = 0) -> Conditioning:
    """:func:`from_prompts` for a batch with at least one time-stamped prompt (a plain one is
    one section covering everything)."""
    rows = section_rows(prompts, sections)
    for i, row in enumerate(rows):
        _check_sections(row, duration, "prompt" if len(rows) == 1 else f"prompts[{i}]")
    b = len(rows)
    text, text_mask, weights = section_text(rows, text_encoder, num_frames, frame_rate)
    beat = torch.zeros(b, CLOCK_DIM, num_frames) if beat_clock else None
    keys: list[torch.Tensor] = []
    for i, row in enumerate(rows):
        starts = [s.start for s in row]
        if beat is not None:
            beat[i] = section_clock(row, num_frames, frame_rate, seed[i] if isinstance(seed, (list, tuple)) else seed)
        if key_input:
            vectors = section_keys(row)
            owner = _section_of_frame(starts, num_frames, frame_rate)
            keys.append(torch.stack(vectors)[owner].T)  # (KEY_DIM, F)
    key = None
    if key_input:
        per_frame = torch.stack(keys)  # (B, KEY_DIM, F)
        constant = bool((per_frame == per_frame[..., :1]).all())
        key = per_frame[..., 0].contiguous() if constant else per_frame
    melody, start, total = _batch_melody_and_timing(melody, duration, b)
    return Conditioning(text, text_mask, melody, beat, key, start, total, weights)
