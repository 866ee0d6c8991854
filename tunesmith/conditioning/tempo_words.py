"""Tempo words: a prompt without a BPM number still gets a steady beat.

Most prompts people write say "slow", "lively", "a fast jig" or "a march", not "120 BPM",
and a model with a beat clock (:mod:`.beat`) kept time only when a number was given.  Here
words map to a range of tempi, and the seed draws one tempo from it, so the clock is on for
those prompts too while different seeds still give different tempi.

The ranges are the corpus builder's own (the model learnt them): a style noun ("march",
"ballad", "jig") gives the style's tempo range (:data:`tunesmith.data.styles.STYLES`); a
pace word ("slow", "fast") gives the range its caption word covers
(:func:`tunesmith.data.captions.pace_word`); a style's adjective ("lively" is a jig's,
"tender" a ballad's) gives that style's range when no style is named.  A style and a pace
word together ("a fast jig") take the part of the style's range the pace word covers, or
else the third of it nearest the pace.  A number always wins; a prompt with neither gives None.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from tunesmith.conditioning.prompt import parse_tempo

# pace words (and Italian tempo marks) -> the caption word whose range they mean
PACE_SYNONYMS: dict[str, str] = {
    "slow": "slow", "slowly": "slow", "unhurried": "slow", "leisurely": "slow", "downtempo": "slow",
    "largo": "slow", "adagio": "slow", "lento": "slow", "languid": "slow",
    "moderate": "moderate", "moderately paced": "moderate", "mid-tempo": "moderate", "midtempo": "moderate",
    "medium tempo": "moderate", "medium-tempo": "moderate", "andante": "moderate", "moderato": "moderate",
    "fast": "fast", "quick": "fast", "rapid": "fast", "up-tempo": "fast", "uptempo": "fast", "allegro": "fast",
    "very fast": "very fast", "very quick": "very fast", "frantic": "very fast", "breakneck": "very fast",
    "presto": "very fast", "vivace": "very fast",
}
# the corpus styles' adjectives that say something of pace ("gentle" or "elegant" do not); each
# gives the range of the style whose adjective it is
PACE_ADJECTIVES = ("lively", "bouncy", "spirited", "dancing", "brisk", "rousing", "driving", "energetic", "punchy",
                   "upbeat", "breezy", "pulsing", "danceable", "laid-back", "easygoing", "relaxed", "calm", "serene",
                   "floating", "dreamy", "solemn", "stately", "swaying", "lilting")
# style nouns beyond the style names themselves (the caption nouns' own words)
STYLE_SYNONYMS: dict[str, str] = {
    "marching": "march", "marches": "march", "waltzes": "waltz", "jigs": "jig", "reel": "jig", "ballads": "ballad",
    "hymn": "chorale", "chorales": "chorale", "jazz": "swing", "jazzy": "swing", "techno": "electronic",
    "synth-pop": "pop", "soundscape": "ambient", "chamber music": "chamber", "folk dance": "jig",
}


@dataclass(frozen=True)
class TempoWords:
    """A prompt's tempo words and the range (BPM, inclusive) they give."""

    low: int
    high: int
    words: tuple[str, ...]  # what was read, in the order style, pace, adjective

    def draw(self, seed: int) -> float:
        """The tempo the seed picks from the range: uniform over its whole BPM values."""
        return float(np.random.default_rng(seed).integers(self.low, self.high + 1))


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], dict[str, str]]:
    """(style -> range, pace word -> range, adjective -> style), from the corpus builder's tables
    (imported here, not at module level: the networks import the beat clock, not the corpus)."""
    from tunesmith.data.captions import pace_word
    from tunesmith.data.styles import STYLES

    styles = {name: (int(s.tempo[0]), int(s.tempo[1])) for name, s in STYLES.items()}
    lowest, highest = min(lo for lo, _ in styles.values()), max(hi for _, hi in styles.values())
    paces: dict[str, tuple[int, int]] = {}
    for bpm in range(lowest, highest + 1):
        word = pace_word(bpm)
        lo, hi = paces.get(word, (bpm, bpm))
        paces[word] = (min(lo, bpm), max(hi, bpm))
    adjectives: dict[str, str] = {}
    for name, s in STYLES.items():
        for adjective in s.adjectives:  # the first style to claim an adjective keeps it ("stately")
            if adjective in PACE_ADJECTIVES:
                adjectives.setdefault(adjective, name)
    return styles, paces, adjectives


def _find(text: str, words: list[str]) -> str | None:
    """The first of ``words`` (longest first at the same place) in ``text`` as whole words."""
    best: tuple[int, int, str] | None = None
    for word in words:
        match = re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)
        if match and (best is None or (match.start(), -len(word)) < (best[0], best[1])):
            best = (match.start(), -len(word), word)
    return best[2] if best else None


def _part(style: tuple[int, int], pace: tuple[int, int], pace_name: str) -> tuple[int, int]:
    """The part of a style's range a pace word covers; or the third of it nearest the pace."""
    lo, hi = max(style[0], pace[0]), min(style[1], pace[1])
    if lo <= hi:
        return lo, hi
    third = max(1, (style[1] - style[0]) // 3)
    if pace[1] < style[0]:  # slower than the style ever is: its slow end
        return style[0], style[0] + third
    return style[1] - third, style[1]


def tempo_words(text: str) -> TempoWords | None:
    """The tempo range a prompt's words give (see the module docstring), or None."""
    styles, paces, adjectives = _tables()
    lowered = text.lower()
    style_words = {**{name: name for name in styles}, **STYLE_SYNONYMS}
    style_word = _find(lowered, sorted(style_words))
    pace_word_found = _find(lowered, sorted(PACE_SYNONYMS))
    style = style_words[style_word] if style_word else None
    pace = PACE_SYNONYMS[pace_word_found] if pace_word_found else None
    adjective = None
    if style is None:
        adjective = _find(lowered, sorted(adjectives))
        style = adjectives[adjective] if adjective else None
    words = tuple(w for w in (style_word, pace_word_found, adjective) if w)
    if style is not None and pace is not None:
        return TempoWords(*_part(styles[style], paces[pace], pace), words)
    if style is not None:
        return TempoWords(*styles[style], words)
    if pace is not None:
        return TempoWords(*paces[pace], words)
    return None


def prompt_tempo(text: str, seed: int = 0) -> float | None:
    """The tempo a prompt gives its beat clock: its BPM number, else one the seed draws from
    its tempo words' range, else None (no clock)."""
    bpm = parse_tempo(text)
    if bpm is not None:
        return bpm
    found = tempo_words(text)
    return None if found is None else found.draw(seed)
