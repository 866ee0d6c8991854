"""Cut an arrangement into clips at bar lines and state the exact facts of each clip.

A clip's facts come from the arrangement, restricted to the clip's window: only the
instruments with notes sounding inside it, the sections (and so dynamics) it overlaps,
the tempo and key of the render.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.data.arrange import Arrangement
from tunesmith.data.captions import segment_texts
from tunesmith.data.midi import sounding_tracks, window_key
from tunesmith.data.styles import DYNAMICS, STYLES
from tunesmith.music import tonic_name

MIN_SEGMENT_SECONDS = 3.0  # shorter stretches are folded into their neighbour
BEAT_NAMES = {0.5: "eighth", 1.0: "quarter", 1.5: "dotted quarter", 2.0: "half", 3.0: "dotted half", 4.0: "whole"}


@dataclass(frozen=True)
class ClipWindow:
    start_tick: int
    end_tick: int
    start: float  # seconds in the render
    end: float  # seconds, may include the final ring-out tail

    @property
    def duration(self) -> float:
        return self.end - self.start


def plan_clips(arr: Arrangement, rng: np.random.Generator, min_seconds: float = 10.0, max_seconds: float = 30.0,
               max_clips: int | None = None, tail_seconds: float = 2.0) -> list[ClipWindow]:
    """Consecutive clips of ``min_seconds``..``max_seconds`` starting and ending on bar lines.

    Each clip's length target is drawn from ``rng``; a too-short remainder is merged into
    the previous clip when that stays under ``max_seconds``, else dropped, as are bars too
    long to fit any clip.  The last clip
    keeps up to ``tail_seconds`` of ring-out after the final bar.
    """
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    times = [arr.seconds(t) for t in arr.bar_ticks]
    n = len(times) - 1
    bounds: list[tuple[int, int]] = []
    i = 0
    while i < n:
        target = float(rng.uniform(min_seconds, max_seconds))
        j = i + 1
        while j < n and times[j + 1] - times[i] <= target:
            j += 1
        while j < n and times[j] - times[i] < min_seconds and times[j + 1] - times[i] <= max_seconds:
            j += 1  # long bars: go past the target rather than fall short of the minimum
        length = times[j] - times[i]
        if min_seconds <= length <= max_seconds:
            bounds.append((i, j))
        elif j == n and bounds and times[j] - times[bounds[-1][0]] <= max_seconds:
            bounds[-1] = (bounds[-1][0], j)  # a short remainder joins the previous clip
        i = j
    if max_clips is not None:
        bounds = bounds[:max_clips]
    clips = []
    for a, b in bounds:
        end = times[b]
        if b == n:
            end += max(0.0, min(tail_seconds, max_seconds - (times[b] - times[a])))
        clips.append(ClipWindow(arr.bar_ticks[a], arr.bar_ticks[b], times[a], end))
    return clips


def clip_tags(arr: Arrangement, clip: ClipWindow, work: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The structured facts of one clip (what conditioning and evaluation rely on)."""
    tracks = [arr.tracks[i] for i in sounding_tracks(arr, clip.start_tick, clip.end_tick)]
    instruments = list(dict.fromkeys(t.instrument.name for t in tracks))
    sections = [s for s in arr.sections if s.start < clip.end_tick and s.end > clip.start_tick]
    weights = Counter()
    for s in sections:
        weights[s.dynamic] += min(s.end, clip.end_tick) - max(s.start, clip.start_tick)
    levels = sorted(weights, key=DYNAMICS.index)
    meters = {m for m, t in zip(arr.bar_meters, arr.bar_ticks) if clip.start_tick <= t < clip.end_tick}
    style = STYLES[arr.style]
    ensemble_voices = {v for name, voices in style.ensembles if name == arr.ensemble for v in voices}
    tags: dict[str, Any] = {
        "instruments": instruments,
        "families": sorted({t.instrument.family for t in tracks}),
        "programs": sorted({t.instrument.program for t in tracks if t.role != "drums"}),
        "drums": any(t.role == "drums" for t in tracks),
        "tempo_bpm": arr.tempo_bpm,
        "beat": BEAT_NAMES.get(arr.beat_ql, f"{arr.beat_ql} quarters"),
        "quarter_bpm": round(arr.quarter_bpm, 3),
        "key": tonic_name(*clip_window_key(arr, clip)),
        "mode": clip_window_key(arr, clip)[1],
        "work_key": f"{tonic_name(arr.tonic_pc, arr.mode)} {arr.mode}",
        "meter": meters.pop() if len(meters) == 1 else "mixed",
        "style": arr.style,
        "ensemble": arr.ensemble,
        "ensemble_complete": bool(ensemble_voices) and set(instruments) == ensemble_voices,
        "dynamics": weights.most_common(1)[0][0] if weights else "mf",
        "dynamics_range": [levels[0], levels[-1]] if levels else ["mf", "mf"],
        "texture": arr.texture,
        "space": arr.space,
        "transpose": arr.transpose,
        "work": work.get("title", ""),
        "work_id": arr.work_id,
        "composer": work.get("composer", ""),
        "era": work.get("era", ""),
        "collection": work.get("collection", ""),
        "collection_label": work.get("collection_label", ""),
        "render": arr.render_index,
        "adjectives": list(style.adjectives),
    }
    tags["segments"] = segments(arr, clip, rng) if clip.duration > 20.0 else []
    return tags


def clip_window_key(arr: Arrangement, clip: ClipWindow) -> tuple[int, str]:
    """The key the clip's own pitched notes imply (the work's transposed key breaks near-ties)."""
    return window_key(arr, clip.start_tick, clip.end_tick)


def segments(arr: Arrangement, clip: ClipWindow, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Time-aware description: one entry per stretch with the same instruments and dynamics."""
    raw = []
    for s in arr.sections:
        a, b = max(s.start, clip.start_tick), min(s.end, clip.end_tick)
        if a >= b:
            continue
        names = list(dict.fromkeys(arr.tracks[i].instrument.name for i in sounding_tracks(arr, a, b)))
        entry = {"start": round(arr.seconds(a) - clip.start, 2), "end": round(arr.seconds(b) - clip.start, 2),
                 "instruments": names, "dynamics": s.dynamic}
        if raw and raw[-1]["instruments"] == names and raw[-1]["dynamics"] == s.dynamic:
            raw[-1]["end"] = entry["end"]
        else:
            raw.append(entry)
    raw = _merge_short(raw, MIN_SEGMENT_SECONDS)
    if len(raw) < 2:
        return []
    raw[-1]["end"] = round(clip.duration, 2)
    for seg, text in zip(raw, segment_texts(raw, rng)):
        seg["text"] = text
    return raw


def _merge_short(segs: list[dict[str, Any]], min_seconds: float) -> list[dict[str, Any]]:
    """Fold stretches shorter than ``min_seconds`` into the one before (the first into the next)."""
    out: list[dict[str, Any]] = []
    for seg in segs:
        if out and seg["end"] - seg["start"] < min_seconds:
            out[-1]["end"] = seg["end"]
        elif out and out[-1]["end"] - out[-1]["start"] < min_seconds:
            seg = {**seg, "start": out[-1]["start"]}
            out[-1] = seg
        else:
            out.append(seg)
    return out
