"""A score reduced to what arranging needs: parts of (onset, duration, pitch), measures, key.

music21 parses the sources; everything after works on this small, JSON-serialisable
:class:`Piece`, so a work is parsed once and can be cached and re-arranged cheaply.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_PARTS = 8
MIN_NOTES = 8


class ScoreError(ValueError):
    """A work that cannot be used (unparsable, empty, too many parts): the message is the reason."""


@dataclass
class Piece:
    """One work: parts (top to bottom) of notes as [onset_ql, duration_ql, midi_pitch]."""

    id: str
    title: str
    composer: str
    era: str
    collection: str
    parts: list[list[list[float]]]
    measure_starts: list[float]  # offset of each measure, plus the end of the piece
    meters: list[str]  # time signature of each measure, e.g. "3/4"
    bar_lengths: list[float]  # nominal bar length (ql) of each measure's time signature
    beat_ql: float  # length of one beat of the first meter (1.5 for 6/8)
    tonic_pc: int  # 0 = C
    mode: str  # "major" | "minor"
    monophonic: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_measures(self) -> int:
        return len(self.measure_starts) - 1

    @property
    def length_ql(self) -> float:
        return self.measure_starts[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Piece":
        return cls(**data)


def parse_work(path: str | Path, number: int | None = None, **meta: str) -> Piece:
    """Parse one work (a file, or tune ``number`` of an ABC collection) into a :class:`Piece`."""
    from music21 import converter, stream

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs = {"number": number} if number is not None else {}
            parsed = converter.parse(str(path), forceSource=True, **kwargs)
    except Exception as err:  # music21 raises many types on malformed input
        raise ScoreError(f"music21 cannot parse it: {type(err).__name__}: {str(err)[:120]}") from None
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if not scores:
            raise ScoreError("empty collection")
        parsed = scores[0]
    return piece_from_score(parsed, **meta)


def piece_from_score(score: Any, id: str, title: str = "", composer: str = "", era: str = "",
                     collection: str = "") -> Piece:
    """Reduce a music21 Score (or single Part) to a :class:`Piece`."""
    from music21 import stream

    parts = list(score.parts) if isinstance(score, stream.Score) and score.parts else [score]
    parts = [p for p in parts if p.recurse().notes]
    if not parts:
        raise ScoreError("no notes")
    if len(parts) > MAX_PARTS:
        raise ScoreError(f"{len(parts)} parts (at most {MAX_PARTS} are arranged)")
    measure_starts, meters, bar_lengths, beat_ql = _measures(parts[0], score)
    note_parts = [_part_notes(p) for p in parts]
    note_parts = [n for n in note_parts if n]
    total = sum(len(n) for n in note_parts)
    if total < MIN_NOTES:
        raise ScoreError(f"only {total} notes")
    end = max(max(n[0] + n[1] for n in part) for part in note_parts)
    if end > measure_starts[-1] + 1e-6:
        measure_starts[-1] = end
    monophonic = len(note_parts) == 1 and _is_monophonic(note_parts[0])
    tonic_pc, mode = _key(score)
    md = score.metadata
    if not title and md is not None and md.title:
        title = str(md.title)
    if not composer and md is not None and md.composer:
        composer = str(md.composer)
    return Piece(id=id, title=title or _title_from_id(id), composer=composer, era=era, collection=collection,
                 parts=note_parts, measure_starts=measure_starts, meters=meters, bar_lengths=bar_lengths,
                 beat_ql=beat_ql, tonic_pc=tonic_pc, mode=mode, monophonic=monophonic)


def _title_from_id(work_id: str) -> str:
    """A readable title when the file has none: 'chorale BWV 70.11' for Bach's chorales, else ''."""
    match = re.search(r"bwv(\d+[a-z]?(?:\.\d+)?)", work_id, re.I)
    if match:
        return f"chorale BWV {match.group(1)}"
    return ""


def _measures(part: Any, score: Any) -> tuple[list[float], list[str], list[float], float]:
    """Measure offsets and time signatures from the top part (one bar = whole piece if unmeasured)."""
    from music21 import meter, stream

    measures = list(part.getElementsByClass(stream.Measure))
    starts, meters, bars = [], [], []
    current = part.recurse().getElementsByClass(meter.TimeSignature).first() or meter.TimeSignature("4/4")
    first_ts = current
    for m in measures:
        if m.timeSignature is not None:
            current = m.timeSignature
        if starts and float(m.offset) <= starts[-1]:
            continue
        starts.append(float(m.offset))
        meters.append(current.ratioString)
        bars.append(float(current.barDuration.quarterLength))
    end = float(score.highestTime)
    if not starts:  # unmeasured: cut into bars of the (default) meter
        bar = float(first_ts.barDuration.quarterLength)
        count = max(1, int(end // bar) + (1 if end % bar > 1e-6 else 0))
        starts = [i * bar for i in range(count)]
        meters = [first_ts.ratioString] * count
        bars = [bar] * count
    starts.append(max(end, starts[-1] + 1e-3))
    return starts, meters, bars, float(first_ts.beatDuration.quarterLength)


def _part_notes(part: Any) -> list[list[float]]:
    """Sounding notes of a part, tied notes merged, grace notes and unpitched notes dropped.

    Ties are merged by hand: music21's ``stripTies`` deep-copies the whole part, which
    costs more than parsing the file.
    """
    notes: list[list[float]] = []
    open_ties: dict[int, list[float]] = {}  # midi pitch -> the note a tie continues
    for el in part.flatten().notes:
        dur = float(el.duration.quarterLength)
        if dur <= 0 or el.duration.isGrace:
            continue
        onset = float(el.offset)
        for p in getattr(el, "pitches", ()):
            midi = int(round(p.ps))
            if not 0 <= midi <= 127:
                continue
            tie = _tie_type(el, p)
            held = open_ties.get(midi)
            if tie in ("continue", "stop") and held is not None and abs(held[0] + held[1] - onset) < 1e-3:
                held[1] = onset + dur - held[0]
                if tie == "stop":
                    del open_ties[midi]
                continue
            note = [onset, dur, midi]
            notes.append(note)
            if tie == "start":
                open_ties[midi] = note
    notes.sort()
    return notes


def _tie_type(el: Any, pitch: Any) -> str | None:
    """The tie on this pitch of a note or chord ('start', 'continue', 'stop' or None)."""
    tie = getattr(pitch, "tie", None) if el.isChord else el.tie
    if tie is None and el.isChord:
        tie = el.tie
    return tie.type if tie is not None else None


def _is_monophonic(notes: list[list[float]]) -> bool:
    """True when no two notes start together (a melody line, which we harmonise)."""
    onsets = [n[0] for n in notes]
    return len(set(onsets)) == len(onsets)


def _key(score: Any) -> tuple[int, str]:
    """Tonic pitch class and mode by Krumhansl-Schmuckler key finding over the whole work."""
    try:
        key = score.analyze("key")
    except Exception as err:
        raise ScoreError(f"key analysis failed: {type(err).__name__}") from None
    mode = key.mode if key.mode in ("major", "minor") else "major"
    return int(key.tonic.pitchClass), mode
