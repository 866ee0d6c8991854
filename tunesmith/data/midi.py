"""Arrangements as MIDI: the event list the synthesizer plays and Standard MIDI Files per clip.

The clip's MIDI file holds exactly the notes that sound in the clip (cut to its window),
its program changes, tempo, meter and key, so captions can be checked against it.
"""

from __future__ import annotations

from pathlib import Path

import mido

from tunesmith.data.arrange import PPQ, Arrangement
from tunesmith.data.keys import estimate_key, pitch_class_weights

# mido key names by (tonic pitch class, mode)
_MAJOR_KEYS = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
_MINOR_KEYS = ["Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"]

Event = tuple[int, int, str, int, int, int]  # tick, order, kind, channel, a, b


def setup_events(arr: Arrangement, channels: set[int] | None = None) -> list[Event]:
    """Program, volume, pan and effect sends for every (or the given) channel, at tick 0."""
    out: list[Event] = []
    for t in arr.tracks:
        if channels is not None and t.channel not in channels:
            continue
        out.append((0, 0, "program", t.channel, t.instrument.program, 0))
        for control, value in ((7, t.volume), (10, t.pan), (91, t.reverb), (93, t.chorus)):
            out.append((0, 0, "cc", t.channel, control, value))
    return out


def note_events(arr: Arrangement, start: int = 0, end: int | None = None) -> list[Event]:
    """Note on/off events of notes sounding in [start, end), cut to the window, times relative to start."""
    end = arr.bar_ticks[-1] if end is None else end
    out: list[Event] = []
    for t in arr.tracks:
        for a, b, pitch, vel in t.notes:
            if a >= end or b <= start:
                continue
            a2, b2 = max(a, start) - start, min(b, end) - start
            out.append((a2, 2, "on", t.channel, pitch, vel))
            out.append((max(b2, a2 + 1), 1, "off", t.channel, pitch, 0))
    return sorted(out)


def sounding_tracks(arr: Arrangement, start: int, end: int) -> list[int]:
    """Indices of tracks with at least one note sounding in [start, end)."""
    return [i for i, t in enumerate(arr.tracks) if any(a < end and b > start for a, b, _, _ in t.notes)]


def window_key(arr: Arrangement, start: int, end: int) -> tuple[int, str]:
    """(tonic pitch class, mode) implied by the pitched notes sounding in [start, end)."""
    notes = [(max(a, start), min(b, end), p) for t in arr.tracks if t.role != "drums"
             for a, b, p, _ in t.notes if a < end and b > start]
    return estimate_key(pitch_class_weights(notes), prior=(arr.tonic_pc, arr.mode))


def key_name(tonic_pc: int, mode: str) -> str:
    """The MIDI key signature name, e.g. 'Bb' or 'F#m'."""
    return (_MAJOR_KEYS if mode == "major" else _MINOR_KEYS)[tonic_pc % 12]


def clip_midi(arr: Arrangement, start: int, end: int) -> mido.MidiFile:
    """A type-1 MIDI file of the arrangement's window [start, end) (ticks)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=PPQ)
    meter = arr.bar_meters[max(i for i, t in enumerate(arr.bar_ticks[:-1]) if t <= start)]
    num, den = (int(x) for x in meter.split("/"))
    conductor = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=arr.us_per_quarter, time=0),
        mido.MetaMessage("time_signature", numerator=num, denominator=den, time=0),
        mido.MetaMessage("key_signature", key=key_name(*window_key(arr, start, end)), time=0),
        mido.MetaMessage("end_of_track", time=end - start),
    ])
    mid.tracks.append(conductor)
    events = note_events(arr, start, end)
    for i in sounding_tracks(arr, start, end):
        t = arr.tracks[i]
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=f"{t.role}: {t.instrument.name}", time=0)])
        now = 0
        for tick, _, kind, ch, a, b in setup_events(arr, {t.channel}) + [e for e in events if e[3] == t.channel]:
            if kind == "program":
                msg = mido.Message("program_change", channel=ch, program=a)
            elif kind == "cc":
                msg = mido.Message("control_change", channel=ch, control=a, value=b)
            elif kind == "on":
                msg = mido.Message("note_on", channel=ch, note=a, velocity=b)
            else:
                msg = mido.Message("note_off", channel=ch, note=a, velocity=0)
            track.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    return mid


def save_midi(mid: mido.MidiFile, path: str | Path) -> Path:
    path = Path(path)
    mid.save(str(path))
    return path
