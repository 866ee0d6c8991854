"""Instruments a prompt names, read against the corpus's instrument table.

A sentence encoder trained on general text puts "church organ hymn" and "brass fanfare"
close together (both solemn, both ceremonial), and a few thousand captions do not teach a
generator that "fiddle" is a violin or that "French horns" are brass: the bundled models
followed the instrument of 53-57% of prompts in free wording, against 71-73% for the
corpus's own caption style.  Like tempo and key (:mod:`tunesmith.conditioning.attributes`),
the instruments are parsed and handed over as a multi-hot vector: one slot per instrument
of :mod:`tunesmith.data.instruments` and one per family, so a prompt that names only a
family ("a brass fanfare") still says something.

The slot order is part of every trained model that reads these vectors: new instruments
and families are appended, never inserted.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch

from tunesmith.data.captions import FAMILY_WORDS, SYNONYMS
from tunesmith.data.instruments import BY_NAME, DRUM_KIT
from tunesmith.data.styles import STYLES

FAMILY_SLOTS = ("bass", "brass", "choir", "drums", "guitar", "mallets", "organ", "piano",
                "plucked", "strings", "synth", "woodwinds")
INSTRUMENT_SLOTS = (
    "piano", "bright piano", "electric piano", "harpsichord", "celesta", "glockenspiel",
    "vibraphone", "marimba", "xylophone", "church organ", "drawbar organ", "accordion",
    "harmonica", "nylon guitar", "steel guitar", "jazz guitar", "clean electric guitar",
    "overdriven guitar", "distortion guitar", "upright bass", "electric bass", "synth bass",
    "violin", "viola", "cello", "contrabass", "pizzicato strings", "harp", "string ensemble",
    "choir", "trumpet", "trombone", "tuba", "french horn", "brass section", "soprano sax",
    "alto sax", "tenor sax", "oboe", "bassoon", "clarinet", "flute", "piccolo", "pan flute",
    "square lead", "sawtooth lead", "warm pad", "polysynth pad", "choir pad", "banjo", "sitar",
    "koto", "fiddle", "drum kit",
)
INSTRUMENT_DIM = len(FAMILY_SLOTS) + len(INSTRUMENT_SLOTS)

# everyday names for instruments and groups that the captions do not use
_MORE_NAMES: dict[str, tuple[str, ...]] = {
    "string trio": ("violin", "viola", "cello"),
    "piano trio": ("piano", "violin", "cello"),
    "horn": ("french horn",),
    "saxophone": ("alto sax",),
    "sax": ("alto sax",),
    "alto saxophone": ("alto sax",),
    "tenor saxophone": ("tenor sax",),
    "soprano saxophone": ("soprano sax",),
    "electric guitar": ("clean electric guitar",),
    "synth lead": ("sawtooth lead",),
    "lead synth": ("sawtooth lead",),
    "pipe organ": ("church organ",),
    "hammond organ": ("drawbar organ",),
    "double bass": ("upright bass",),
    "acoustic bass": ("upright bass",),
    "bass guitar": ("electric bass",),
    "drumkit": ("drum kit",),
    "drum set": ("drum kit",),
    "drum": ("drum kit",),
}
# family words the captions do not use
_MORE_FAMILY_WORDS = {"synth": "synth", "synthesizer": "synth"}


def _ensembles() -> dict[str, set[str]]:
    """Each ensemble name of the styles and the instruments it always has ("brass choir", "rock band").

    A name used by several styles with different line-ups ("string orchestra") keeps only
    the instruments common to all of them.
    """
    ensembles: dict[str, set[str]] = {}
    for style in STYLES.values():
        for name, voices in style.ensembles:
            ensembles[name.lower()] = ensembles.get(name.lower(), set(voices)) & set(voices)
    return ensembles


@lru_cache(maxsize=1)
def _phrases() -> list[tuple[re.Pattern[str], tuple[str, ...], tuple[str, ...]]]:
    """(pattern, instruments, families) for every phrase, longest phrase first."""
    table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for name in (*BY_NAME, DRUM_KIT.name):
        for phrase in (name, *SYNONYMS.get(name, ())):
            table[phrase.lower()] = ((name,), ())
    for ensemble, instruments in _ensembles().items():
        table.setdefault(ensemble, (tuple(sorted(instruments)), ()))
    for phrase, names in _MORE_NAMES.items():
        table.setdefault(phrase, (names, ()))
    for family, words in FAMILY_WORDS.items():
        for word in words:  # as the captions use them: "keys" is the piano family here, not a musical key
            table.setdefault(word.lower(), ((), (family,)))
    for word, family in _MORE_FAMILY_WORDS.items():
        table.setdefault(word, ((), (family,)))
    ordered = sorted(table.items(), key=lambda item: -len(item[0]))
    # an optional plural ("trumpets", "French horns", "synth pads"); "a drum kit" etc. stay whole phrases
    return [(re.compile(r"\b" + re.escape(phrase) + r"(?:s|es)?\b"), names, families)
            for phrase, (names, families) in ordered]


def parse_instruments(text: str) -> tuple[set[str], set[str]]:
    """(instrument names, families) that ``text`` names, longest phrases first.

    A phrase that matched is blanked out, so "synth bass" is not also "bass" and
    "string quartet" not also "strings".  Every named instrument adds its family.
    """
    remaining = text.lower()
    instruments: set[str] = set()
    families: set[str] = set()
    for pattern, names, named_families in _phrases():
        remaining, found = pattern.subn(" ", remaining)
        if found:
            instruments.update(names)
            families.update(named_families)
    families.update(DRUM_KIT.family if name == DRUM_KIT.name else BY_NAME[name].family for name in instruments)
    return instruments, families


def instrument_vector(instruments: set[str], families: set[str]) -> torch.Tensor:
    """(INSTRUMENT_DIM,) multi-hot: family slots, then instrument slots."""
    vector = torch.zeros(INSTRUMENT_DIM)
    for family in families:
        vector[FAMILY_SLOTS.index(family)] = 1.0
    for name in instruments:
        vector[len(FAMILY_SLOTS) + INSTRUMENT_SLOTS.index(name)] = 1.0
    return vector
