"""Arrange a :class:`Piece` for a seed-drawn style: instruments, key, tempo, texture, drums.

The result, an :class:`Arrangement`, is plain MIDI-level data (notes in ticks on channels)
plus the facts captions need.  Every choice comes from the ``rng`` passed in, so the same
piece and seed always give the same arrangement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tunesmith.data import drums as drum_patterns
from tunesmith.data.harmony import Chord, harmonize, spans
from tunesmith.data.instruments import DRUM_CHANNEL, DRUM_KIT, Instrument, fit_octave, instrument
from tunesmith.data.score import Piece
from tunesmith.data.styles import DYNAMICS, STYLES, Style, styles_for

PPQ = 480
DYNAMIC_VELOCITY = {"pp": 34, "p": 48, "mp": 62, "mf": 78, "f": 94, "ff": 110}
Raw = list[tuple[float, float, int, int]]  # onset, duration (ql), pitch, velocity hint (0 = none)
SPACES = {"dry": (0.2, 12), "room": (0.45, 40), "hall": (0.85, 70)}  # reverb room size, send level


@dataclass
class Track:
    role: str  # melody, voice N, accompaniment, bass, drums
    instrument: Instrument
    channel: int
    core: bool  # core tracks carry the work itself and play throughout
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)  # start, end (ticks), pitch, velocity
    volume: int = 100
    pan: int = 64
    reverb: int = 40
    chorus: int = 0


@dataclass
class Section:
    start: int  # ticks
    end: int
    tracks: tuple[int, ...]  # indices of the tracks that play
    dynamic: str


@dataclass
class Arrangement:
    work_id: str
    render_index: int
    style: str
    ensemble: str
    tempo_bpm: int  # beats per minute, beat = the meter's beat
    beat_ql: float
    us_per_quarter: int  # the MIDI tempo
    transpose: int
    tonic_pc: int  # after transposition
    mode: str
    bar_ticks: list[int]  # start of every bar, plus the end of the music
    bar_meters: list[str]
    tracks: list[Track]
    sections: list[Section]
    space: str
    passes: int
    texture: str

    def seconds(self, ticks: float) -> float:
        return ticks * self.us_per_quarter / 1e6 / PPQ

    def ticks(self, seconds: float) -> int:
        return int(round(seconds * 1e6 * PPQ / self.us_per_quarter))

    @property
    def quarter_bpm(self) -> float:
        return 60e6 / self.us_per_quarter


def beat_length(meter: str) -> float:
    """Quarter lengths per beat: 4/d for simple meters, three eighths for compound ones."""
    num, den = (int(x) for x in meter.split("/"))
    unit = 4.0 / den
    return 3 * unit if drum_patterns.meter_class(meter) == "compound" else unit


def _choice(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, pairs: list[tuple[str, float]]) -> str:
    names, weights = zip(*pairs)
    p = np.asarray(weights, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def arrange(piece: Piece, rng: np.random.Generator, render_index: int = 0, group: str = "",
            max_seconds: float = 120.0, min_seconds: float = 30.0) -> Arrangement:
    """Draw a complete arrangement of ``piece`` from ``rng``."""
    meter = piece.meters[0]
    style = STYLES[_weighted(rng, styles_for(drum_patterns.meter_class(meter), piece.monophonic, group))]
    beat_ql = beat_length(meter)
    tempo_bpm = int(rng.integers(style.tempo[0], style.tempo[1] + 1))
    us_per_quarter = int(round(60e6 / (tempo_bpm * beat_ql)))
    sec_per_ql = us_per_quarter / 1e6

    first, last = _bar_range(piece, rng, render_index, max_seconds / sec_per_ql)
    range_ql = piece.measure_starts[last] - piece.measure_starts[first]
    passes = _passes(range_ql * sec_per_ql, float(rng.uniform(min_seconds, min(max_seconds, 2.5 * min_seconds))),
                     max_seconds)

    transpose = int(rng.integers(-5, 7))
    tonic_pc = (piece.tonic_pc + transpose) % 12
    space = _choice(rng, SPACES)

    bars_ql, meters = [], []
    for p in range(passes):
        for b in range(first, last):
            bars_ql.append(p * range_ql + piece.measure_starts[b] - piece.measure_starts[first])
            meters.append(piece.meters[b])
    bars_ql.append(passes * range_ql)
    bar_ticks = [int(round(q * PPQ)) for q in bars_ql]

    def timeline(notes: list[list[float]]) -> list[tuple[float, float, int]]:
        """Notes of the chosen bar range, repeated ``passes`` times, in timeline quarter lengths."""
        a, b = piece.measure_starts[first], piece.measure_starts[last]
        out = []
        for p in range(passes):
            for onset, dur, pitch in notes:
                if a <= onset < b:
                    out.append((p * range_ql + onset - a, min(dur, b - onset), int(pitch) + transpose))
        return out

    if piece.monophonic:
        melody = timeline(piece.parts[0])
        ensemble, tracks = _melodic_tracks(style, rng)
        sources = {0: melody}
        bar_lengths = [piece.bar_lengths[first + (i % (last - first))] for i in range(len(bars_ql) - 1)]
        chords = harmonize([list(n) for n in melody], spans(bars_ql, bar_lengths, beat_ql), tonic_pc, piece.mode)
    else:
        parts = [timeline(p) for p in piece.parts]
        ensemble, tracks = _ensemble_tracks(style, rng, len(parts))
        sources = dict(enumerate(parts))
        chords = []
    if rng.random() < style.drums * (1.0 if piece.monophonic else 0.6) and all(
            drum_patterns.meter_class(m) != "odd" for m in meters):
        tracks.append(Track("drums", DRUM_KIT, DRUM_CHANNEL, core=False, volume=92))
    _mix(tracks, rng, space)

    texture, sections = _sections(tracks, bar_ticks, style, rng, sec_per_ql)
    arr = Arrangement(piece.id, render_index, style.name, ensemble, tempo_bpm, beat_ql, us_per_quarter, transpose,
                      tonic_pc, piece.mode, bar_ticks, meters, tracks, sections, space, passes, texture)
    _fill_notes(arr, style, rng, chords, sources)
    return arr


def _passes(range_seconds: float, target_seconds: float, max_seconds: float) -> int:
    """How many times to play a short tune: enough to reach the target, at most 4, within the maximum."""
    wanted = math.ceil(target_seconds / range_seconds)
    fitting = int(max_seconds // range_seconds)
    return max(1, min(4, wanted, fitting))


def _bar_range(piece: Piece, rng: np.random.Generator, render_index: int, max_ql: float) -> tuple[int, int]:
    """Bars [first, last) to play: the whole work if it fits, else a window (from the top on the first render)."""
    n = piece.num_measures
    starts = piece.measure_starts
    if starts[-1] - starts[0] <= max_ql:
        return 0, n
    last_start = max(i for i in range(n) if starts[-1] - starts[i] >= max_ql * 0.5)
    first = 0 if render_index == 0 else int(rng.integers(0, last_start + 1))
    last = first + 1
    while last < n and starts[last + 1] - starts[first] <= max_ql:
        last += 1
    return first, last


def _melodic_tracks(style: Style, rng: np.random.Generator) -> tuple[str, list[Track]]:
    """Lead, accompaniment and (maybe) bass for a single-line tune."""
    lead = instrument(_choice(rng, style.leads))
    comp = instrument(_choice(rng, [c for c in style.comps if c != lead.name] or style.comps))
    tracks = [Track("melody", lead, 0, core=True), Track("accompaniment", comp, 1, core=False)]
    bass_name = _choice(rng, style.basses)
    if bass_name:
        tracks.append(Track("bass", instrument(bass_name), 2, core=False))
    names = [lead.name, comp.name] + ([bass_name] if bass_name else [])
    return f"{' with '.join(names[:2])}" + (f" and {bass_name}" if bass_name else ""), tracks


def _ensemble_tracks(style: Style, rng: np.random.Generator, num_parts: int) -> tuple[str, list[Track]]:
    """One track per part, voices of the ensemble spread from the top part to the bass."""
    name, voices = _choice(rng, style.ensembles)
    tracks = []
    for i in range(num_parts):
        k = 0 if num_parts == 1 else round(i * (len(voices) - 1) / (num_parts - 1))
        channel = i if i < DRUM_CHANNEL else i + 1
        tracks.append(Track("melody" if i == 0 else f"voice {i + 1}", instrument(voices[k]), channel, core=True))
    return name, tracks


def _mix(tracks: list[Track], rng: np.random.Generator, space: str) -> None:
    """Balance, stereo placement and effect sends (melody a little louder and central)."""
    send = SPACES[space][1]
    for t in tracks:
        t.volume = {"melody": 112, "drums": 96, "bass": 104}.get(t.role, 96)
        t.pan = 64 if t.role in ("melody", "bass", "drums") else int(rng.integers(34, 95))
        t.reverb = int(np.clip(send + rng.integers(-8, 9), 0, 127))
        t.chorus = int(rng.integers(0, 30)) if t.instrument.family in ("synth", "strings", "piano") else 0


def _sections(tracks: list[Track], bar_ticks: list[int], style: Style, rng: np.random.Generator,
              sec_per_ql: float) -> tuple[str, list[Section]]:
    """Cut the bars into phrases and draw which tracks play and how loud in each."""
    bar_sec = (bar_ticks[1] - bar_ticks[0]) / PPQ * sec_per_ql if len(bar_ticks) > 1 else 2.0
    phrase = 4 if bar_sec * 4 >= 7 else 8
    bounds = list(range(0, len(bar_ticks) - 1, phrase))
    if len(bar_ticks) - 1 - bounds[-1] < 2 and len(bounds) > 1:
        bounds.pop()
    bounds.append(len(bar_ticks) - 1)
    core = [i for i, t in enumerate(tracks) if t.core]
    added = [i for i, t in enumerate(tracks) if not t.core]
    n = len(bounds) - 1
    textures = ["steady"] + (["build", "breakdown"] if added and n >= 2 else [])
    texture = _choice(rng, textures)
    lo, hi = DYNAMICS.index(style.dynamics[0]), DYNAMICS.index(style.dynamics[1])
    level = int(rng.integers(lo, hi + 1)) if texture != "build" else lo + int(rng.integers(0, max(1, (hi - lo) // 2 + 1)))
    order = list(rng.permutation(added)) if added else []
    out = []
    for s in range(n):
        if texture == "build":
            joined = order[: max(0, min(len(order), round(s * len(order) / max(1, n - 1))))] if n > 1 else order
            active = core + [i for i in added if i in joined]
            if s > 0:
                level = min(hi, level + int(rng.integers(0, 2)))
        elif texture == "breakdown" and 0 < s == n // 2:
            keep = [i for i in added if tracks[i].role == "accompaniment"]
            active = core + keep
            level = max(lo, level - 1)
        else:
            active = core + added
            if s > 0:
                level = int(np.clip(level + rng.integers(-1, 2), lo, hi))
        out.append(Section(bar_ticks[bounds[s]], bar_ticks[bounds[s + 1]], tuple(sorted(int(i) for i in active)),
                           DYNAMICS[level]))
    return texture, out


def _fill_notes(arr: Arrangement, style: Style, rng: np.random.Generator, chords: list[Chord],
                sources: dict[int, list[tuple[float, float, int]]]) -> None:
    """Turn the timeline into MIDI notes for every track, respecting sections and dynamics."""
    for index, track in enumerate(arr.tracks):
        if track.role == "drums":
            raw = _drum_notes(arr, style, rng)
        elif track.role == "accompaniment":
            raw = _comp_notes(chords, style, rng, arr.beat_ql)
        elif track.role == "bass":
            raw = _bass_notes(chords, style, arr.beat_ql)
        else:
            raw = [(o, d, p, 0) for o, d, p in sources[index]]
        if track.role != "drums":
            shift = fit_octave([n[2] for n in raw], track.instrument)
            raw = [(o, d, p + shift, v) for o, d, p, v in raw]
        art = float(rng.uniform(*style.articulation)) if track.role != "drums" else 1.0
        notes = []
        for onset, dur, pitch, hint in raw:
            start = int(round(onset * PPQ))
            section = _section_at(arr.sections, start)
            if section is None or index not in section.tracks or not 0 <= pitch <= 127:
                continue
            end = start + max(PPQ // 16, int(round(dur * art * PPQ)))
            if not _plays_next(arr.sections, section, index):
                end = min(end, section.end)
            notes.append((start, end, int(pitch), _velocity(track, section, start, arr.bar_ticks, rng, hint)))
        track.notes = sorted(notes)


def _section_at(sections: list[Section], tick: int) -> Section | None:
    for s in sections:
        if s.start <= tick < s.end:
            return s
    return None


def _plays_next(sections: list[Section], section: Section, index: int) -> bool:
    k = sections.index(section)
    return k + 1 < len(sections) and index in sections[k + 1].tracks


def _velocity(track: Track, section: Section, tick: int, bar_ticks: list[int], rng: np.random.Generator,
              hint: int = 0) -> int:
    """MIDI velocity from the section's dynamic, the track's role, bar accents and a little jitter.

    ``hint`` (drum patterns) is the pattern's own velocity at mezzo-forte, scaled to the dynamic.
    """
    if hint:
        scaled = hint * DYNAMIC_VELOCITY[section.dynamic] / DYNAMIC_VELOCITY["mf"]
        return int(np.clip(scaled + rng.integers(-3, 4), 1, 127))
    base = DYNAMIC_VELOCITY[section.dynamic]
    base += {"melody": 8, "accompaniment": -8, "bass": -2, "drums": 0}.get(track.role, 0)
    if tick in bar_ticks:
        base += 6
    return int(np.clip(base + rng.integers(-4, 5), 1, 127))


def _voicing(chord: Chord, low: int) -> list[int]:
    """Chord tones stacked upward from ``low`` (one of each pitch class)."""
    return sorted(low + (pc - low) % 12 for pc in chord.pcs)


def _comp_notes(chords: list[Chord], style: Style, rng: np.random.Generator, beat: float) -> Raw:
    """Accompaniment in one of the style's patterns over the harmonised chords."""
    pattern = _choice(rng, style.comp_patterns)
    out: Raw = []
    for ch in chords:
        span = ch.end - ch.start
        tones = _voicing(ch, 55)
        beats = [ch.start + k * beat for k in range(max(1, int(round(span / beat))))]
        if pattern == "pad":
            out += [(ch.start, span, p, 0) for p in tones]
        elif pattern == "block":
            out += [(b, beat * 0.9, p, 0) for b in beats for p in tones]
        elif pattern == "arpeggio":
            step = beat / 3 if abs(beat - 1.5) < 1e-6 else beat / 2
            seq = tones + [tones[0] + 12] + tones[1:][::-1]
            for k in range(int(round(span / step))):
                out.append((ch.start + k * step, step, seq[k % len(seq)], 0))
        elif pattern == "strum":
            wide = [40 + (ch.root_pc - 40) % 12] + tones
            for b in beats:
                out += [(b + j * 0.02, beat * 0.95 - j * 0.02, p, 0) for j, p in enumerate(sorted(set(wide)))]
        elif pattern in ("oompah", "waltz"):
            offs = [b for k, b in enumerate(beats) if k % 2 == 1] if len(beats) != 3 else beats[1:]
            if abs(beat - 1.5) < 1e-6:  # compound: chords on the last eighth of each beat
                offs = [b + beat * 2 / 3 for b in beats]
            out += [(b, beat * 0.45, p, 0) for b in offs for p in tones]
        else:  # offbeat
            out += [(b + beat / 2, beat * 0.4, p, 0) for b in beats for p in tones]
    return out


def _bass_notes(chords: list[Chord], style: Style, beat: float) -> Raw:
    """Roots (and fifths in dance styles) on the strong beats, held in slow styles."""
    out: Raw = []
    for ch in chords:
        span = ch.end - ch.start
        root = 36 + (ch.root_pc - 36) % 12
        n = max(1, int(round(span / beat)))
        if style.name in ("ambient", "chorale", "ballad") or n == 1:
            out.append((ch.start, span, root, 0))
            continue
        hits = [0, n // 2] if n >= 2 else [0]
        if style.name in ("rock", "electronic", "swing"):
            hits = list(range(n))
        for j, k in enumerate(hits):
            nxt = hits[j + 1] if j + 1 < len(hits) else n
            pitch = root + 7 if (style.name in ("march", "waltz", "jig", "folk") and j % 2) else root
            out.append((ch.start + k * beat, (nxt - k) * beat * 0.9, pitch, 0))
    return out


def _drum_notes(arr: Arrangement, style: Style, rng: np.random.Generator) -> Raw:
    """The style's bar pattern on every full bar, with fills and crashes at section changes."""
    out: Raw = []
    section_starts = {s.start for s in arr.sections}
    fills = style.name in ("rock", "pop", "electronic", "march")
    for i, meter in enumerate(arr.bar_meters):
        a, b = arr.bar_ticks[i], arr.bar_ticks[i + 1]
        beat_ticks = beat_length(meter) * PPQ
        num, den = (int(x) for x in meter.split("/"))
        bar_ticks = num * 4 / den * PPQ
        if abs((b - a) - bar_ticks) > 1:  # pickup or odd bar: leave it to the band
            continue
        hits = drum_patterns.bar_pattern(style.name, meter)
        if fills and b in section_starts and b != arr.bar_ticks[-1] and rng.random() < 0.6:
            beats = bar_ticks / beat_ticks
            hits = [h for h in hits if h[0] < beats - 1] + drum_patterns.fill(beats)
        if fills and a in section_starts and a != 0:
            hits = hits + [(0.0, drum_patterns.CRASH, 90)]
        out += [(a / PPQ + off * beat_ticks / PPQ, 0.25, note, vel) for off, note, vel in hits]
    return out
