"""Styles: which meters they fit, their tempo range, ensembles, accompaniment and drums.

A style is the seed-drawn "genre" of one arrangement.  Ensembles list instruments from
the highest voice down; melodic styles (for single-line tunes) name lead, accompaniment
and bass choices instead.
"""

from __future__ import annotations

from dataclasses import dataclass

DYNAMICS = ("pp", "p", "mp", "mf", "f", "ff")


@dataclass(frozen=True)
class Style:
    name: str
    meters: tuple[str, ...]  # meter classes it fits: duple, triple, compound, odd
    tempo: tuple[int, int]  # beats per minute (beat = the meter's beat)
    dynamics: tuple[str, str]  # softest and loudest level used
    ensembles: tuple[tuple[str, tuple[str, ...]], ...]  # (ensemble name, voices high -> low)
    leads: tuple[str, ...]  # melody instruments for single-line tunes
    comps: tuple[str, ...]  # accompaniment instruments
    basses: tuple[str, ...]  # bass instruments ("" = none)
    comp_patterns: tuple[str, ...]  # block, oompah, arpeggio, pad, strum, offbeat
    drums: float  # probability of a drum part
    articulation: tuple[float, float]  # fraction of the written length a note sounds
    adjectives: tuple[str, ...]  # words captions may use


STYLES: dict[str, Style] = {s.name: s for s in [
    Style("chamber", ("duple", "triple", "compound", "odd"), (60, 120), ("p", "f"),
          (("string quartet", ("violin", "violin", "viola", "cello")),
           ("woodwind quartet", ("flute", "oboe", "clarinet", "bassoon")),
           ("brass quartet", ("trumpet", "trumpet", "french horn", "trombone")),
           ("piano", ("piano",)), ("harpsichord", ("harpsichord",)),
           ("string orchestra", ("string ensemble", "string ensemble", "cello", "contrabass")),
           ("mixed chamber ensemble", ("flute", "clarinet", "french horn", "cello"))),
          ("violin", "flute", "oboe", "clarinet", "cello"), ("piano", "harp", "harpsichord", "string ensemble"),
          ("cello", "contrabass", ""), ("block", "arpeggio", "pad"), 0.0, (0.85, 0.98),
          ("elegant", "graceful", "refined", "intimate")),
    Style("chorale", ("duple", "triple", "odd"), (50, 84), ("p", "f"),
          (("church organ", ("church organ",)), ("choir", ("choir",)),
           ("brass choir", ("trumpet", "french horn", "trombone", "tuba")),
           ("choir and organ", ("choir", "choir", "church organ", "church organ"))),
          ("church organ", "choir", "trumpet"), ("church organ", "choir"), ("tuba", "contrabass", ""),
          ("pad", "block"), 0.0, (0.92, 1.0), ("solemn", "reverent", "stately", "hymn-like")),
    Style("march", ("duple", "compound"), (100, 126), ("mf", "ff"),
          (("brass band", ("trumpet", "french horn", "trombone", "tuba")),
           ("wind band", ("piccolo", "clarinet", "trumpet", "tuba")),
           ("military band", ("flute", "trumpet", "trombone", "tuba"))),
          ("trumpet", "piccolo", "clarinet", "brass section"), ("brass section", "french horn", "trombone"),
          ("tuba",), ("oompah",), 0.85, (0.6, 0.8), ("stately", "rousing", "brisk", "proud", "festive")),
    Style("waltz", ("triple",), (132, 184), ("p", "f"),
          (("string orchestra", ("violin", "string ensemble", "viola", "cello")),
           ("piano", ("piano",)), ("accordion and strings", ("accordion", "violin", "viola", "cello"))),
          ("violin", "accordion", "flute", "clarinet"), ("piano", "string ensemble", "accordion", "harp"),
          ("contrabass", "cello", "tuba"), ("waltz",), 0.3, (0.75, 0.95), ("lilting", "swaying", "elegant", "romantic")),
    Style("rock", ("duple",), (96, 152), ("mf", "ff"),
          (("rock band", ("distortion guitar", "overdriven guitar", "drawbar organ", "electric bass")),
           ("guitar band", ("overdriven guitar", "clean electric guitar", "clean electric guitar", "electric bass"))),
          ("distortion guitar", "overdriven guitar", "sawtooth lead", "drawbar organ"),
          ("overdriven guitar", "clean electric guitar", "drawbar organ"), ("electric bass",), ("strum", "block"),
          1.0, (0.7, 0.95), ("driving", "energetic", "gritty", "punchy")),
    Style("pop", ("duple",), (88, 128), ("mp", "f"),
          (("pop band", ("electric piano", "steel guitar", "warm pad", "electric bass")),
           ("synth pop", ("square lead", "polysynth pad", "warm pad", "synth bass"))),
          ("electric piano", "square lead", "alto sax", "flute", "steel guitar"),
          ("electric piano", "steel guitar", "polysynth pad", "piano"), ("electric bass", "synth bass"),
          ("arpeggio", "block", "strum", "offbeat"), 0.95, (0.7, 0.95), ("upbeat", "bright", "catchy", "breezy")),
    Style("swing", ("duple",), (100, 176), ("mp", "f"),
          (("jazz combo", ("alto sax", "trumpet", "piano", "upright bass")),
           ("vibraphone quartet", ("vibraphone", "jazz guitar", "piano", "upright bass"))),
          ("alto sax", "tenor sax", "trumpet", "vibraphone", "clarinet"), ("piano", "jazz guitar"), ("upright bass",),
          ("offbeat", "block"), 0.95, (0.6, 0.9), ("jazzy", "relaxed", "laid-back", "easygoing")),
    Style("ballad", ("duple", "triple"), (58, 84), ("pp", "mf"),
          (("piano and strings", ("piano", "string ensemble", "string ensemble", "cello")),
           ("acoustic trio", ("nylon guitar", "piano", "cello"))),
          ("piano", "nylon guitar", "flute", "cello", "violin", "soprano sax"),
          ("piano", "nylon guitar", "string ensemble", "harp"), ("cello", "upright bass", ""), ("arpeggio", "pad"),
          0.4, (0.9, 1.0), ("tender", "gentle", "wistful", "warm", "calm")),
    Style("jig", ("compound",), (100, 132), ("mf", "f"),
          (("folk band", ("fiddle", "flute", "accordion", "upright bass")),),
          ("fiddle", "flute", "pan flute", "accordion", "banjo"), ("steel guitar", "accordion", "harp", "piano"),
          ("upright bass", ""), ("oompah", "strum"), 0.5, (0.7, 0.9), ("lively", "bouncy", "spirited", "dancing")),
    Style("folk", ("duple", "triple", "compound", "odd"), (70, 120), ("p", "f"),
          (("folk ensemble", ("fiddle", "flute", "steel guitar", "upright bass")),
           ("harp and flute", ("flute", "harp"))),
          ("fiddle", "flute", "accordion", "harmonica", "banjo", "violin", "pan flute"),
          ("steel guitar", "nylon guitar", "harp", "accordion", "banjo"), ("upright bass", "cello", ""),
          ("strum", "arpeggio", "oompah"), 0.25, (0.75, 0.95), ("rustic", "simple", "heartfelt", "earthy", "homely")),
    Style("electronic", ("duple",), (112, 134), ("mf", "f"),
          (("synthesizers", ("sawtooth lead", "square lead", "polysynth pad", "synth bass")),),
          ("sawtooth lead", "square lead", "celesta"), ("polysynth pad", "warm pad"), ("synth bass",),
          ("arpeggio", "pad", "offbeat"), 1.0, (0.5, 0.8), ("pulsing", "hypnotic", "glossy", "danceable")),
    Style("ambient", ("duple", "triple", "compound", "odd"), (56, 76), ("pp", "mp"),
          (("pads and bells", ("celesta", "warm pad", "choir pad", "warm pad")),
           ("choir and pads", ("choir", "choir pad", "warm pad", "warm pad"))),
          ("celesta", "vibraphone", "marimba", "pan flute", "glockenspiel"), ("warm pad", "choir pad", "polysynth pad"),
          ("synth bass", ""), ("pad",), 0.0, (0.95, 1.0), ("dreamy", "floating", "serene", "ethereal", "spacious")),
]}


def styles_for(meter_kind: str, monophonic: bool, group: str) -> list[tuple[str, float]]:
    """Styles that fit a work, with sampling weights (hymn-like works favour chorale styles)."""
    weights = {"chamber": 1.0, "chorale": 0.4, "march": 1.0, "waltz": 1.5, "rock": 1.0, "pop": 1.0, "swing": 0.8,
               "ballad": 1.0, "jig": 1.5, "folk": 1.2, "electronic": 0.7, "ambient": 0.6}
    if group == "bach":
        weights.update(chorale=2.0, chamber=1.5)
    if group == "early":
        weights.update(chorale=2.0, chamber=2.0, ambient=1.0)
    if not monophonic:
        weights.update(jig=0.6, folk=0.5)
    return [(name, w) for name, w in weights.items() if meter_kind in STYLES[name].meters]
