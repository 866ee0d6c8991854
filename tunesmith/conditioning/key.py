"""The prompted key as a vector a model adds to every input, beside the beat clock.

The attribute tokens (``attributes.py``) already name the tonic and mode among the
caption's text states, yet the first bundled models matched the prompted key for a
third of the benchmark prompts where their codec's reconstructions of the references
matched it for half: a fact the decoder must find by attention, among a caption's
words, at every step, is followed loosely.  Like the beat clock, the key here is
added to the input of every step (Mustango, Melechovsky et al. 2024, and Music
ControlNet, Wu et al. 2024, also give music attributes their own input path).

Layout (KEY_DIM = 26): the scale's seven pitch classes (12, each 1/sqrt(7), so keys
sharing notes are near: relative major and minor share all seven), the tonic as a
one-hot (12), and the mode as a one-hot (2).  A prompt naming only the mode ("a
minor-key waltz") sets the mode alone; the zero vector means "no key" (prompts that
name none, and the unconditional half of guidance).
"""

from __future__ import annotations

import math

import torch

from tunesmith.conditioning.prompt import parse_key
from tunesmith.music import SCALES, parse_key_name

KEY_DIM = 12 + 12 + 2
_SCALE, _TONIC, _MODE = 0, 12, 24


def key_vector(tonic: int | None, mode: str | None) -> torch.Tensor:
    """(KEY_DIM,) for a tonic pitch class (0 = C) and "major"/"minor"; either may be None."""
    out = torch.zeros(KEY_DIM)
    if mode is not None and mode not in SCALES:
        raise ValueError(f"mode must be 'major' or 'minor', got {mode!r}")
    if tonic is not None:
        if not 0 <= tonic < 12:
            raise ValueError(f"tonic must be a pitch class 0-11, got {tonic}")
        out[_TONIC + tonic] = 1.0
        if mode is not None:
            for step in SCALES[mode]:
                out[_SCALE + (tonic + step) % 12] = 1.0 / math.sqrt(len(SCALES[mode]))
    if mode is not None:
        out[_MODE + (0 if mode == "major" else 1)] = 1.0
    return out


def record_key(record: dict) -> torch.Tensor:
    """The key vector of a corpus clip (a manifest or cache record) from its ``tags.key`` and
    ``tags.mode`` ("B-flat", "minor"); zeros for a clip without them."""
    tags = record.get("tags") or {}
    if not tags.get("key") or tags.get("mode") not in SCALES:
        return torch.zeros(KEY_DIM)
    key = parse_key_name(tags["key"], tags["mode"])
    return key_vector(key.tonic, key.mode)


def prompt_keys(prompts: list[str]) -> torch.Tensor:
    """(B, KEY_DIM): each prompt's named key, zeros where it names none."""
    return torch.stack([key_vector(*parse_key(text)) for text in prompts]) if prompts else torch.zeros(0, KEY_DIM)
