"""Find the General MIDI SoundFonts on this machine, or say exactly how to get one.

A corpus rendered with one SoundFont teaches a model one timbre per instrument; the builder
renders each arrangement with one of several, chosen by the seed (:func:`pick_soundfont`), and
records which per clip.  :data:`SOUNDFONTS` lists the free GM banks Debian packages, with
their licences (from each package's copyright file) for the dataset card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Most complete first: FluidR3 (Debian/Ubuntu fluid-soundfont-gm, MIT), then smaller fallbacks.
CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)

INSTALL_HINT = (
    "no General MIDI SoundFont found; install one (Debian/Ubuntu: `sudo apt install fluidsynth "
    "fluid-soundfont-gm`; macOS: `brew install fluid-synth` and download FluidR3_GM.sf2 or "
    "GeneralUser GS) or pass --soundfont PATH (or set TUNESMITH_SOUNDFONT)"
)


class SoundFontError(FileNotFoundError):
    """No usable SoundFont; the message says which package to install."""


def find_soundfont(explicit: str | Path | None = None) -> Path:
    """The SoundFont to render with: ``explicit``, else $TUNESMITH_SOUNDFONT, else the first installed."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SoundFontError(f"SoundFont not found: {path}")
        return path
    env = os.environ.get("TUNESMITH_SOUNDFONT")
    if env:
        return find_soundfont(env)
    for candidate in CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise SoundFontError(INSTALL_HINT)


@dataclass(frozen=True)
class SoundFontInfo:
    """A known General MIDI SoundFont: where Debian installs it, its package and its licence."""

    name: str
    paths: tuple[str, ...]
    package: str
    licence: str
    full_gm: bool = True  # False: a partial bank (renders silence for the programs it lacks)


SOUNDFONTS: tuple[SoundFontInfo, ...] = (
    SoundFontInfo("FluidR3_GM", ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2"),
                  "fluid-soundfont-gm", "MIT (Frank Wen; Debian packaging GPL-2+)"),
    SoundFontInfo("MuseScore_General", ("/usr/share/sounds/sf3/MuseScore_General.sf3",
                                        "/usr/share/sounds/sf2/MuseScore_General.sf2"),
                  "musescore-general-soundfont", "MIT (parts public domain or CC0)"),
    SoundFontInfo("MuseScore_General_Lite", ("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",),
                  "musescore-general-soundfont-small", "MIT (parts public domain or CC0)"),
    SoundFontInfo("MuseScore_General_HQ", ("/usr/share/sounds/sf3/MuseScore_General_HQ.sf3",
                                           "/usr/share/sounds/sf2/MuseScore_General_HQ.sf2"),
                  "musescore-general-soundfont-lossless", "MIT (parts public domain or CC0)"),
    SoundFontInfo("TimGM6mb", ("/usr/share/sounds/sf2/TimGM6mb.sf2",), "timgm6mb-soundfont", "GPL-2 (Tim Brechbill)"),
    SoundFontInfo("FluidR3_GS", ("/usr/share/sounds/sf2/FluidR3_GS.sf2",), "fluid-soundfont-gs",
                  "MIT (Frank Wen; Debian packaging GPL-2+)", full_gm=False),
)


def soundfont_name(path: str | Path) -> str:
    """The name a clip records: the known SoundFont's for one of its paths, else the file's stem."""
    given = os.path.abspath(path)  # by the path as given: a link of the user's keeps its own name
    for info in SOUNDFONTS:
        if given in info.paths:
            return info.name
    return Path(path).stem


def soundfont_licence(name: str) -> str:
    """The licence of a known SoundFont by name; "unknown (user-supplied)" for any other."""
    for info in SOUNDFONTS:
        if info.name == name:
            return info.licence
    return "unknown (user-supplied)"


def find_soundfonts(explicit: list[str] | None = None) -> list[Path]:
    """The SoundFonts to render with, in a fixed order (by name, so the seed's choice does not
    depend on how they were listed): ``explicit`` paths, else $TUNESMITH_SOUNDFONTS (paths joined
    by the path separator), else every installed full GM bank of :data:`SOUNDFONTS` (one file
    each), else the single one :func:`find_soundfont` finds."""
    if not explicit:
        env = os.environ.get("TUNESMITH_SOUNDFONTS")
        explicit = [p for p in env.split(os.pathsep) if p] if env else None
    if explicit:
        paths = [find_soundfont(p) for p in explicit]
        names = [soundfont_name(p) for p in paths]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SoundFontError(f"SoundFonts listed twice (by name): {', '.join(duplicated)}")
        return sorted(paths, key=soundfont_name)
    found: dict[str, Path] = {}
    for info in SOUNDFONTS:
        for candidate in info.paths:
            if info.full_gm and Path(candidate).is_file():
                real = Path(os.path.realpath(candidate))  # Debian's links name whichever variant is installed
                found.setdefault(soundfont_name(real), real)
    if not found:
        return [find_soundfont()]
    return [found[name] for name in sorted(found)]


def pick_soundfont(soundfonts: list[str], seed: int, work_hash: int, render_index: int) -> str:
    """The SoundFont of one render: drawn from ``soundfonts`` by (seed, work, render), from its own
    random stream so that adding SoundFonts changes no other choice of the build."""
    if not soundfonts:
        raise SoundFontError(INSTALL_HINT)
    if len(soundfonts) == 1:
        return soundfonts[0]
    rng = np.random.default_rng([seed, work_hash % 2**63, render_index, 0x5F])
    return soundfonts[int(rng.integers(len(soundfonts)))]
