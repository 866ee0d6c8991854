"""The one prompt parser: what a free-text prompt says about tempo, key and instruments.

The models condition on these facts (attribute tokens, the beat clock, the key input)
and the evaluator scores generations against them, so both read a prompt through this
module and can never disagree about what was asked for.

- tempo: a number with its unit ("120 BPM", "72 beats per minute"), 20-400 BPM;
- key: a capital tonic letter with an optional accidental and a mode ("B-flat major",
  "F# minor", "E♭ minor"); a mode alone ("a minor-key waltz", "in a major key") sets the
  mode only: the article "a" is never read as the note A, nor "A" before "minor-key";
- instruments: names, synonyms, ensembles and family words of the corpus's vocabulary
  (:mod:`tunesmith.conditioning.instruments`);
- sections: a prompt that starts with a time span is read section by section ("0:00-0:20 solo
  piano, quiet; 0:20-0:45 strings join"), each section's text by the rules above.
"""

from __future__ import annotations

import math
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


# -- time-stamped prompts (FUTGA, Wu et al. 2024: captions that say what happens when) --------

# "0:20-0:45 strings join": a span in m:ss (seconds may have a decimal part), then its text
_SPAN_RE = re.compile(r"^\s*(\d{1,3}):([0-5]\d(?:\.\d+)?)\s*[-–]\s*(\d{1,3}):([0-5]\d(?:\.\d+)?)\s*[,:]?\s*(.*?)\s*$", re.S)


@dataclass(frozen=True)
class TimedSegment:
    """One section of a time-stamped prompt: seconds [start, end) and what plays there."""

    start: float
    end: float
    text: str


def is_timed(text: str) -> bool:
    """Whether ``text`` is a time-stamped prompt: it starts with a span ("0:00-0:20 ...").

    Only a prompt that *starts* with a span is read by sections, so that a corpus caption with
    its segment list at the end ("A waltz ... 0:00-0:10 piano; 0:10-0:20 strings join.") is
    still one prompt, as the models were trained on it."""
    return isinstance(text, str) and _SPAN_RE.match(text.split(";", 1)[0]) is not None


def parse_timed_prompt(text: str) -> list[TimedSegment] | None:
    """The sections of "0:00-0:20 solo piano, quiet; 0:20-0:45 strings join, louder", or None
    for a plain prompt.  Sections are separated by ";", in order, without overlaps; a gap is
    filled by the section before it.  Raises ``ValueError`` naming the section at fault."""
    if not is_timed(text):
        return None
    out: list[TimedSegment] = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        match = _SPAN_RE.match(part)
        if match is None:
            raise ValueError(f"section {i + 1} of the prompt does not start with a time span "
                             f"like '0:20-0:45': {part.strip()[:40]!r}")
        m1, s1, m2, s2, body = match.groups()
        start, end = int(m1) * 60 + float(s1), int(m2) * 60 + float(s2)
        span = part.strip().split()[0]
        if not end > start:
            raise ValueError(f"section {i + 1} ({span}) ends before it starts")
        if out and start < out[-1].end - 1e-9:
            raise ValueError(f"section {i + 1} ({span}) starts before section {i} ends ({mmss(out[-1].end)})")
        if not body.rstrip(" .").strip():
            raise ValueError(f"section {i + 1} ({span}) has no text")
        out.append(TimedSegment(start, end, body.rstrip(" .").strip()))
    if out[0].start > 0:  # the first section starts the piece
        out[0] = TimedSegment(0.0, out[0].end, out[0].text)
    return out


def mmss(seconds: float) -> str:
    """0:05, 1:20, and 0:12.5 for a fraction of a second."""
    whole = round(seconds, 2)
    minutes, rest = divmod(whole, 60)
    text = f"{int(minutes)}:{int(rest):02d}"
    frac = round(rest - int(rest), 2)
    return text + (f"{frac:.2f}"[1:].rstrip("0") if frac else "")


def format_timed_prompt(segments: "list[TimedSegment] | list[tuple[float, float, str]]") -> str:
    """The prompt text of sections given as (start, end, text): what the CLI takes and the
    sidecar records, so a Python call and a command line give the same conditioning."""
    items = [s if isinstance(s, TimedSegment) else TimedSegment(*s) for s in segments]
    if not items:
        raise ValueError("no sections given")
    for i, s in enumerate(items):
        if not isinstance(s.text, str) or not s.text.strip() or ";" in s.text:
            raise ValueError(f"section {i + 1}: the text must be non-empty and hold no ';'")
        for v in (s.start, s.end):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"section {i + 1}: start and end must be seconds >= 0, got ({s.start}, {s.end})")
    text = "; ".join(f"{mmss(s.start)}-{mmss(s.end)} {s.text.strip()}" for s in items)
    parse_timed_prompt(text)  # the same checks as a typed prompt
    return text


def is_section_list(value: object) -> bool:
    """Whether ``value`` is sections given as a list of (start, end, text) triples."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[2], str)
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v[:2]) for v in value))
