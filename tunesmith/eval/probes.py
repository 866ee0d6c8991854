"""Probe signals with a known answer: click tracks, scales, cadences, short tunes.

The signal metrics (tempo, key, chroma) are calibrated on these: a click track at
120 BPM must read 120 BPM, a cadence in F minor must read F minor.  ``tunesmith eval
--self-check`` runs them, and so do the tests.  Notes are rendered by a small additive
synthesizer (harmonic partials, exponential decay), or by FluidSynth with a General MIDI
SoundFont when one is given, so the probes also sound like the corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunesmith.eval.metrics import Key
from tunesmith.music import MAJOR_TONIC_NAMES

MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11, 12)
HARMONIC_MINOR_STEPS = (0, 2, 3, 5, 7, 8, 11, 12)

# A note event: (start seconds, duration seconds, MIDI pitch, velocity 0-1)
Note = tuple[float, float, int, float]


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def synthesize(notes: list[Note], sample_rate: int, duration: float, *, partials: int = 6, seed: int = 0) -> np.ndarray:
    """Render notes with an additive synth: 1/k-weighted harmonics, 5 ms attack, exponential decay.

    Each note gets a random start phase per partial (from ``seed``); the mix is peak
    normalised to 0.8.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    rng = np.random.default_rng(seed)
    out = np.zeros(int(round(duration * sample_rate)), dtype=np.float64)
    for start, length, pitch, velocity in notes:
        begin = int(round(start * sample_rate))
        count = min(int(round(length * sample_rate)), len(out) - begin)
        if count <= 0:
            continue
        t = np.arange(count) / sample_rate
        freq = midi_to_hz(pitch)
        tone = np.zeros(count)
        for k in range(1, partials + 1):
            if k * freq < sample_rate / 2:
                tone += np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 2 * np.pi)) / k
        envelope = np.minimum(1.0, t / 0.005) * np.exp(-3.0 * t / max(length, 1e-3))
        release = np.minimum(1.0, (count - np.arange(count)) / max(1, int(0.01 * sample_rate)))
        out[begin : begin + count] += velocity * tone * envelope * release
    peak = np.abs(out).max()
    return (out / peak * 0.8 if peak > 0 else out).astype(np.float32)


def click_track(bpm: float, sample_rate: int, duration: float, *, accent_every: int = 4) -> np.ndarray:
    """A metronome: 20 ms noise-free clicks (a decaying 1.5 kHz / 2.5 kHz tone) on every beat."""
    if bpm <= 0:
        raise ValueError(f"bpm must be positive, got {bpm}")
    out = np.zeros(int(round(duration * sample_rate)), dtype=np.float64)
    length = int(0.02 * sample_rate)
    t = np.arange(length) / sample_rate
    period = 60.0 / bpm
    beat = 0
    while beat * period < duration:
        begin = int(round(beat * period * sample_rate))
        accent = beat % accent_every == 0
        freq = 2500.0 if accent else 1500.0
        click = np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.004) * (1.0 if accent else 0.6)
        end = min(len(out), begin + length)
        out[begin:end] += click[: end - begin]
        beat += 1
    return (out / np.abs(out).max() * 0.8).astype(np.float32)


def scale_notes(key: Key, bpm: float = 120.0, octave: int = 4) -> list[Note]:
    """A scale up and down in ``key`` (harmonic minor for minor keys), one note per beat,
    with a held tonic at the end."""
    steps = MAJOR_STEPS if key.mode == "major" else HARMONIC_MINOR_STEPS
    root = 12 * (octave + 1) + key.tonic
    beat = 60.0 / bpm
    sequence = list(steps) + list(reversed(steps[:-1]))
    notes = [(i * beat, beat * 0.95, root + s, 0.8) for i, s in enumerate(sequence)]
    notes.append((len(sequence) * beat, beat * 3, root, 0.8))
    return notes


def cadence_notes(key: Key, bpm: float = 90.0, octave: int = 3) -> list[Note]:
    """I-IV-V-I (i-iv-V-i in minor) block chords with the tonic in the bass, two beats each."""
    third = 4 if key.mode == "major" else 3
    sixth = 9 if key.mode == "major" else 8
    root = 12 * (octave + 1) + key.tonic
    chords = [
        (0, third + 12, 7 + 12, 12 + 12),  # I / i
        (5 - 12, 5 + 12, sixth + 12, 12 + 12),  # IV / iv (bass on 4th degree)
        (7 - 12, 7 + 12, 11 + 12, 14 + 12),  # V with the leading tone
        (0, third + 12, 7 + 12, 12 + 12),  # I / i
    ]
    length = 2 * 60.0 / bpm
    notes: list[Note] = []
    for i, chord in enumerate(chords):
        for step in chord:
            notes.append((i * length, length * 0.95, root + step, 0.7))
    return notes


def tune_notes(key: Key, bpm: float, bars: int = 8, *, seed: int = 0) -> list[Note]:
    """A corpus-like tune in 4/4 over the progression I-IV-V-I (i-iv-V-i in minor): a bass
    on every beat (the chord root, louder on the downbeat) and a random melody in eighth
    notes that lands on chord tones on the beats and moves through the scale between them."""
    rng = np.random.default_rng(seed)
    scale = (0, 2, 4, 5, 7, 9, 11) if key.mode == "major" else (0, 2, 3, 5, 7, 8, 11)
    third = 4 if key.mode == "major" else 3
    sixth = 9 if key.mode == "major" else 8
    chords = ((0, third, 7), (5, sixth, 12), (7, 11, 14), (0, third, 7))
    beat = 60.0 / bpm
    bass_root = 12 * 3 + key.tonic
    melody_root = 12 * 5 + key.tonic
    notes: list[Note] = []
    for bar in range(bars):
        chord = chords[bar % 4]
        for b in range(4):
            t = (bar * 4 + b) * beat
            notes.append((t, beat * 0.9, bass_root + chord[0] % 12, 0.9 if b == 0 else 0.6))
            on_beat = chord[int(rng.integers(0, 3))] % 12
            between = scale[int(rng.integers(0, 7))]
            notes.append((t, beat * 0.45, melody_root + on_beat, 0.5))
            notes.append((t + beat / 2, beat * 0.45, melody_root + between, 0.4))
    return notes


def render_with_soundfont(
    notes: list[Note], sample_rate: int, duration: float, *, program: int = 0, soundfont: str | Path | None = None
) -> np.ndarray:
    """Render notes with FluidSynth and a General MIDI SoundFont (``program`` = GM instrument).

    Needs pyfluidsynth and a SoundFont (Debian: fluid-soundfont-gm or timgm6mb-soundfont).
    """
    import fluidsynth

    path = Path(soundfont) if soundfont else find_soundfont()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "no General MIDI SoundFont found (install the Debian package timgm6mb-soundfont or fluid-soundfont-gm)"
        )
    synth = fluidsynth.Synth(samplerate=float(sample_rate))
    try:
        font = synth.sfload(str(path))
        synth.program_select(0, font, 0, program)
        events = []
        for start, length, pitch, velocity in notes:
            events.append((start, 1, pitch, int(np.clip(velocity * 127, 1, 127))))
            events.append((start + length, 0, pitch, 0))
        events.sort()
        total = int(round(duration * sample_rate))
        chunks, position = [], 0
        for when, on, pitch, vel in events:
            target = min(total, int(round(when * sample_rate)))
            if target > position:
                chunks.append(synth.get_samples(target - position))
                position = target
            if on:
                synth.noteon(0, pitch, vel)
            else:
                synth.noteoff(0, pitch)
        if total > position:
            chunks.append(synth.get_samples(total - position))
    finally:
        synth.delete()
    stereo = np.concatenate(chunks).astype(np.float32).reshape(-1, 2) / 32768.0
    mono = stereo.mean(axis=1)
    peak = np.abs(mono).max()
    return (mono / peak * 0.8 if peak > 0 else mono).astype(np.float32)


def find_soundfont() -> Path | None:
    """The first General MIDI SoundFont installed in the usual Debian/Ubuntu places."""
    for candidate in (
        "/usr/share/sounds/sf2/TimGM6mb.sf2",
        "/usr/share/sounds/sf2/FluidR3_GM.sf2",
        "/usr/share/sounds/sf2/default-GM.sf2",
        "/usr/share/soundfonts/default.sf2",
    ):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


# Two synthetic "instruments" that a small CLAP can learn to tell apart in a few steps:
# a dull low bass (2 partials, an octave down) and a bright high bell (8 partials, an
# octave up).  name -> (family, partials, octave shift)
PROBE_INSTRUMENTS = {"bass": ("bass", 2, -1), "glockenspiel": ("mallets", 8, 1)}


def write_probe_corpus(
    out_dir: str | Path,
    clips: dict[str, int] | None = None,
    *,
    seconds: float = 4.0,
    sample_rate: int = 24000,
    seed: int = 0,
) -> Path:
    """Write a tiny corpus of synthesized tunes with exact tags in the manifest format of
    ``tunesmith.data.manifest`` (for tests and self-checks); returns the manifest path.

    Each clip is a :func:`tune_notes` tune in a random key, mode and tempo (80-140 BPM) on
    one of :data:`PROBE_INSTRUMENTS`; instruments alternate so every split has both.
    """
    import json

    import soundfile as sf

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = clips or {"train": 16, "valid": 8, "test": 8}
    names = list(PROBE_INSTRUMENTS)
    lines, index = [], 0
    for split, count in counts.items():
        for j in range(count):
            name = names[j % len(names)]
            family, partials, shift = PROBE_INSTRUMENTS[name]
            key = Key(int(rng.integers(0, 12)), "major" if rng.random() < 0.5 else "minor")
            bpm = float(rng.integers(80, 141))
            bars = max(1, int(np.ceil(seconds * bpm / 240)))
            notes = [(s, d, p + 12 * shift, v) for s, d, p, v in tune_notes(key, bpm, bars, seed=index)]
            wav = synthesize(notes, sample_rate, seconds, partials=partials, seed=index)
            rel = f"audio/probe-{index:04d}.wav"
            sf.write(str(out / rel), wav, sample_rate, subtype="PCM_16")
            key_name = MAJOR_TONIC_NAMES[key.tonic]
            lines.append({
                "id": f"probe-{index:04d}", "audio": rel,
                "caption": f"a {key.mode} tune played by {name} in {key_name} {key.mode} at {bpm:g} BPM",
                "tags": {"instruments": [name], "families": [family], "tempo_bpm": bpm, "key": key_name,
                         "mode": key.mode, "meter": "4/4"},
                "duration": seconds, "sample_rate": sample_rate, "channels": 1, "split": split,
                "source": f"probe-work-{index}",
            })
            index += 1
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return manifest
