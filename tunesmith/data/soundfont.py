"""Find a General MIDI SoundFont on this machine, or say exactly how to get one."""

from __future__ import annotations

import os
from pathlib import Path

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
