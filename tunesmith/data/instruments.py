"""General MIDI instruments we arrange for: program, caption name, family and playable range.

Only programs that sound convincing in the common GM SoundFonts are listed; each has a
family (what text conditioning and evaluation check) and a comfortable MIDI pitch range
(parts are moved by octaves into it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instrument:
    program: int  # GM program number 0..127
    name: str  # the plain name used in captions and tags
    family: str
    low: int  # comfortable MIDI pitch range
    high: int
    sustained: bool = True  # holds a note (strings, winds, organ) rather than decaying


DRUM_KIT = Instrument(program=0, name="drum kit", family="drums", low=35, high=81, sustained=False)
DRUM_CHANNEL = 9

_TABLE = [
    Instrument(0, "piano", "piano", 28, 100, False),
    Instrument(1, "bright piano", "piano", 28, 100, False),
    Instrument(4, "electric piano", "piano", 36, 96, False),
    Instrument(6, "harpsichord", "piano", 29, 89, False),
    Instrument(8, "celesta", "mallets", 60, 108, False),
    Instrument(9, "glockenspiel", "mallets", 72, 108, False),
    Instrument(11, "vibraphone", "mallets", 53, 89, False),
    Instrument(12, "marimba", "mallets", 45, 96, False),
    Instrument(13, "xylophone", "mallets", 65, 108, False),
    Instrument(19, "church organ", "organ", 24, 96),
    Instrument(16, "drawbar organ", "organ", 36, 96),
    Instrument(21, "accordion", "organ", 41, 89),
    Instrument(22, "harmonica", "woodwinds", 60, 84),
    Instrument(24, "nylon guitar", "guitar", 40, 83, False),
    Instrument(25, "steel guitar", "guitar", 40, 83, False),
    Instrument(26, "jazz guitar", "guitar", 40, 83, False),
    Instrument(27, "clean electric guitar", "guitar", 40, 86, False),
    Instrument(29, "overdriven guitar", "guitar", 40, 86),
    Instrument(30, "distortion guitar", "guitar", 40, 86),
    Instrument(32, "upright bass", "bass", 28, 55, False),
    Instrument(33, "electric bass", "bass", 28, 60, False),
    Instrument(38, "synth bass", "bass", 28, 60, False),
    Instrument(40, "violin", "strings", 55, 100),
    Instrument(41, "viola", "strings", 48, 88),
    Instrument(42, "cello", "strings", 36, 76),
    Instrument(43, "contrabass", "strings", 28, 60),
    Instrument(45, "pizzicato strings", "strings", 36, 91, False),
    Instrument(46, "harp", "plucked", 24, 103, False),
    Instrument(48, "string ensemble", "strings", 28, 96),
    Instrument(52, "choir", "choir", 40, 84),
    Instrument(56, "trumpet", "brass", 54, 84),
    Instrument(57, "trombone", "brass", 40, 72),
    Instrument(58, "tuba", "brass", 28, 58),
    Instrument(60, "french horn", "brass", 41, 77),
    Instrument(61, "brass section", "brass", 40, 84),
    Instrument(64, "soprano sax", "woodwinds", 56, 87),
    Instrument(65, "alto sax", "woodwinds", 49, 80),
    Instrument(66, "tenor sax", "woodwinds", 44, 75),
    Instrument(68, "oboe", "woodwinds", 58, 91),
    Instrument(70, "bassoon", "woodwinds", 34, 72),
    Instrument(71, "clarinet", "woodwinds", 50, 91),
    Instrument(73, "flute", "woodwinds", 60, 96),
    Instrument(72, "piccolo", "woodwinds", 74, 108),
    Instrument(75, "pan flute", "woodwinds", 60, 96),
    Instrument(80, "square lead", "synth", 36, 96),
    Instrument(81, "sawtooth lead", "synth", 36, 96),
    Instrument(88, "warm pad", "synth", 36, 96),
    Instrument(89, "polysynth pad", "synth", 36, 96),
    Instrument(91, "choir pad", "synth", 36, 96),
    Instrument(105, "banjo", "plucked", 48, 84, False),
    Instrument(104, "sitar", "plucked", 48, 84, False),
    Instrument(107, "koto", "plucked", 48, 96, False),
    Instrument(110, "fiddle", "strings", 55, 100),
]

BY_NAME: dict[str, Instrument] = {i.name: i for i in _TABLE}
BY_PROGRAM: dict[int, Instrument] = {i.program: i for i in _TABLE}
FAMILIES = sorted({i.family for i in _TABLE} | {DRUM_KIT.family})


def instrument(name: str) -> Instrument:
    """Look an instrument up by its caption name."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown instrument '{name}' (known: {', '.join(sorted(BY_NAME))})") from None


def fit_octave(pitches: list[int], inst: Instrument) -> int:
    """The octave shift (in semitones, multiple of 12) that best centres ``pitches`` in the range."""
    if not pitches:
        return 0
    lo, hi = min(pitches), max(pitches)
    best, best_cost = 0, None
    for shift in range(-48, 49, 12):
        under = max(0, inst.low - (lo + shift))
        over = max(0, (hi + shift) - inst.high)
        centre = abs((lo + hi) / 2 + shift - (inst.low + inst.high) / 2)
        cost = (under + over) * 100 + centre
        if best_cost is None or cost < best_cost:
            best, best_cost = shift, cost
    return best
