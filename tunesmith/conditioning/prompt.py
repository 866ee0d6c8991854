"""The one prompt parser: what a free-text prompt says about tempo, key and instruments.

The models condition on these facts (attribute tokens, the beat clock, the key input)
and the evaluator scores generations against them, so both read a prompt through this
module and can never disagree about what was asked for.

- tempo: a number with its unit ("120 BPM", "72 beats per minute"), 20-400 BPM;
- key: a capital tonic letter with an optional accidental and a mode ("B-flat major",
  "F# minor", "E♭ minor"); a mode alone ("a minor-key waltz", "in a major key") sets the
  mode only: the article "a" is never read as the note A, nor "A" before "minor-key";
- instruments: names, synonyms, ensembles and family words of the corpus's vocabulary
  (:mod:`tunesmith.conditioning.instruments`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunesmith.music import ACCIDENTAL_SHIFT, LETTER_PITCH_CLASS, TEMPO_RANGE, Key

_TEMPO_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm\b|beats?\s+(?:per|a|each)\s+minute|beats?/min)", re.IGNORECASE)
# "minor-key" / "minor key" name a mode only: "A minor-key waltz" starts with the article
_KEY_RE = re.compile(r"\b([A-G])(?:\s*|-)(flat|sharp|♭|♯|b|#)?\s*(major|minor)\b(?!-key|\s+key)")
_MODE_RE = re.compile(r"\b(major|minor)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptFacts:
    """What a prompt asks for; None / empty where it says nothing."""

    tempo_bpm: float | None = None
    tonic: int | None = None  # pitch class 0-11
    mode: str | None = None  # "major" / "minor"
    instruments: frozenset[str] = field(default_factory=frozenset)
    families: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> Key | None:
        """The full key, when the prompt names both tonic and mode."""
        return Key(self.tonic, self.mode) if self.tonic is not None and self.mode is not None else None


def parse_tempo(text: str) -> float | None:
    """The first tempo in BPM that ``text`` names ("120 BPM", "72 beats per minute"), or None."""
    for match in _TEMPO_RE.finditer(text):
        bpm = float(match.group(1))
        if TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]:
            return bpm
    return None


def parse_key(text: str) -> tuple[int | None, str | None]:
    """(tonic pitch class 0-11 or None, "major"/"minor" or None) named in ``text``.

    The tonic needs a capital letter ("A minor", "B-flat major", "F# minor"), so that the
    article in "a minor-key waltz" is not read as the note A.
    """
    match = _KEY_RE.search(text)
    if match:
        letter, accidental, mode = match.groups()
        return (LETTER_PITCH_CLASS[letter] + ACCIDENTAL_SHIFT.get(accidental or "", 0)) % 12, mode
    mode_match = _MODE_RE.search(text)
    return None, (mode_match.group(1).lower() if mode_match else None)


def parse_prompt(text: str) -> PromptFacts:
    """Every fact :mod:`tunesmith.conditioning.prompt` knows how to read from ``text``."""
    from tunesmith.conditioning.instruments import parse_instruments

    tonic, mode = parse_key(text)
    instruments, families = parse_instruments(text)
    return PromptFacts(parse_tempo(text), tonic, mode, frozenset(instruments), frozenset(families))
