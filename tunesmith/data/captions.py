"""Captions and tags from the exact facts of a rendered clip.

Tags are the facts themselves (what evaluation checks); captions say the same facts in
natural language with varied wording, order and synonyms, drawn from a seeded generator,
so a model learns the facts rather than one template.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.data.styles import STYLES


# every phrase a caption may use for an instrument; tests map captions back through this
SYNONYMS: dict[str, tuple[str, ...]] = {
    "piano": ("piano", "acoustic piano", "grand piano"),
    "bright piano": ("bright piano", "bright acoustic piano"),
    "electric piano": ("electric piano", "Rhodes-style electric piano"),
    "drum kit": ("drums", "drum kit", "a drum kit"),
    "string ensemble": ("string ensemble", "string section", "strings"),
    "choir": ("choir", "voices"),
    "church organ": ("church organ", "pipe organ"),
    "drawbar organ": ("drawbar organ", "electric organ"),
    "steel guitar": ("steel-string acoustic guitar", "acoustic guitar"),
    "nylon guitar": ("nylon-string guitar", "classical guitar"),
    "upright bass": ("upright bass", "double bass"),
    "brass section": ("brass section", "brass"),
    "warm pad": ("warm synth pad", "warm pad"),
    "polysynth pad": ("polysynth pad", "synth pad"),
}

STYLE_NOUNS = {
    "chamber": ("chamber piece", "chamber arrangement", "piece of chamber music"),
    "chorale": ("chorale", "hymn setting", "chorale arrangement"),
    "march": ("march", "marching tune"),
    "waltz": ("waltz",),
    "rock": ("rock arrangement", "rock track", "rock instrumental"),
    "pop": ("pop instrumental", "pop arrangement", "pop tune"),
    "swing": ("swing tune", "swing number", "jazz arrangement"),
    "ballad": ("ballad", "slow ballad"),
    "jig": ("jig", "folk dance tune", "jig-like dance"),
    "folk": ("folk tune", "folk arrangement", "traditional tune"),
    "electronic": ("electronic track", "synth-driven piece", "electronic arrangement"),
    "ambient": ("ambient piece", "ambient soundscape", "ambient arrangement"),
}

DYNAMIC_WORDS = {"pp": ("very soft", "very quiet", "hushed"), "p": ("soft", "quiet", "gentle"),
                 "mp": ("moderately soft", "restrained"), "mf": ("moderately loud", "medium loud"),
                 "f": ("loud", "strong", "forceful"), "ff": ("very loud", "powerful", "full-throated")}
ERA_WORDS = {"baroque": "Baroque", "classical": "Classical-era", "romantic": "Romantic-era",
             "renaissance": "Renaissance", "medieval": "medieval", "traditional": "traditional"}


def mmss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def _pick(rng: np.random.Generator, options) -> Any:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def say_instrument(name: str, rng: np.random.Generator) -> str:
    return _pick(rng, SYNONYMS.get(name, (name,)))


def join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def instrumentation(tags: dict[str, Any], rng: np.random.Generator) -> str:
    """'string quartet' when the ensemble sounds complete, otherwise the instruments named one by one."""
    names = tags["instruments"]
    if tags.get("ensemble_complete") and rng.random() < 0.5:
        return tags["ensemble"]
    return join_words([say_instrument(n, rng) for n in names])


def tempo_phrase(bpm: int, rng: np.random.Generator) -> str:
    return _pick(rng, (f"about {bpm} BPM", f"around {bpm} beats per minute", f"at roughly {bpm} bpm",
                       f"{bpm} BPM", f"a tempo of about {bpm} BPM"))


def pace_word(bpm: int) -> str:
    return "slow" if bpm < 76 else "moderate" if bpm < 112 else "fast" if bpm < 150 else "very fast"


def dynamics_phrase(tags: dict[str, Any], rng: np.random.Generator) -> str:
    lo, hi = tags["dynamics_range"]
    if lo == hi:
        return _pick(rng, DYNAMIC_WORDS[lo])
    return _pick(rng, (f"moving between {_pick(rng, DYNAMIC_WORDS[lo])} and {_pick(rng, DYNAMIC_WORDS[hi])}",
                       f"from {_pick(rng, DYNAMIC_WORDS[lo])} to {_pick(rng, DYNAMIC_WORDS[hi])} passages"))


def _safe_title(title: str) -> str:
    """The title, unless it names an instrument (a caption must only name instruments that sound)."""
    from tunesmith.data.instruments import BY_NAME

    lowered = title.lower()
    words = {w for name in BY_NAME for w in (name, *SYNONYMS.get(name, ()))} | {"drum", "string", "horn", "organ",
                                                                              "guitar", "bass", "pipe", "harp"}
    return "" if any(w.lower() in lowered for w in words) else title


def source_phrase(tags: dict[str, Any], rng: np.random.Generator) -> str:
    composer, era, title = tags.get("composer", ""), tags.get("era", ""), _safe_title(tags.get("work", ""))
    if composer and composer not in ("traditional", "anonymous"):
        era_word = ERA_WORDS.get(era, era)
        return _pick(rng, (f"arranged from {composer}'s \"{title}\"" if title else f"after {composer}",
                           f"after {'an' if era_word[:1].lower() in 'aeiou' else 'a'} {era_word} work by {composer}"
                           if era_word else f"after a work by {composer}", f"based on music by {composer}"))
    if tags.get("collection_label"):
        return _pick(rng, (f"based on a {ERA_WORDS.get(era, 'traditional')} melody from {tags['collection_label']}",
                           f"arranged from the tune \"{title}\"" if title else "arranged from a traditional tune"))
    return f"based on a {ERA_WORDS.get(era, 'traditional')} melody" if era else ""


def _subject(inst: str, tags: dict[str, Any]) -> str:
    """'A string quartet plays' for an ensemble name, 'Piano and drums play' for a list."""
    if inst == tags.get("ensemble"):
        return f"{'An' if inst[0] in 'aeiou' else 'A'} {inst} plays"
    single = len(tags["instruments"]) == 1
    return f"{inst[0].upper() + inst[1:]} play{'s' if single else ''}"


def caption(tags: dict[str, Any], rng: np.random.Generator) -> str:
    """One natural-language description of a clip; every fact in it comes from ``tags``."""
    adjective = _pick(rng, tags["adjectives"]) if tags.get("adjectives") and rng.random() < 0.7 else pace_word(tags["tempo_bpm"])
    noun = _pick(rng, STYLE_NOUNS.get(tags["style"], ("piece",)))
    inst = instrumentation(tags, rng)
    key = f"{tags['key']} {tags['mode']}"
    tempo = tempo_phrase(tags["tempo_bpm"], rng)
    article = "An" if adjective[0].lower() in "aeiou" else "A"
    forms = [
        f"{article} {adjective} {noun} for {inst} in {key}, {tempo}.",
        f"{_subject(inst, tags)} a {adjective} {noun} in {key} at {tempo.replace('a tempo of ', '')}.",
        f"{noun[0].upper() + noun[1:]} in {key}, {adjective}, featuring {inst}; {tempo}.",
        f"{article} {adjective} {noun} in {key} with {inst}, {tempo}.",
    ]
    text = _pick(rng, forms)
    extras = []
    if rng.random() < 0.5:
        extras.append(f"The dynamics are {dynamics_phrase(tags, rng)}.")
    if rng.random() < 0.35 and tags["meter"] != "mixed":
        extras.append(_pick(rng, (f"In {tags['meter']} time.", f"The meter is {tags['meter']}.")))
    src = source_phrase(tags, rng) if rng.random() < 0.45 else ""
    if src:
        extras.append(src[0].upper() + src[1:] + ".")
    if rng.random() < 0.25 and tags.get("space") in ("hall", "dry"):
        extras.append("Recorded with a spacious hall reverb." if tags["space"] == "hall" else "A dry, close sound.")
    order = list(rng.permutation(len(extras)))
    text = " ".join([text] + [extras[i] for i in order])
    if tags.get("segments") and len(tags["segments"]) > 1:
        text += " " + "; ".join(seg["text"] for seg in tags["segments"]) + "."
    return text


def segment_texts(segments: list[dict[str, Any]], rng: np.random.Generator) -> list[str]:
    """'0:00-0:12 solo piano, soft' then what changes: who joins or drops out, louder or softer."""
    out = []
    levels = ("pp", "p", "mp", "mf", "f", "ff")
    for k, seg in enumerate(segments):
        span = f"{mmss(seg['start'])}-{mmss(seg['end'])}"
        if k == 0:
            who = seg["instruments"]
            desc = ("solo " + say_instrument(who[0], rng)) if len(who) == 1 else join_words([say_instrument(n, rng) for n in who])
            out.append(f"{span} {desc}, {_pick(rng, DYNAMIC_WORDS[seg['dynamics']])}")
            continue
        prev = segments[k - 1]
        joined = [n for n in seg["instruments"] if n not in prev["instruments"]]
        left = [n for n in prev["instruments"] if n not in seg["instruments"]]
        parts = []
        if joined:
            verbs = ("joins", "comes in", "enters") if len(joined) == 1 else ("join", "come in", "enter")
            parts.append(f"{join_words([say_instrument(n, rng) for n in joined])} {_pick(rng, verbs)}")
        if left:
            verbs = ("drops out", "falls silent", "stops") if len(left) == 1 else ("drop out", "fall silent", "stop")
            parts.append(f"{join_words([say_instrument(n, rng) for n in left])} {_pick(rng, verbs)}")
        step = levels.index(seg["dynamics"]) - levels.index(prev["dynamics"])
        if step:
            parts.append(_pick(rng, ("louder", "growing louder", "more intense")) if step > 0
                         else _pick(rng, ("softer", "quieter", "calmer")))
        out.append(f"{span} {', '.join(parts) if parts else 'continues'}")
    return out


LEVELS = ("pp", "p", "mp", "mf", "f", "ff")


def window_sections(segments: list[dict[str, Any]], start: float, length: float, rng: np.random.Generator,
                    tags: dict[str, Any] | None = None, min_seconds: float = 1.5) -> list[tuple[float, float, str]]:
    """The sections a training window [start, start + length) s hears, as a time-stamped prompt
    would give them: (start, end, text) in seconds from the window's start, contiguous from 0 to
    ``length``; each text stands alone ("solo marimba, quiet", "brass, louder, loud"), because a
    frame reads only its own section's text.  The first section may carry the clip's tempo and
    key, as users write them.  Fewer than two sections of ``min_seconds`` give [] (a plain window)."""
    tags = tags or {}
    heard = []
    for k, seg in enumerate(segments):
        a, b = max(float(seg["start"]), start) - start, min(float(seg["end"]), start + length) - start
        if b - a >= min_seconds:
            heard.append((k, a))
    if len(heard) < 2:
        return []
    out = []
    for n, (k, a) in enumerate(heard):
        seg = segments[k]
        who = seg["instruments"]
        words = [("solo " + say_instrument(who[0], rng)) if len(who) == 1 and rng.random() < 0.5
                 else join_words([say_instrument(name, rng) for name in who])]
        level = seg.get("dynamics")
        if n > 0 and level and segments[heard[n - 1][0]].get("dynamics"):
            step = LEVELS.index(level) - LEVELS.index(segments[heard[n - 1][0]]["dynamics"])
            if step and rng.random() < 0.5:
                words.append(_pick(rng, ("louder", "more intense")) if step > 0 else _pick(rng, ("softer", "quieter")))
        if level:
            words.append(_pick(rng, DYNAMIC_WORDS[level]))
        if n == 0 and tags.get("tempo_bpm") and rng.random() < 0.7:
            words.append(f"{int(tags['tempo_bpm'])} BPM")
        if n == 0 and tags.get("key") and tags.get("mode") and rng.random() < 0.5:
            words.append(f"{tags['key']} {tags['mode']}")
        begin = 0.0 if n == 0 else round(a, 2)
        end = round(length, 2) if n == len(heard) - 1 else round(heard[n + 1][1], 2)
        out.append((begin, end, ", ".join(words)))
    return out


# how a prompt may name a clip whose instruments all belong to one family (not "plucked":
# "plucked strings" would read as the string ensemble)
FAMILY_WORDS: dict[str, tuple[str, ...]] = {
    "strings": ("strings", "string section"), "brass": ("brass", "brass instruments"),
    "woodwinds": ("woodwinds", "winds"), "mallets": ("mallet percussion", "tuned percussion"),
    "choir": ("voices", "choir"), "organ": ("organ",), "guitar": ("guitar", "guitars"),
    "synth": ("synths", "synthesizers"), "piano": ("keys", "keyboard"),
    "bass": ("bass",), "drums": ("drums", "percussion"),
}
# the tags a caption is drawn from; a record lacking one keeps its corpus caption
CAPTION_TAGS = ("instruments", "tempo_bpm", "key", "mode", "style", "dynamics_range", "meter")


def _prompt_instruments(tags: dict[str, Any], rng: np.random.Generator) -> str:
    families = set(tags.get("families", ()))
    draw = rng.random()
    if len(families) == 1 and draw < 0.2 and next(iter(families)) in FAMILY_WORDS:
        return _pick(rng, FAMILY_WORDS[next(iter(families))])
    if len(tags["instruments"]) == 1 and draw < 0.6:
        return "solo " + say_instrument(tags["instruments"][0], rng)
    return instrumentation(tags, rng)


def _prompt_key(tags: dict[str, Any], rng: np.random.Generator) -> str:
    key = tags["key"]
    if rng.random() < 0.2:  # "Bb", "F#": how many people type keys
        key = key.replace("-flat", "b").replace("-sharp", "#")
    return f"{'in ' if rng.random() < 0.4 else ''}{key} {tags['mode']}"


def prompt_caption(tags: dict[str, Any], rng: np.random.Generator) -> str:
    """A short prompt of the kind people type ("Dreamy harp, E-flat major, 76 BPM").

    Corpus captions are full sentences from a few templates; prompts are terse and
    ordered freely.  Training on both (``resample_caption``) teaches the text pathway
    the facts rather than the sentence shapes.  Every fact still comes from ``tags``;
    key and tempo are each left out now and then, as people do.
    """
    bpm = int(tags["tempo_bpm"])
    mood = _pick(rng, tags["adjectives"]) if tags.get("adjectives") and rng.random() < 0.8 else pace_word(bpm)
    inst = _prompt_instruments(tags, rng)
    noun = _pick(rng, STYLE_NOUNS.get(tags["style"], ("piece",)))
    head = _pick(rng, (f"{mood} {inst} {noun}", f"{inst} {noun}, {mood}", f"{mood} {noun} for {inst}",
                       f"{inst}, {mood}", f"{mood} {inst}"))
    tail = []
    if rng.random() < 0.9:
        tail.append(_prompt_key(tags, rng))
    if rng.random() < 0.9:
        tail.append(_pick(rng, (f"{bpm} BPM", f"{bpm} bpm", f"around {bpm} BPM", f"at {bpm} BPM",
                                f"{bpm} beats per minute")))
    if rng.random() < 0.25:
        tail.append(pace_word(bpm))
    tail = [tail[i] for i in rng.permutation(len(tail))]
    text = ", ".join([head] + tail)
    return text[0].upper() + text[1:]


def resample_caption(record: dict[str, Any], rng: np.random.Generator, probability: float) -> str:
    """The record's corpus caption or, with ``probability``, a fresh one drawn from its tags.

    A fresh caption is half the time a corpus-style sentence (new wording, order and
    synonyms) and half the time a short prompt (:func:`prompt_caption`).  One fixed
    caption per clip lets a model tie the caption's incidental words to the clip;
    drawing new ones each time it is seen ties the facts to the sound instead (the
    same reason Stable Audio builds prompts from random subsets of the metadata).
    """
    tags = record.get("tags") or {}
    if probability <= 0 or rng.random() >= probability or any(name not in tags for name in CAPTION_TAGS):
        return record["caption"]
    tags = dict(tags)
    if not tags.get("adjectives"):  # the corpus keeps the style, not the adjectives it drew from
        style = STYLES.get(tags["style"])
        tags["adjectives"] = list(style.adjectives) if style else []
    return caption(tags, rng) if rng.random() < 0.5 else prompt_caption(tags, rng)
