"""Musical facts shared by the corpus builder, the models and the evaluator: one definition each.

Pitch classes count semitones from C (C = 0, B-flat = 10).  Key profiles are the
probe-tone ratings key finders correlate a pitch-class distribution with (Krumhansl
1990, ch. 4; Temperley 1999).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MODES = ("major", "minor")
LETTER_PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ACCIDENTAL_SHIFT = {"flat": -1, "♭": -1, "b": -1, "-": -1, "sharp": 1, "♯": 1, "#": 1}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor

# tonic names as a key signature spells them (the corpus's captions and tags use these)
MAJOR_TONIC_NAMES = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")
MINOR_TONIC_NAMES = ("C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "G-sharp", "A", "B-flat", "B")
SHORT_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Probe-tone ratings of Krumhansl & Kessler (1982), tonic first.
KRUMHANSL_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KRUMHANSL_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# Temperley (1999, "What's key for key?"), revised profiles, tonic first.
TEMPERLEY_MAJOR = (5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0)
TEMPERLEY_MINOR = (5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0)
KEY_PROFILES = {
    "krumhansl": (KRUMHANSL_MAJOR, KRUMHANSL_MINOR),
    "temperley": (TEMPERLEY_MAJOR, TEMPERLEY_MINOR),
}

TEMPO_RANGE = (20.0, 400.0)  # BPM values outside this are not tempi


@dataclass(frozen=True)
class Key:
    """A key: tonic pitch class 0-11 (C = 0) and mode ("major" or "minor")."""

    tonic: int
    mode: str

    def __post_init__(self) -> None:
        if not 0 <= self.tonic < 12 or self.mode not in MODES:
            raise ValueError(f"invalid key: tonic {self.tonic}, mode {self.mode!r}")

    @property
    def name(self) -> str:
        return f"{SHORT_PITCH_NAMES[self.tonic]} {self.mode}"


def tonic_name(tonic: int, mode: str) -> str:
    """'B-flat' style tonic name, spelled as the key signature would be."""
    return (MAJOR_TONIC_NAMES if mode == "major" else MINOR_TONIC_NAMES)[tonic % 12]


_KEY_NAME = re.compile(r"\s*([A-Ga-g])\s*(?:-?\s*(flat|sharp|b|#|♭|♯|-))?\s*(major|minor|maj|min|m)?\s*", re.IGNORECASE)


def parse_key_name(text: str, mode: str | None = None) -> Key:
    """A key from its name alone: "B-flat major", "Bb", "f# minor", "E♭ min", "Am", "A" (+ mode).

    For fields that hold nothing but a key (tags, prompt files); to find a key inside a
    sentence use :func:`tunesmith.conditioning.prompt.parse_prompt`.  A mode given
    separately wins over one in ``text``; with neither, major.
    """
    if not isinstance(text, str):
        raise ValueError(f"key must be a string, got {type(text).__name__}")
    match = _KEY_NAME.fullmatch(text)
    if not match:
        raise ValueError(f"cannot read key name {text!r} (expected e.g. 'B-flat major', 'F# minor')")
    letter, accidental, found_mode = match.groups()
    tonic = LETTER_PITCH_CLASS[letter.upper()] + ACCIDENTAL_SHIFT.get((accidental or "").lower(), 0)
    if found_mode:
        # "Am" is A minor and "AM" A major, as lead sheets write them
        found_mode = "minor" if found_mode == "m" or found_mode.lower().startswith("min") else "major"
    chosen = (mode or found_mode or "major").lower()
    if chosen not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected major or minor)")
    return Key(tonic % 12, chosen)
