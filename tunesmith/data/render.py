"""Render an arrangement with FluidSynth (through pyfluidsynth) into float audio.

Events are applied sample-accurately between blocks of ``get``-ed audio; the synth writes
float samples (no 16-bit clipping inside), and a fresh synth per render keeps every render
independent of the previous one, so the same arrangement always gives the same samples.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunesmith.data.arrange import PPQ, SPACES, Arrangement
from tunesmith.data.midi import note_events, setup_events

TAIL_SECONDS = 2.0  # let the last notes and the reverb ring out


class RenderError(RuntimeError):
    """FluidSynth is missing or could not load the SoundFont."""


def _fluidsynth():
    try:
        import fluidsynth
    except (ImportError, OSError) as err:
        raise RenderError(
            "pyfluidsynth and the FluidSynth library are needed to render (pip install pyfluidsynth; "
            f"Debian/Ubuntu: apt install fluidsynth; macOS: brew install fluid-synth): {err}") from None
    return fluidsynth


@lru_cache(maxsize=4)
def _keeper(soundfont: str, sample_rate: int):
    """A synth kept alive per process so FluidSynth's sample cache keeps the SoundFont loaded."""
    fs = _fluidsynth().Synth(samplerate=float(sample_rate))
    if fs.sfload(soundfont) < 0:
        raise RenderError(f"FluidSynth could not load the SoundFont {soundfont}")
    return fs


def _new_synth(soundfont: Path, sample_rate: int, space: str):
    _keeper(str(soundfont), sample_rate)
    fl = _fluidsynth()
    fs = fl.Synth(gain=0.5, samplerate=float(sample_rate), **{"synth.polyphony": 256})
    sfid = fs.sfload(str(soundfont))
    if sfid < 0:
        raise RenderError(f"FluidSynth could not load the SoundFont {soundfont}")
    room, _ = SPACES[space]
    fs.set_reverb(roomsize=room, damping=0.4, width=0.8, level=0.7)
    return fs, sfid, fl


def _write_float(fl, fs, frames: int) -> np.ndarray:
    """``frames`` stereo float32 samples, (frames, 2)."""
    buf = np.zeros((frames, 2), dtype=np.float32)
    ptr = buf.ctypes.data_as(ctypes.c_void_p)
    fn = fl._fl.fluid_synth_write_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn(fs.synth, frames, ptr, 0, 2, ctypes.c_void_p(buf.ctypes.data + 4), 0, 2)
    return buf


def render(arr: Arrangement, soundfont: str | Path, sample_rate: int, channels: int = 1,
           tail_seconds: float = TAIL_SECONDS) -> np.ndarray:
    """The whole arrangement plus its tail as float32 (channels, samples)."""
    fs, sfid, fl = _new_synth(Path(soundfont), sample_rate, arr.space)
    try:
        events = setup_events(arr) + note_events(arr)
        events.sort()
        total = int(round(arr.seconds(arr.bar_ticks[-1]) * sample_rate + tail_seconds * sample_rate))
        blocks, done = [], 0
        per_tick = arr.us_per_quarter / 1e6 / PPQ * sample_rate
        for tick, _, kind, ch, a, b in events:
            at = min(total, int(round(tick * per_tick)))
            if at > done:
                blocks.append(_write_float(fl, fs, at - done))
                done = at
            if kind == "program":
                if ch == 9:
                    fs.program_select(ch, sfid, 128, a)
                else:
                    fs.program_select(ch, sfid, 0, a)
            elif kind == "cc":
                fs.cc(ch, a, b)
            elif kind == "on":
                fs.noteon(ch, a, b)
            else:
                fs.noteoff(ch, a)
        if total > done:
            blocks.append(_write_float(fl, fs, total - done))
    finally:
        fs.delete()
    stereo = np.concatenate(blocks, axis=0).T if blocks else np.zeros((2, 0), np.float32)
    return stereo.mean(axis=0, keepdims=True) if channels == 1 else np.ascontiguousarray(stereo)
